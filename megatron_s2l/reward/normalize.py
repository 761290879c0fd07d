"""Minerva-style normalization of final math answers, so that equal answers compare equal as strings.

`normalize_answer("$1,000$ dollars.") == normalize_answer("1000") == "1000"`. The output stays valid
LaTeX (a space survives only where it separates a command from a following letter, as in `\\pi r`),
so it can also be handed to math-verify. All patterns are linear-time: model output is untrusted.
"""

from __future__ import annotations

import re

_BOX_OPENERS = ("\\boxed{", "\\fbox{")

# Dropped wherever they appear: sizing, spacing and presentation commands, degree and percent signs.
_DROPPED_TOKENS = (
    "\\displaystyle",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "^{\\circ}",
    "^\\circ",
    "°",
    "\\%",
    "%",
)
# `\left(` -> `(`, but `\leftarrow` must survive.
_SIZING_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
# A text wrapper's opening (`\text{`, `\mathrm {`), or a brace: the tokens of `_unwrap_text`.
_TEXT_WRAPPER_TOKEN_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox)\s*\{|[{}]")
# Units and filler words that carry no value; an optional ^2 / ^3 goes with them (cm^2).
_UNIT_RE = re.compile(
    r"\b(?:dollars?|cents?|degrees?|units?|square|sq|cubic|meters?|cm|mm|km|inch(?:es)?|feet|foot|ft"
    r"|miles?|mph|hours?|minutes?|seconds?|days?|weeks?|years?|pounds?|grams?|kg|ways|points?"
    r"|students|people)\b(?:\^\{?[23]\}?)?"
)
# Whitespace, plus the command it follows: the space is kept only between a command and a letter.
_SPACE_RE = re.compile(r"(\\[a-zA-Z]+)?\s+(?=([a-zA-Z])?)")
_FRAC_SHORTHAND_RES = (
    (re.compile(r"\\frac\s?([0-9a-zA-Z])\s?([0-9a-zA-Z])"), r"\\frac{\1}{\2}"),  # \frac12
    (re.compile(r"\\frac\s?([0-9a-zA-Z])\{"), r"\\frac{\1}{"),  # \frac1{2}
    (re.compile(r"\\frac\{([^{}]*)\}\s?([0-9a-zA-Z])"), r"\\frac{\1}{\2}"),  # \frac{1}2
    (re.compile(r"\\sqrt\s?([0-9a-zA-Z])"), r"\\sqrt{\1}"),  # \sqrt2
)
_PLAIN_NUMBER_RE = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d*)(?:\.(\d*))?")


def last_boxed_content(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if there is none."""
    start = max(text.rfind(opener) for opener in _BOX_OPENERS)
    if start < 0:
        return None
    content_start = text.index("{", start) + 1
    depth = 1
    for pos in range(content_start, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[content_start:pos]
    return None  # unbalanced: the box was cut off


def _canonical_number(text: str) -> str | None:
    """'1,000' -> '1000', '.5' -> '0.5', '2.50' -> '2.5', '+007' -> '7'; None if not a plain number."""
    match = _PLAIN_NUMBER_RE.fullmatch(text)
    if match is None:
        return None
    sign, whole, frac = match[1], match[2].replace(",", ""), (match[3] or "").rstrip("0")
    if not whole and not frac:
        return None
    whole = whole.lstrip("0") or "0"
    number = f"{whole}.{frac}" if frac else whole
    return number if sign != "-" or number == "0" else f"-{number}"


def _last_dollar_span(text: str) -> str:
    """The content of the last `$...$` pair, if the text has one; `The answer is $5$.` -> `5`."""
    last = text.rfind("$")
    opening = text.rfind("$", 0, last) if last > 0 else -1
    return text[opening + 1 : last] if opening >= 0 else text


def _unwrap_text(text: str) -> str:
    """`\\text{5 \\mathrm{cm}}` -> `5 cm`: drop text wrappers whose content, once its own wrappers
    are dropped, holds no brace (`\\text{\\frac{1}{2}}` stays as it is), nested ones included.

    One pass with a stack of open groups, so linear in the length: unwrapping the innermost wrapper
    and searching again, once per nesting level, took 15 s on 10k nested `\\text{`.
    """
    pieces: list[str] = []
    # Per open group: is it a wrapper, where its opening sits in `pieces`, does its content hold a brace.
    open_groups: list[tuple[bool, int, bool]] = []
    end = 0
    for token in _TEXT_WRAPPER_TOKEN_RE.finditer(text):
        pieces.append(text[end : token.start()])
        end = token.end()
        if token[0] != "}":
            open_groups.append((token[0] != "{", len(pieces), False))
            pieces.append(token[0])
            continue
        if not open_groups:  # a stray closing brace
            pieces.append("}")
            continue
        is_wrapper, opening, holds_brace = open_groups.pop()
        if is_wrapper and not holds_brace:
            pieces[opening] = ""  # drop `\\text{` and this `}`, keep the content
            continue
        pieces.append("}")
        if open_groups:  # the enclosing group now holds a brace
            open_groups[-1] = (*open_groups[-1][:2], True)
    pieces.append(text[end:])
    return "".join(pieces)


def normalize_answer(answer: str) -> str:
    """Normalize a final answer (or a ground truth) for exact string comparison."""
    text = answer.strip()
    boxed = last_boxed_content(text)
    if boxed is not None:
        text = boxed
    text = _last_dollar_span(text.replace("\\$", "")).replace("$", "")
    # `x = 5` and `5` are the same answer; like Minerva, keep what follows the last `=`.
    text = text.split("=")[-1]
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SIZING_RE.sub("", text)
    for token in _DROPPED_TOKENS:
        text = text.replace(token, "")
    text = text.replace("\\ ", " ").replace("−", "-")  # LaTeX forced space; Unicode minus
    text = _unwrap_text(text)
    text = _UNIT_RE.sub("", text)
    text = _SPACE_RE.sub(lambda m: (m[1] or "") + (" " if m[1] and m[2] else ""), text.strip())
    text = text.rstrip(".,")
    for pattern, replacement in _FRAC_SHORTHAND_RES:
        text = pattern.sub(replacement, text)
    return _canonical_number(text) or text
