"""`s2l demo`: the README's main job. Builds (or reuses) the demo's task and tiny models, trains
S2L-PO and the GRPO baseline with real SGLang engines on this machine, draws both on shared axes and
prints each run's held-out accuracy before and after training with its noise band.

    s2l demo [--s2l-only] [key.sub=value ...]      # overrides apply to both runs
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

from megatron_s2l.config import load_config
from megatron_s2l.demo.assets import DemoAssets, prepare_demo
from megatron_s2l.run.metrics import read_metrics
from megatron_s2l.run.plot import plot_runs
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.train_cli import preflight, prepare_run_dir, run_training

DEMO_CONFIG = Path("yaml/demo-cpu.yaml")
BASELINE_CONFIG = Path("yaml/demo-cpu-grpo.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=Path("cache/demo"), help="where the demo models live")
    parser.add_argument("--s2l-only", action="store_true", help="skip the GRPO baseline")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of yaml/demo-cpu.yaml")


def demo_overrides(assets: DemoAssets, *, explorer: bool) -> list[str]:
    """Point a demo config at the assets actually built (`--cache` may put them anywhere)."""
    return [
        f"model.learner={assets.learner_dir}",
        *([f"model.explorer={assets.explorer_dir}"] if explorer else []),
        f"data.train_files=[{assets.train_file}]",
        f"data.eval_files=[{assets.eval_file}]",
    ]


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    assets = prepare_demo(args.cache)
    runs = []
    for path in [DEMO_CONFIG] if args.s2l_only else [DEMO_CONFIG, BASELINE_CONFIG]:
        baseline = ["schedule.t_mix=0"] if path == BASELINE_CONFIG else []  # whatever the overrides say
        overrides = [*demo_overrides(assets, explorer=path == DEMO_CONFIG), *args.overrides, *baseline]
        cfg = load_config(path, overrides)
        preflight(cfg)
        run = RunDir.for_config(cfg)
        if run.root.exists():
            print(f"demo: replacing the previous demo run in {run.root}")
            shutil.rmtree(run.root)
        prepare_run_dir(cfg, run, resume=False)
        print(
            f"demo: training {cfg.name} ({cfg.schedule.steps} steps, T_mix {cfg.schedule.t_mix})", flush=True
        )
        run_training(cfg, run, resume=False)
        runs.append(run)
    for plot in plot_runs([r.root for r in runs], runs[0].plots):
        print(f"demo: wrote {plot}")
    for line in learning_summary({r.root.name: read_metrics(r.root) for r in runs}):
        print(f"demo: {line}")
    print(f"demo: done in {time.perf_counter() - started:.0f} s")
    return 0


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
