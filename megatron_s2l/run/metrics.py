"""Per-step metrics: `metrics.jsonl` (one JSON object per step), TensorBoard events, and a one-line
progress display per step instead of a wall of logs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

METRICS_FILE = "metrics.jsonl"


class RunLogger:
    """Appends metrics to `<run_dir>/metrics.jsonl` (flushed every step, so a killed run keeps all
    completed steps) and mirrors scalars to TensorBoard."""

    def __init__(
        self, run_dir: str | Path, *, tensorboard: bool = True, total_steps: int, out: TextIO = sys.stdout
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.out = out
        self._file = (self.run_dir / METRICS_FILE).open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        print(progress_line(step, self.total_steps, metrics), file=self.out, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(metrics: dict[str, Any], key: str, spec: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else format(value, spec)


def progress_line(step: int, total: int, m: dict[str, Any]) -> str:
    """`step 3/12 | G_w/G_s 6/2 | reward e +0.50 l -0.25 | acc e 75% l 38% | loss ... | time ...`."""
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
    )


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step records of a run, last record per step winning (a resumed run re-logs steps)."""
    by_step: dict[int, dict[str, Any]] = {}
    with (Path(run_dir) / METRICS_FILE).open() as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
