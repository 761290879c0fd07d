"""The explorer's hand-over (`rollout.explorer_hand_over`): once no step left has explorer samples,
the explorer's engines make way for more learner engines (`RolloutEngines.hand_over_explorer`).

    Driver(cfg, run, explorer_retired=resume and resumes_after_explorer(cfg, run.checkpoints))
    for step in ...:
        hand_over = hand_over_explorer(pieces, step)   # collective; at step last_explorer_step + 1
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_s2l.algo import ScheduleConfig, step_rollouts
from megatron_s2l.run.checkpoint import completed_step, latest_checkpoint
from megatron_s2l.run.steps import broadcast, sync_learner_engines

if TYPE_CHECKING:
    from megatron_s2l.config import S2LConfig
    from megatron_s2l.run.steps import StepPieces


def last_explorer_step(schedule: ScheduleConfig) -> int:
    """The last step whose rollouts hold explorer samples (0: none). G_w reaches 0 at step T_mix
    itself (alpha 0), so this is T_mix - 1, or 1 when T_mix = 1, or the last step when T_mix > T."""
    steps = range(1, min(schedule.t_mix, schedule.steps) + 1)
    return max((s for s in steps if any(r.g_explorer for r in step_rollouts(s, schedule))), default=0)


def hands_over(cfg: S2LConfig) -> bool:
    """Whether the run's explorer engines are handed over at some step: live ones (no cache),
    `rollout.explorer_hand_over` on, and a step without explorer samples after the last with them."""
    last = last_explorer_step(cfg.schedule)
    live = cfg.rollout.explorer_cache_path is None and last > 0
    return cfg.rollout.explorer_hand_over and live and last < cfg.schedule.steps


def resumes_after_explorer(cfg: S2LConfig, checkpoints: Path) -> bool:
    """Whether a run resumed from `checkpoints` starts in the layout after the hand-over: its latest
    checkpoint holds the last step with explorer samples complete (read before any engine starts;
    `hand_over_explorer` stops the run if an older checkpoint is loaded instead)."""
    latest = latest_checkpoint(checkpoints)
    done = latest is not None and completed_step(latest) >= last_explorer_step(cfg.schedule)
    return hands_over(cfg) and done


def hand_over_explorer(pieces: StepPieces, step: int) -> dict[str, float]:
    """Collective, before every step's rollout. At the first step after the last one with explorer
    samples, the driver hands the explorer engines over (`Driver.hand_over_explorer`); when learner
    engines started, every rank syncs the learner engines to the weights after step - 1 (the new
    ones hold the base weights; the distributed transport builds a new group with them, as the
    members' start fingerprints changed). Its time as `time/hand_over` (empty at other steps)."""
    cfg, driver = pieces.cfg, pieces.driver
    retired = driver is not None and driver.engines.explorer_retired
    if retired and any(rollout.g_explorer for rollout in step_rollouts(step, cfg.schedule)):
        raise RuntimeError(
            f"step {step} has explorer samples, but the run started without explorer engines: it "
            f"expected to resume from {latest_checkpoint(driver.run.checkpoints)}, which did not load "
            "(see above); resume again with rollout.explorer_hand_over=false"
        )
    if not hands_over(cfg) or step != last_explorer_step(cfg.schedule) + 1:
        return {}
    started = time.perf_counter()
    pieces.phases.enter(step, "hand-over")
    if broadcast(driver.hand_over_explorer() if driver else None):
        pool = driver.engines.learner if driver else None
        sync_learner_engines(pieces.sync, pieces.learner, step - 1, pool)
        if pool is not None:
            pool.check_weight_versions()
    return {"time/hand_over": time.perf_counter() - started}
