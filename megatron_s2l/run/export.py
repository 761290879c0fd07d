"""A run checkpoint as a Hugging Face checkpoint (`s2l eval --model RUN_DIR@STEP`).

    export_run_step(Path("runs/demo-cpu"), 8)   # -> runs/demo-cpu/export/step_000008

The learner is rebuilt from the run's own config on its own number of ranks (a checkpoint loads at
the layout it was saved with), restored from `checkpoints/step_NNNNNN`, and written by `export_hf`.
An export that is already complete is reused; a partial one (killed mid-write) is redone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from megatron_s2l.config import S2LConfig, load_config
from megatron_s2l.configio import build, to_dict
from megatron_s2l.run.checkpoint import checkpoint_dir
from megatron_s2l.run.rundir import RunDir

logger = logging.getLogger(__name__)
_DONE = "EXPORT_COMPLETE"


def export_run_step(run_dir: Path, step: int) -> Path:
    """The HF directory of `run_dir`'s checkpoint at `step`, exported on first use."""
    run = RunDir(run_dir)
    if not run.config_file.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no {run.config_file.name})")
    source = checkpoint_dir(run.checkpoints, step)
    if not (source / "loop.pt").is_file():
        saved = sorted(p.name for p in run.checkpoints.glob("step_*") if (p / "loop.pt").is_file())
        raise ValueError(f"{run_dir} has no complete checkpoint of step {step} (saved: {saved or 'none'})")
    out = run.root / "export" / source.name
    if (out / _DONE).is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(run.config_file)
    logger.info("exporting %s to %s on %d rank(s)", source, out, cfg.ranks)
    from megatron_s2l.learner.parallel import spawn_local_ranks

    spawn_local_ranks(_export_rank, cfg.ranks, to_dict(cfg), str(source / "learner"), str(out))
    (out / _DONE).write_text(f"{source}\n")
    return out


def _export_rank(cfg_dict: dict, learner_checkpoint: str, out_dir: str) -> None:
    from megatron_s2l.learner.learner import Learner
    from megatron_s2l.learner.parallel import destroy_distributed

    cfg = build(S2LConfig, cfg_dict)
    learner = Learner.from_hf(cfg.learner, cfg.model.learner, loss=cfg.algo.loss)
    learner.load(learner_checkpoint)
    learner.export_hf(out_dir)
    destroy_distributed()
