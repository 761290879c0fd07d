"""Methods compared over seeds (`s2l compare RUN_DIR [RUN_DIR ...] [--x step|tokens|flops|wall]`).

Runs are grouped by method: their config `name` without a trailing `-seed<k>` (how `s2l demo
--seeds N` names them). Per method, over its seeds: the held-out avg@k at the last evaluation and the
area under the held-out curve (trapezoid over the evaluated steps divided by their span: the mean
held-out accuracy over training), each as mean +- the half-width of a 95% t confidence interval; and
one plot of every method's mean held-out curve with that interval as a band, against step,
cumulative generated tokens, cumulative rollout FLOPs or cumulative wall-clock.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Any

from megatron_s2l.archs import ModelArch, load_arch
from megatron_s2l.bench.rollout_flops import generation_flops
from megatron_s2l.bench.rollout_runs import SOURCES, step_tokens
from megatron_s2l.config import S2LConfig, load_config
from megatron_s2l.run.metrics import read_metrics
from megatron_s2l.run.plot import _finish_axes, _save
from megatron_s2l.run.rundir import RunDir

X_AXES = {
    "step": "step",
    "tokens": "generated tokens, explorer + learner (cumulative)",
    "flops": "rollout FLOPs (cumulative; prompt tokens not counted)",
    "wall": "wall-clock s (cumulative time/step)",
}
"""--x choices and their axis labels. Step 0 (the evaluation before training) is at 0 on every axis."""

# Student's t 0.975 quantiles for 1..30 degrees of freedom (scipy.stats.t.ppf, 6 decimals): scipy
# comes only with the rollout extra, and comparing runs needs no engine.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip
_Z975 = 1.959964
_SEED_SUFFIX = re.compile(r"-seed\d+$")


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom: from the table up to 30, beyond
    it from the Cornish-Fisher expansion around the normal quantile (within 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the half-width of its 95% confidence interval (t with n - 1 degrees of freedom);
    None for a single value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def area_under_curve(steps: Sequence[int], values: Sequence[float]) -> float:
    """Trapezoid area under `values` over `steps`, divided by the step span: a mean accuracy."""
    points = pairwise(zip(steps, values, strict=True))
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in points)
    return area / (steps[-1] - steps[0])


def method_of(name: str) -> str:
    """A run's method: its name without the `-seed<k>` that `s2l demo --seeds` appends."""
    return _SEED_SUFFIX.sub("", name)


@dataclass(frozen=True)
class SeedRun:
    """One finished (or stopped) run: its resolved config and its per-step metrics."""

    root: Path
    cfg: S2LConfig
    records: list[dict[str, Any]]

    @property
    def method(self) -> str:
        return method_of(self.cfg.name)

    @property
    def eval_steps(self) -> list[int]:
        return [r["step"] for r in self.records if "eval/avg_at_k" in r]

    @property
    def accuracy(self) -> list[float]:
        return [r["eval/avg_at_k"] for r in self.records if "eval/avg_at_k" in r]

    @cached_property
    def _archs(self) -> dict[str, ModelArch]:
        """The architecture of each pool that generated tokens (from its checkpoint's config.json)."""
        used = {s for r in self.records for s in SOURCES if step_tokens(r, s).tokens}
        return {s: load_arch(getattr(self.cfg.model, s)) for s in sorted(used)}

    def step_cost(self, record: dict[str, Any], axis: str) -> float:
        """What one step adds to a cumulative x axis."""
        if axis == "tokens":
            return sum(step_tokens(record, s).tokens for s in SOURCES)
        if axis == "flops":
            counts = {s: step_tokens(record, s) for s in SOURCES}
            return sum(
                generation_flops(self._archs[s], c.tokens, c.mean_len, 0)
                for s, c in counts.items()
                if c.tokens
            )
        if axis == "wall":
            return record.get("time/step", 0.0)
        raise ValueError(f"unknown x axis {axis!r}; expected one of {', '.join(X_AXES)}")

    def x_at_evals(self, axis: str) -> list[float]:
        """The x value of each evaluation: its step, or the running total of the steps' costs up to it."""
        if axis == "step":
            return [float(s) for s in self.eval_steps]
        total, at_eval = 0.0, []
        for record in self.records:
            total += self.step_cost(record, axis)
            if "eval/avg_at_k" in record:
                at_eval.append(total)
        return at_eval


def load_run(run_dir: Path) -> SeedRun:
    run = RunDir(Path(run_dir))
    for path in (run.config_file, run.metrics_file):
        if not path.is_file():
            raise ValueError(f"{run_dir}: no {path.name} (is it a run directory?)")
    return SeedRun(run.root, load_config(run.config_file), read_metrics(run.root))


def group_by_method(runs: Sequence[SeedRun]) -> dict[str, list[SeedRun]]:
    """Runs by method, in the order given. The runs of a method must evaluate at the same steps
    (their curves are averaged point by point), at least two of them (the area needs a span)."""
    groups: dict[str, list[SeedRun]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    for method, members in groups.items():
        if len({tuple(r.eval_steps) for r in members}) > 1:
            listing = "; ".join(f"{r.root} at {r.eval_steps}" for r in members)
            raise ValueError(f"{method}: its runs evaluate at different steps: {listing}")
        if len(members[0].eval_steps) < 2:
            raise ValueError(
                f"{method}: needs at least two evaluations per run, {members[0].root} has "
                f"{members[0].eval_steps} (eval.every_steps)"
            )
    return groups


def _pm(stat: tuple[float, float | None]) -> str:
    mean, half_width = stat
    return f"{mean:.3f} +- {'n/a' if half_width is None else f'{half_width:.3f}'}"


def summary_table(groups: dict[str, list[SeedRun]]) -> list[str]:
    """A Markdown table, one row per method: seeds, the final held-out avg@k and the area under the
    held-out curve, each mean +- 95% CI half-width over seeds ("n/a" with one seed)."""
    lines = [
        "| method | seeds | eval steps | held-out avg@k, last eval "
        "| held-out avg@k, mean over training (AUC) |",
        "|---|---|---|---|---|",
    ]
    for method, runs in groups.items():
        steps = runs[0].eval_steps
        final = mean_ci([r.accuracy[-1] for r in runs])
        auc = mean_ci([area_under_curve(steps, r.accuracy) for r in runs])
        lines.append(f"| {method} | {len(runs)} | {steps[0]}-{steps[-1]} | {_pm(final)} | {_pm(auc)} |")
    return lines


def plot_comparison(groups: dict[str, list[SeedRun]], axis: str, out_dir: Path) -> Path:
    """`compare_<axis>.png`: per method the held-out avg@k averaged over seeds at each evaluation,
    at the seeds' mean x, with the 95% CI over seeds as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in groups.items():
        xs = [statistics.fmean(x) for x in zip(*(r.x_at_evals(axis) for r in runs), strict=True)]
        stats = [mean_ci(values) for values in zip(*(r.accuracy for r in runs), strict=True)]
        means = [m for m, _ in stats]
        (line,) = ax.plot(xs, means, marker="o", ms=3, label=f"{method} ({len(runs)} seeds)")
        if len(runs) > 1:
            low = [m - h for m, h in stats]
            high = [m + h for m, h in stats]
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_title("held-out avg@k: mean over seeds (band: 95% CI)")
    _finish_axes(ax)
    ax.set_xlabel(X_AXES[axis])
    out_dir.mkdir(parents=True, exist_ok=True)
    return _save(plt, fig, out_dir / f"compare_{axis}.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (config.yaml, metrics.jsonl)")
    parser.add_argument("--x", choices=list(X_AXES), default="step", help="the plot's x axis (default: step)")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="output folder (default: ./plots)")


def run(args: argparse.Namespace) -> int:
    groups = group_by_method([load_run(d) for d in args.run_dirs])
    for line in summary_table(groups):
        print(line)
    print(plot_comparison(groups, args.x, args.out))
    return 0
