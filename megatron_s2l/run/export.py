"""A run checkpoint as a Hugging Face checkpoint (`s2l export`, `s2l eval --model RUN_DIR@STEP`).

    s2l export runs/demo-cpu@8 [--output DIR]   # default DIR: runs/demo-cpu/export/step_000008
    export_run_step(Path("runs/demo-cpu"), 8)   # what both commands call

The learner is rebuilt from the run's own config on its own number of ranks (a checkpoint loads at
the layout it was saved with), restored from `checkpoints/step_NNNNNN`, and written by `export_hf`.
An export that is already complete is reused; a partial one (killed mid-write) is redone. An
`--output` directory that holds anything else is refused, never deleted.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from megatron_s2l.config import S2LConfig, load_config
from megatron_s2l.configio import build, to_dict
from megatron_s2l.run.checkpoint import checkpoint_dir
from megatron_s2l.run.rundir import RunDir

logger = logging.getLogger(__name__)
_DONE = "EXPORT_COMPLETE"


def parse_run_step(spec: str) -> tuple[Path, int]:
    """(run directory, step) of `RUN_DIR@STEP`."""
    run_dir, sep, step_text = spec.rpartition("@")
    if not sep or not run_dir or not step_text.isdigit():
        raise ValueError(f"{spec!r}: expected RUN_DIR@STEP with an integer step")
    return Path(run_dir), int(step_text)


def export_run_step(run_dir: Path, step: int, out: Path | None = None) -> Path:
    """The HF directory of `run_dir`'s checkpoint at `step`, exported on first use: to `out`, or by
    default to RUN_DIR/export/step_NNNNNN (where later evaluations find it)."""
    run = RunDir(run_dir)
    if not run.config_file.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no {run.config_file.name})")
    source = checkpoint_dir(run.checkpoints, step)
    if not (source / "loop.pt").is_file():
        saved = sorted(p.name for p in run.checkpoints.glob("step_*") if (p / "loop.pt").is_file())
        raise ValueError(f"{run_dir} has no complete checkpoint of step {step} (saved: {saved or 'none'})")
    default = run.root / "export" / source.name
    out = default if out is None else Path(out)
    done = out / _DONE
    if done.is_file() and (out == default or done.read_text().strip() == str(source.resolve())):
        return out
    if out != default and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"--output {out}: exists and is not an export of {source}; remove it or choose another"
        )
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(run.config_file)
    logger.info("exporting %s to %s on %d rank(s)", source, out, cfg.ranks)
    from megatron_s2l.learner.parallel import spawn_local_ranks

    spawn_local_ranks(_export_rank, cfg.ranks, to_dict(cfg), str(source / "learner"), str(out))
    done.write_text(f"{source.resolve()}\n")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_step", metavar="RUN_DIR@STEP", help="a run directory and a saved step")
    parser.add_argument(
        "--output", type=Path, help="HF checkpoint directory to write (default RUN_DIR/export/step_NNNNNN)"
    )


def run(args: argparse.Namespace) -> int:
    run_dir, step = parse_run_step(args.run_step)
    print(export_run_step(run_dir, step, args.output))
    return 0


def _export_rank(cfg_dict: dict, learner_checkpoint: str, out_dir: str) -> None:
    from megatron_s2l.learner.learner import Learner
    from megatron_s2l.learner.parallel import destroy_distributed

    cfg = build(S2LConfig, cfg_dict)
    learner = Learner.from_hf(cfg.learner, cfg.model.learner, loss=cfg.algo.loss)
    learner.load(learner_checkpoint)
    learner.export_hf(out_dir)
    destroy_distributed()
