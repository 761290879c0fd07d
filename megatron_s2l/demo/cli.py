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
from megatron_s2l.demo.assets import prepare_demo
from megatron_s2l.run.plot import plot_runs
from megatron_s2l.train_cli import preflight, prepare_run_dir, run_training

DEMO_CONFIG = Path("yaml/demo-cpu.yaml")
BASELINE_CONFIG = Path("yaml/demo-cpu-grpo.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=Path("cache/demo"), help="where the demo models live")
    parser.add_argument("--baseline", action="store_true", help="also run the GRPO baseline and compare")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of yaml/demo-cpu.yaml")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    prepare_demo(args.cache)
    run_dirs = []
    for path in [DEMO_CONFIG, BASELINE_CONFIG] if args.baseline else [DEMO_CONFIG]:
        cfg = load_config(path, args.overrides)
        preflight(cfg)
        run_dir = Path(cfg.logging.run_dir.format(name=cfg.name))
        if run_dir.exists():
            print(f"demo: replacing the previous demo run in {run_dir}")
            shutil.rmtree(run_dir)
        run_dirs.append(prepare_run_dir(cfg, resume=False))
        print(
            f"demo: training {cfg.name} ({cfg.schedule.steps} steps, T_mix {cfg.schedule.t_mix})", flush=True
        )
        run_training(cfg, run_dirs[-1], resume=False)
    out = run_dirs[0] / "plots"
    for plot in plot_runs(run_dirs, out):
        print(f"demo: wrote {plot}")
    print(f"demo: done in {time.perf_counter() - started:.0f} s")
    return 0
