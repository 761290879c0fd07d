"""`s2l demo`: the README's main job. Builds (or reuses) the demo's task and tiny models, trains
S2L-PO and the GRPO baseline with real SGLang engines on this machine, draws them on shared axes and
prints each run's held-out accuracy before and after training with its noise band, then compares the
methods over seeds (megatron_s2l/run/compare.py) into runs/demo-compare/.

    s2l demo [--seeds N] [--methods s2l,grpo] [key.sub=value ...]   # overrides apply to every run
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import time
from pathlib import Path

from megatron_s2l.config import S2LConfig, load_config
from megatron_s2l.demo.assets import DemoAssets, prepare_demo
from megatron_s2l.run.compare import X_AXES, group_by_method, load_run, plot_comparison, summary_table
from megatron_s2l.run.metrics import read_metrics
from megatron_s2l.run.plot import plot_runs
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.train_cli import preflight, prepare_run_dir, run_training

DEMO_CONFIG = Path("yaml/demo-cpu.yaml")
BASELINE_CONFIG = Path("yaml/demo-cpu-grpo.yaml")


@dataclasses.dataclass(frozen=True, slots=True)
class DemoMethod:
    config: Path
    explorer: bool
    """False: a GRPO baseline, kept without explorer (T_mix 0) whatever the overrides say."""


METHODS = {
    "s2l": DemoMethod(DEMO_CONFIG, explorer=True),
    "s2l-released": DemoMethod(Path("yaml/demo-cpu-released.yaml"), explorer=True),
    "grpo": DemoMethod(BASELINE_CONFIG, explorer=False),
    "hightemp": DemoMethod(Path("yaml/demo-cpu-hightemp.yaml"), explorer=False),
}
COMPARE_RUN = "demo-compare"
"""The comparison's folder: `logging.run_dir` with this name."""


def parse_methods(text: str) -> list[str]:
    """`--methods`: comma-separated names of METHODS."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}"
        )
    return names


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=Path("cache/demo"), help="where the demo models live")
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=["s2l", "grpo"],
        help=f"comma-separated, trained in this order (default: s2l,grpo; any of {', '.join(METHODS)})",
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="runs per method; with N > 1 run k (0..N-1) gets seed=k, name=<name>-seed<k> (default: 1)",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of every run's config")


def demo_overrides(assets: DemoAssets, *, explorer: bool) -> list[str]:
    """Point a demo config at the assets actually built (`--cache` may put them anywhere)."""
    return [
        f"model.learner={assets.learner_dir}",
        *([f"model.explorer={assets.explorer_dir}"] if explorer else []),
        f"data.train_files=[{assets.train_file}]",
        f"data.eval_files=[{assets.eval_file}]",
    ]


def run_configs(methods: list[str], seeds: int, assets: DemoAssets, overrides: list[str]) -> list[S2LConfig]:
    """Every run's config, method by method: the demo's assets, then `overrides`, then (baselines)
    no explorer, then with seeds > 1 the seed and the seed-suffixed name."""
    configs = []
    for name in methods:
        method = METHODS[name]
        base = [*demo_overrides(assets, explorer=method.explorer), *overrides]
        base += [] if method.explorer else ["schedule.t_mix=0"]
        cfg = load_config(method.config, base)
        if seeds == 1:
            configs.append(cfg)
            continue
        configs += [
            load_config(method.config, [*base, f"seed={k}", f"name={cfg.name}-seed{k}"]) for k in range(seeds)
        ]
    return configs


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    assets = prepare_demo(args.cache)
    configs = run_configs(args.methods, args.seeds, assets, args.overrides)
    for cfg in configs:  # every config checked before the first run trains
        preflight(cfg)
    runs = []
    for cfg in configs:
        run = RunDir.for_config(cfg)
        if run.root.exists():
            print(f"demo: replacing the previous demo run in {run.root}")
            shutil.rmtree(run.root)
        prepare_run_dir(cfg, run, resume=False)
        print(
            f"demo: training {cfg.name} ({cfg.schedule.steps} steps, T_mix {cfg.schedule.t_mix}, "
            f"seed {cfg.seed})",
            flush=True,
        )
        run_training(cfg, run, resume=False)
        runs.append(run)
    for plot in plot_runs([r.root for r in runs], runs[0].plots):
        print(f"demo: wrote {plot}")
    for line in learning_summary({r.root.name: read_metrics(r.root) for r in runs}):
        print(f"demo: {line}")
    compare(runs, RunDir.for_config(dataclasses.replace(configs[0], name=COMPARE_RUN)).root)
    print(f"demo: done in {time.perf_counter() - started:.0f} s")
    return 0


def compare(runs: list[RunDir], out_dir: Path) -> None:
    """The methods over seeds: their table, and their mean held-out curves on every x axis. Runs that
    cannot be compared (evaluation off, say) are reported, not an error: they trained."""
    try:
        groups = group_by_method([load_run(r.root) for r in runs])
        plots = [plot_comparison(groups, axis, out_dir) for axis in X_AXES]
    except ValueError as e:
        print(f"demo: no comparison: {e}")
        return
    for line in summary_table(groups):
        print(f"demo: {line}")
    for plot in plots:
        print(f"demo: wrote {plot}")


def learning_summary(runs: dict[str, list[dict]]) -> list[str]:
    """Per run: held-out avg@k at the first and the last evaluation, each +- 2 standard errors, and
    whether the change is larger than both bands together (the evaluation's own noise)."""
    lines = []
    for name, records in runs.items():
        evals = [r for r in records if "eval/avg_at_k" in r]
        if len(evals) < 2:
            continue
        first, last = evals[0], evals[-1]
        change = last["eval/avg_at_k"] - first["eval/avg_at_k"]
        noise = 2 * math.hypot(first["eval/avg_at_k_se"], last["eval/avg_at_k_se"])
        verdict = "beyond" if abs(change) > noise else "within"
        lines.append(
            f"{name}: held-out avg@k {first['eval/avg_at_k']:.3f} +- {2 * first['eval/avg_at_k_se']:.3f} "
            f"at step {first['step']} -> {last['eval/avg_at_k']:.3f} +- {2 * last['eval/avg_at_k_se']:.3f} "
            f"at step {last['step']}: {change:+.3f}, {verdict} the noise band (+-{noise:.3f})"
        )
    return lines
