"""From-runs mode of `s2l bench rollout`: the rollout FLOPs finished training runs actually spent.

Per run: the models from `RUN_DIR/config.yaml`, the per-step token counts from `metrics.jsonl`,
and generation FLOPs per source (rollout_flops.py) summed over the steps. Token counts, per step:
- `rollout/generated_tokens_<source>` (every response token generated, dynamic-sampling rounds
  that were discarded included) when logged, at the mean length generated_tokens / samples;
- else `rollout/tokens_<source>` (the responses kept in the batch, a lower bound) at the mean
  length `response_len/<source>`.
Explorer samples drawn from an explorer cache count too: the cache generated them, earlier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_s2l.archs import ModelArch, bundled_names, load_arch
from megatron_s2l.bench.rollout_flops import generation_flops
from megatron_s2l.config import load_config
from megatron_s2l.run.metrics import read_metrics
from megatron_s2l.run.rundir import RunDir

SOURCES = ("explorer", "learner")


@dataclass(frozen=True, slots=True)
class SourceTokens:
    """One source's response tokens in one step."""

    tokens: float
    mean_len: float
    counted: str | None
    """"generated" (every token), "kept" (the batch's), or None when the step logged no samples."""


@dataclass(frozen=True, slots=True)
class RunRollout:
    run_dir: Path
    learner: str
    """The learner architecture used: its checkpoint directory or a bundled name."""
    explorer: str | None
    steps: int
    """Steps with a rollout (step 0, evaluation only, is not one)."""
    counted: str
    """Which token counts the steps logged: "generated", "kept" or "generated+kept"."""
    tokens: dict[str, float]
    flops: dict[str, float]
    rollout_seconds: float

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir),
            "learner": self.learner,
            "explorer": self.explorer,
            "steps": self.steps,
            "counted": self.counted,
            "tokens_explorer": self.tokens["explorer"],
            "tokens_learner": self.tokens["learner"],
            "flops_explorer": self.flops["explorer"],
            "flops_learner": self.flops["learner"],
            "rollout_flops": self.total_flops,
            "rollout_seconds": self.rollout_seconds,
        }


def step_tokens(row: dict[str, Any], source: str) -> SourceTokens:
    """A metrics row's response tokens of `source` and their mean length."""
    generated = row.get(f"rollout/generated_tokens_{source}")
    if generated is not None:
        samples = row.get(f"rollout/{source}_samples", 0.0)
        return SourceTokens(generated, generated / samples if samples else 0.0, "generated")
    kept = row.get(f"rollout/tokens_{source}")
    if kept is not None:  # logged only when the batch holds samples of the source
        return SourceTokens(kept, row[f"response_len/{source}"], "kept")
    return SourceTokens(0.0, 0.0, None)


def _arch(run: Path, role: str, path: str, override: str | None) -> ModelArch:
    if (Path(path) / "config.json").is_file():
        return load_arch(path)
    if override:
        return load_arch(override)
    raise ValueError(
        f"{run}: model.{role} {path!r} has no config.json on this machine; pass --{role} with a bundled "
        f"architecture ({', '.join(bundled_names())})"
    )


def _source_flops(
    arch: ModelArch, per_step: list[dict[str, SourceTokens]], source: str, prompt_len: int
) -> float:
    return sum(generation_flops(arch, st[source].tokens, st[source].mean_len, prompt_len) for st in per_step)


def measure_run(
    run_dir: Path, *, prompt_len: int = 0, learner: str | None = None, explorer: str | None = None
) -> RunRollout:
    """Realised rollout FLOPs of one run. `learner`/`explorer` name the architecture to use where the
    config's checkpoint is not on this machine; `prompt_len` is the mean prompt length (0 = unknown)."""
    run = RunDir(Path(run_dir))
    cfg = load_config(run.config_file)
    if not run.metrics_file.is_file():
        raise ValueError(f"{run.root}: no metrics.jsonl (is it a run directory?)")
    rows = [r for r in read_metrics(run.root) if r["step"] >= 1]
    if not rows:
        raise ValueError(f"{run.root}: metrics.jsonl has no training step")
    per_step = [{s: step_tokens(r, s) for s in SOURCES} for r in rows]
    kinds = sorted({step[s].counted for step in per_step for s in SOURCES} - {None})
    if not kinds:
        raise ValueError(f"{run.root}: metrics.jsonl logs no rollout token counts")
    explorer_used = any(step["explorer"].tokens for step in per_step)
    learner_arch = _arch(run.root, "learner", cfg.model.learner, learner)
    explorer_arch = _arch(run.root, "explorer", cfg.model.explorer, explorer) if explorer_used else None
    tokens = {s: sum(step[s].tokens for step in per_step) for s in SOURCES}
    flops = {
        "learner": _source_flops(learner_arch, per_step, "learner", prompt_len),
        "explorer": _source_flops(explorer_arch, per_step, "explorer", prompt_len) if explorer_arch else 0.0,
    }
    return RunRollout(
        run_dir=run.root,
        learner=learner_arch.name,
        explorer=explorer_arch.name if explorer_arch else None,
        steps=len(rows),
        counted="+".join(kinds),
        tokens=tokens,
        flops=flops,
        rollout_seconds=sum(r.get("time/rollout", 0.0) for r in rows),
    )
