"""`s2l demo`: the README's main job. Builds (or reuses) the demo's task and tiny models, runs
S2L-PO with real SGLang engines on this machine, and draws the plots.

    s2l demo [--baseline] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from megatron_s2l.config import load_config
from megatron_s2l.demo.assets import DemoAssets, prepare_demo
from megatron_s2l.run.plot import plot_runs
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.train_cli import preflight, prepare_run_dir, run_training

DEMO_CONFIG = Path("yaml/demo-cpu.yaml")
BASELINE_CONFIG = Path("yaml/demo-cpu-grpo.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=Path("cache/demo"), help="where the demo models live")
    parser.add_argument("--baseline", action="store_true", help="also run the GRPO baseline and compare")
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
    for path in [DEMO_CONFIG, BASELINE_CONFIG] if args.baseline else [DEMO_CONFIG]:
        cfg = load_config(path, [*demo_overrides(assets, explorer=path == DEMO_CONFIG), *args.overrides])
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
    print(f"demo: done in {time.perf_counter() - started:.0f} s")
    return 0
