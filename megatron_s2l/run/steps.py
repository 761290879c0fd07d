"""One training step of each `schedule.mode`, built from the same piece: `train_on_rollout` (collect
a rollout on the driver -> broadcast -> old and reference log-probs -> PPO updates -> weight sync).

    metrics = combined_step(pieces, step, None)            # Algorithm 1: one rollout of G per prompt
    metrics = alternating_step(pieces, step, resumed)      # released scripts: explorer-only half-step,
                                                           # then learner-only half-step

A step returns its one row of metrics (empty on ranks other than the driver), or None when the run
stopped (SIGTERM) between two half-steps, after checkpointing the first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist

from megatron_s2l.algo import StepRollout, mean_over_updates, ppo_mini_batch_rows, step_rollouts
from megatron_s2l.algo.loss import truncated_importance_weights
from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.rollout.sampler import ADDITIVE_METRICS
from megatron_s2l.run.experience import engine_logprob_gaps
from megatron_s2l.sync.weight_sync import SyncResult, pool_endpoints

if TYPE_CHECKING:
    from megatron_s2l.config import S2LConfig
    from megatron_s2l.learner.learner import Learner
    from megatron_s2l.rollout.colocate import Colocation
    from megatron_s2l.rollout.pool import EnginePool
    from megatron_s2l.run.driver import Driver
    from megatron_s2l.run.phases import Phases
    from megatron_s2l.sync.weight_sync import WeightSync

TRAIN_METRIC_NAMES = {"loss": "loss/total", "pg_loss": "loss/pg", "kl": "loss/kl", "entropy": "loss/entropy"}


@dataclass(slots=True)
class StepPieces:
    """What every step mode runs on (the driver only on global rank 0)."""

    cfg: S2LConfig
    learner: Learner
    driver: Driver | None
    sync: WeightSync
    colocation: Colocation
    phases: Phases
    checkpoint_explorer_half: Callable[[int, dict[str, Any]], bool]
    """Called (collectively) after an explorer half-step with its metrics: checkpoints it when the
    step is one that saves or the run is stopping; returns whether the run stops there."""


class StepMode(Protocol):
    def __call__(
        self, pieces: StepPieces, step: int, explorer_half_done: dict[str, Any] | None
    ) -> dict[str, Any] | None: ...


def broadcast(obj):
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sync_learner_engines(
    sync: WeightSync, learner: Learner, version: int | str, pool: EnginePool | None
) -> SyncResult:
    """Bring the learner engines to the learner's weights (collective). The pool (the driver's) is
    told the new version before anything is sent, so that samples from an engine that misses the
    update count as stale (`SyncResult.missed` names such engines)."""
    if pool is not None:
        pool.weight_version = str(version)
    return sync.update(learner.iter_hf_weights(), version, pool_endpoints(pool) if pool else None)


def logprob_temperatures(cfg: S2LConfig, rollout: StepRollout) -> list[float]:
    """The learner's sampling temperature (the old log-probs), then, at the steps where
    `logging.explorer_gap_every` asks for the explorer's gap and explorer samples are in the batch,
    the explorer's (from the same forward: one more log-softmax over the vocabulary per token), so
    that each source's engine log-probs are compared with the learner's at the temperature they were
    sampled at (SGLang returns the log-probs of the temperature-scaled distribution; greedy samples
    come with unscaled ones)."""
    learner_t = cfg.rollout.learner_sampling.temperature
    explorer_t = cfg.rollout.explorer_sampling.temperature or 1.0
    every = cfg.logging.explorer_gap_every
    diagnose = rollout.g_explorer > 0 and every > 0 and rollout.step % every == 0
    return [learner_t, explorer_t] if diagnose and explorer_t != learner_t else [learner_t]


def at_explorer_temperature(
    cfg: S2LConfig, temperatures: list[float], logprobs_KBT: torch.Tensor
) -> torch.Tensor | None:
    """The learner's log-probs at the explorer's temperature when they were computed (or the
    temperatures are the same), else None: no explorer gap this step."""
    explorer_t = cfg.rollout.explorer_sampling.temperature or 1.0
    return logprobs_KBT[temperatures.index(explorer_t)] if explorer_t in temperatures else None


def reweight_by_tis(batch: TrainBatch, cap: float) -> tuple[TrainBatch, dict[str, float]]:
    """`batch` with each response token's advantage times its truncated importance weight
    (`truncated_importance_weights` of its old and rollout log-probs), so per token; and the
    weights' metrics."""
    weights_BT, metrics = truncated_importance_weights(
        batch.old_logprobs, batch.rollout_logprobs, batch.loss_mask, cap
    )
    advantages_BT = batch.advantages if batch.advantages.ndim == 2 else batch.advantages[:, None]
    reweighted = dataclasses.replace(batch, advantages=advantages_BT * weights_BT, rollout_logprobs=None)
    return reweighted, metrics


def train_on_rollout(pieces: StepPieces, rollout: StepRollout, version: int | str) -> dict[str, Any]:
    """One rollout end to end: sample and score it (driver), old (and reference) log-probs, PPO
    updates over its mini-batches, then sync the learner engines to `version`. Its metrics (driver)."""
    cfg, learner, driver, phases = pieces.cfg, pieces.learner, pieces.driver, pieces.phases
    step = rollout.step
    phases.enter(step, "rollout" if rollout.part == "combined" else f"rollout-{rollout.part}")
    experience, metrics = driver.collect(rollout) if driver else (None, {})
    pieces.colocation.release()  # before the broadcast, which holds the other ranks until it is done
    batch = broadcast(experience.batch if driver else None)

    with phases.timed(step, "logprobs", metrics):
        # Old log-probs of every sample, explorer ones too (so every PPO ratio starts at 1).
        temperatures = logprob_temperatures(cfg, rollout)
        logprobs_KBT = learner.compute_logprobs_at(batch, temperatures)
        batch.old_logprobs = logprobs_KBT[0]
        if cfg.algo.loss.kl_coef > 0:
            batch.ref_logprobs = learner.compute_ref_logprobs(batch)
        tis_metrics = {}
        if cfg.algo.rollout_correction == "tis":
            batch, tis_metrics = reweight_by_tis(batch, cfg.algo.tis_cap)

    with phases.timed(step, "train", metrics):
        mini_batches = ppo_mini_batch_rows(
            cfg.schedule.prompts_per_step,
            rollout.g_explorer + rollout.g_learner,
            cfg.algo.ppo_mini_batch_prompts,
            epochs=cfg.algo.ppo_epochs,
            seed=cfg.seed,
            step=step,
            by_samples=cfg.algo.by_samples(rollout.part),
        )
        train_metrics = mean_over_updates([learner.train_step(batch.select(r)) for r in mini_batches])

    if driver and cfg.rollout.overlap:  # the next rollout, generating since collect, ends first
        metrics["time/rollout_wait"] = driver.wait_for_generation()
    pieces.colocation.resume_weights()  # the sync writes into the engines' resumed weight memory
    with phases.timed(step, "sync", metrics):
        result = sync_learner_engines(
            pieces.sync, learner, version, driver.engines.learner if driver else None
        )
    pieces.colocation.resume_kv_cache()  # the engines can generate again (evaluation, next rollout)
    if driver:
        metrics.update({"sync/gb_per_s": result.gb_per_s, "sync/missed_engines": len(result.missed)})
        metrics.update({TRAIN_METRIC_NAMES.get(k, f"train/{k}"): v for k, v in train_metrics.items()})
        metrics.update({f"train/{k}": v for k, v in tis_metrics.items()})
        explorer_t_logprobs = at_explorer_temperature(cfg, temperatures, logprobs_KBT)
        metrics.update(engine_logprob_gaps(experience, logprobs_KBT[0], explorer_t_logprobs))
    return metrics


def combined_step(
    pieces: StepPieces, step: int, explorer_half_done: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Algorithm 1: one rollout whose groups hold G_w explorer and G_s learner samples."""
    (rollout,) = step_rollouts(step, pieces.cfg.schedule)
    return train_on_rollout(pieces, rollout, step)


def alternating_step(
    pieces: StepPieces, step: int, explorer_half_done: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The released scripts: an explorer-only half-step (its own prompts, updates and sync), then a
    learner-only half-step on the next prompts, sampled from the weights after the first.
    `explorer_half_done`: the explorer half's metrics when a resumed run already ran it."""
    rollouts = step_rollouts(step, pieces.cfg.schedule)
    halves: dict[str, dict[str, Any]] = {}
    for rollout in rollouts:
        if rollout.part == "explorer" and explorer_half_done is not None:
            halves["explorer"] = explorer_half_done
            continue
        last = rollout is rollouts[-1]
        halves[rollout.part] = train_on_rollout(pieces, rollout, step if last else f"{step}-explorer")
        if not last and pieces.checkpoint_explorer_half(step, halves[rollout.part]):
            return None
    if pieces.driver is None:
        return {}
    return merge_half_steps(halves.get("explorer"), halves.get("learner"))


STEP_MODES: dict[str, StepMode] = {"combined": combined_step, "alternating": alternating_step}


_SUMMED = ADDITIVE_METRICS | {
    "schedule/g_explorer",
    "schedule/g_learner",
    "train/updates",
    "train/skipped",
    "rollout/sampling_rounds",
    "rollout/reward_timeouts",
    "rollout/reward_failures",
    "rollout/tokens_explorer",
    "rollout/tokens_learner",
    "sync/missed_engines",
    "rollout/explorer_from_cache",  # a 0/1 flag only the explorer half can set
}
_MEANS_OVER_SAMPLES = {
    "reward/mean",
    "acc/mean",
    "adv/mean",
    "adv/abs_mean",
    "adv/zero_frac",
    "response_len/mean",
    "response_len/truncated_frac",
}


def merge_half_steps(explorer: dict[str, Any] | None, learner: dict[str, Any] | None) -> dict[str, Any]:
    """One step's row from its half-steps' metrics: counts and times summed; means over the step's
    samples weighted by each half's samples per prompt; loss and train metrics weighted by each
    half's optimizer updates; `train/updates_explorer` the explorer half's updates; any other metric
    (per-source ones, data position, learning rate) from the later half that has it."""
    halves = [h for h in (explorer, learner) if h is not None]
    merged: dict[str, Any] = {}
    for half in halves:
        merged.update(half)
    for key in merged:
        present = [h for h in halves if key in h]
        if len(present) < 2:
            continue
        if key in _SUMMED or key.startswith("time/"):
            merged[key] = sum(h[key] for h in present)
        elif key in _MEANS_OVER_SAMPLES:
            merged[key] = _weighted(
                [(h[key], h["schedule/g_explorer"] + h["schedule/g_learner"]) for h in present]
            )
        elif key.startswith(("loss/", "train/")) and key != "train/lr":
            merged[key] = _weighted([(h[key], h["train/updates"]) for h in present])
    merged["train/updates_explorer"] = explorer["train/updates"] if explorer is not None else 0.0
    return merged


def _weighted(values: list[tuple[float, float]]) -> float:
    total = sum(weight for _, weight in values)
    return sum(value * weight for value, weight in values) / total
