"""PNG plots of one or more runs (`s2l plot RUN_DIR [RUN_DIR ...]`).

One run: reward and accuracy by source, and the explorer/learner share of each group.
Several runs: the same curves for every run on shared axes, for S2L-PO vs GRPO comparisons.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_s2l.run.metrics import read_metrics

PLOT_KEYS = (("reward/mean", "reward (all samples)"), ("acc/mean", "accuracy (all samples)"))


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_runs(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write the plots into `out_dir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {Path(d).name: read_metrics(d) for d in run_dirs}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_save(plt, curves_figure(runs), out_dir / "curves.png")]

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, records in runs.items():
        steps, explorer = _series(records, "schedule/g_explorer")
        _, learner = _series(records, "schedule/g_learner")
        share = [e / (e + s) for e, s in zip(explorer, learner, strict=True)]
        ax.step(steps, share, where="mid", label=f"{name}: explorer share of each group")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("G_w / G")
    _finish_axes(ax)
    written.append(_save(plt, fig, out_dir / "explorer_share.png"))
    return written


def curves_figure(runs: dict[str, list[dict]]):
    """Reward, accuracy and held-out avg@k against step: one line per run, and with a single run
    also the explorer's and the learner's samples apart."""
    import matplotlib.pyplot as plt

    keys = [*PLOT_KEYS, ("eval/avg_at_k", "held-out avg@k (band: +-2 standard errors)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
    for ax, (key, title) in zip(axes, keys, strict=True):
        for name, records in runs.items():
            (line,) = ax.plot(*_series(records, key), marker="o", ms=3, label=name)
            if key == "eval/avg_at_k":  # the evaluation's noise band: +- 2 standard errors
                steps, values = _series(records, key)
                _, errors = _series(records, "eval/avg_at_k_se")
                if len(errors) == len(values):
                    low = [v - 2 * e for v, e in zip(values, errors, strict=True)]
                    high = [v + 2 * e for v, e in zip(values, errors, strict=True)]
                    ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, lw=0)
            if len(runs) == 1:
                for source in ("explorer", "learner"):
                    src_key = key.replace("/mean", f"/{source}")
                    if src_key != key:
                        ax.plot(*_series(records, src_key), ls="--", label=source)
        ax.set_title(title)
        _finish_axes(ax)
    return fig


def _finish_axes(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    # Room around the data, so that no line runs along (or past) the frame, and whole steps.
    ax.relim()
    ax.autoscale_view()
    ax.margins(x=0.04, y=0.12)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories holding metrics.jsonl")
    parser.add_argument("--out", type=Path, help="output folder (default: the run's plots/, or ./plots)")


def run(args: argparse.Namespace) -> int:
    for d in args.run_dirs:
        if not (d / "metrics.jsonl").is_file():
            raise ValueError(f"{d}: no metrics.jsonl (is it a run directory?)")
    out = args.out or (args.run_dirs[0] / "plots" if len(args.run_dirs) == 1 else Path("plots"))
    for path in plot_runs(args.run_dirs, out):
        print(path)
    return 0
