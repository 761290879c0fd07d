"""Per-step metrics: `metrics.jsonl` (one JSON object per step), TensorBoard events, optionally
Weights & Biases (`logging.wandb`: wandb_log.py), and a one-line progress display per step instead
of a wall of logs."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from megatron_s2l.run.rundir import RunDir
from megatron_s2l.run.wandb_log import WandbConfig, WandbMirror


class RunLogger:
    """Appends metrics to the run's `metrics.jsonl` (flushed every step, so a killed run keeps all
    completed steps) and mirrors scalars to TensorBoard and, with `wandb` on, to Weights & Biases
    (which also gets `config`, the resolved run config, and `run_name`)."""

    def __init__(
        self,
        run: RunDir,
        *,
        tensorboard: bool = True,
        total_steps: int,
        out: TextIO = sys.stdout,
        wandb: WandbConfig | None = None,
        config: dict[str, Any] | None = None,
        run_name: str = "",
    ):
        run.root.mkdir(parents=True, exist_ok=True)
        self.path = run.metrics_file
        self.total_steps = total_steps
        self.out = out
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run.tensorboard))
        self._wandb = None
        if wandb is not None and wandb.mode != "off":
            self._wandb = WandbMirror(wandb, run_root=run.root, run_name=run_name, config=config or {})

    def keep_steps_through(self, step: int) -> None:
        """Drop the records of every step after `step` (a resumed run re-runs them; -1 drops all),
        and a last line cut short by a kill, atomically: each step is then logged exactly once."""
        self._file.close()
        kept = [line for line in self.path.read_text().splitlines(keepends=True) if _step_of(line) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.path)
        self._file = self.path.open("a")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(step, metrics)
        print(progress_line(step, self.total_steps, metrics), file=self.out, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.close()


def _fmt(metrics: dict[str, Any], key: str, spec: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else format(value, spec)


def progress_line(step: int, total: int, m: dict[str, Any]) -> str:
    """`step 3/12 | G_w/G_s 6/2 | reward e +0.50 l -0.25 | acc e 75% l 38% | loss ... | time ...`,
    then `| eval avg@k ... pass@k ...` on evaluated steps; step 0 (before training) is only the eval."""
    evaluation = (
        f" | eval avg@k {_fmt(m, 'eval/avg_at_k', '.3f')} pass@k {_fmt(m, 'eval/pass_at_k', '.3f')}"
        if "eval/avg_at_k" in m
        else ""
    )
    if step == 0:
        return f"step 0/{total} (before training){evaluation}"
    phases = " ".join(
        f"{name} {m[f'time/{name}']:.1f}s"
        for name in ("rollout", "reward", "train", "sync")
        if f"time/{name}" in m
    )
    return (
        f"step {step}/{total}"
        f" | G_w/G_s {_fmt(m, 'schedule/g_explorer', 'd')}/{_fmt(m, 'schedule/g_learner', 'd')}"
        f" | reward e {_fmt(m, 'reward/explorer', '+.2f')} l {_fmt(m, 'reward/learner', '+.2f')}"
        f" | acc e {_fmt(m, 'acc/explorer', '.0%')} l {_fmt(m, 'acc/learner', '.0%')}"
        f" | loss {_fmt(m, 'loss/total', '+.4f')} | {_fmt(m, 'rollout/tokens_per_s', '.0f')} tok/s | {phases}"
        f"{evaluation}"
    )


def _step_of(line: str) -> float:
    """The step of one metrics line; infinity for a line that is not a whole record."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a run, last record per step winning (a resumed run re-logs steps)."""
    by_step: dict[int, dict[str, Any]] = {}
    with RunDir(Path(run_dir)).metrics_file.open() as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
