"""YAML <-> typed dataclass configs: strict loading, `key.sub=value` overrides, base-file overlays.

Every config section is a `@dataclass(kw_only=True, slots=True)` that owns its defaults, attribute
docstrings and per-field checks (`__post_init__` raising ValueError). This module only maps YAML onto
those dataclasses: an unknown key, a wrong type or a rejected value raises `ConfigError` naming the
file and the dotted key.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")
BASE_KEY = "base"  # a YAML file may start from another: `base: demo-cpu.yaml` (path relative to it)

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config value is unknown, mistyped or impossible; the message names the source and key."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{source}: {key}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source=source, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has unsupported type {tp!r}")


def build(cls: type[T], data: Any, *, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, strictly (unknown keys and wrong types are errors)."""
    where = prefix or "<root>"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{source}: {key}: unknown key (known keys here: {', '.join(sorted(fields))})")
    kwargs = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name, source)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{source}: {where}: {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (what `config.yaml` in a run directory holds)."""
    return dataclasses.asdict(cfg)


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving its `base:` chain (overlay wins)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: {BASE_KEY}: cycle through {[str(p) for p in _seen]}")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY}: expected a file name, got {base!r}")
    return _deep_merge(read_yaml(path.parent / base, (*_seen, path)), data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (`x=3` is an int, `x=null` None)."""
    data = _deep_merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"<command line>: {item!r}: overrides look like key.sub=value")
        node = data
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"<command line>: {'.'.join(parents[: i + 1])}: is not a section")
            node[part] = child = dict(child)
            node = child
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"<command line>: {key}: value {raw!r} is not valid YAML: {e}") from e
    return data


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass, read from source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def reference_markdown(cls: type, prefix: str = "", defaults: object | None = None) -> list[str]:
    """Rows `| key | type | default | meaning |` for every field of `cls`, nested sections expanded.
    `defaults`: the instance whose values are the defaults (a section's `default_factory` may differ
    from its class's own defaults, e.g. the explorer's sampling); None = `cls()`."""
    rows = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            rows += reference_markdown(hints[f.name], f"{key}.", value)
            continue
        type_name = _type_name(hints[f.name]).replace("|", "\\|")
        rows.append(f"| `{key}` | `{type_name}` | `{value!r}` | {docs.get(f.name, '')} |")
    return rows
