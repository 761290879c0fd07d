"""One S2L-PO run, step by step (docs/design.md 1-2): generate -> reward -> advantages -> old (and
reference) log-probs -> PPO updates over mini-batches -> sync weights -> log / evaluate / checkpoint.

    s2l train --config yaml/demo-cpu.yaml [key.sub=value ...]
    s2l train --resume runs/demo-cpu

Every learner rank runs `train`; global rank 0 is also the driver (SGLang engines, data, rewards,
logs). The driver broadcasts each step's TrainBatch, so the learner code is SPMD.
"""

from __future__ import annotations

import time

import torch.distributed as dist

from megatron_s2l.algo import mean_over_updates, ppo_mini_batch_rows, s2l_split
from megatron_s2l.config import S2LConfig
from megatron_s2l.learner.learner import Learner
from megatron_s2l.learner.offload import prepare_learner_for_colocation
from megatron_s2l.rollout.colocate import Colocation
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.run.checkpoint import load_latest_run_checkpoint, save_run_checkpoint
from megatron_s2l.run.experience import engine_logprob_gaps
from megatron_s2l.run.phases import Phases
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.run.stop import StopSignal
from megatron_s2l.sync.manifest import read_weight_manifest
from megatron_s2l.sync.weight_sync import SyncResult, WeightSync, pool_endpoints

_TRAIN_METRIC_NAMES = {"loss": "loss/total", "pg_loss": "loss/pg", "kl": "loss/kl", "entropy": "loss/entropy"}


def _broadcast(obj):
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _logprob_temperatures(cfg: S2LConfig, step: int) -> list[float]:
    """The learner's sampling temperature, then, while explorer samples are in the batch, the
    explorer's (evaluated from the same forward), so that each source's engine log-probs are compared
    with the learner's at the temperature they were sampled at (SGLang returns the log-probs of the
    temperature-scaled distribution; greedy samples come with unscaled ones)."""
    learner_t = cfg.rollout.learner_sampling.temperature
    explorer_t = cfg.rollout.explorer_sampling.temperature or 1.0
    mixing = s2l_split(step, cfg.schedule.t_mix, cfg.schedule.group_size)[0] > 0
    return [learner_t, explorer_t] if mixing and explorer_t != learner_t else [learner_t]


def sync_learner_engines(
    sync: WeightSync, learner: Learner, version: int, pool: EnginePool | None
) -> SyncResult:
    """Bring the learner engines to the learner's weights (collective). The pool (the driver's) is
    told the new version before anything is sent, so that samples from an engine that misses the
    update count as stale (`SyncResult.missed` names such engines)."""
    if pool is not None:
        pool.weight_version = str(version)
    return sync.update(learner.iter_hf_weights(), version, pool_endpoints(pool) if pool else None)


def train(cfg: S2LConfig, run: RunDir, *, resume: bool) -> None:
    cfg = run.resolve(cfg)  # engine logs, sync scratch: inside the run directory unless set
    stop = StopSignal.install()  # SIGTERM: finish the step, checkpoint, return (run/stop.py)
    learner = Learner.from_hf(
        cfg.learner,
        cfg.model.learner,
        loss=cfg.algo.loss,
        temperature=cfg.rollout.learner_sampling.temperature,
    )
    # rollout.colocate: the optimizer state exists (or is offloaded) before the engines size their memory.
    offload = prepare_learner_for_colocation(
        learner, colocate=cfg.rollout.colocate, offload=cfg.learner.offload_during_rollout
    )
    is_driver = dist.get_rank() == 0
    driver = None
    if is_driver:
        from megatron_s2l.run.driver import Driver

        driver = Driver(cfg, run)
        driver.log_summary(learner.layout)
    try:
        layout = learner.layout
        sync = WeightSync(
            cfg.sync,
            endpoints=_broadcast(pool_endpoints(driver.engines.learner) if driver else None),
            is_sender=layout.tp_rank == 0 and layout.dp_rank == 0,
            is_controller=is_driver,
            stage=layout.pp_rank,
            num_stages=layout.pp,
            manifest=read_weight_manifest(cfg.model.learner),  # every sender checks its tensors
        )
        phases = Phases(run.status_file if driver else None)
        # rollout.colocate: the learner engines hand their GPU memory to the learner between rollouts.
        colocation = Colocation(
            driver.engines.learner if driver else None,
            enabled=cfg.rollout.colocate,
            timeout_s=cfg.sync.timeout_s,
            learner=offload,
        )
        start = 1
        loop = load_latest_run_checkpoint(run.checkpoints, learner) if resume else None
        if loop is not None:
            start = loop["step"] + 1
            if driver:
                driver.load_state_dict(loop["driver"])
        # Engines started here hold the base model: a resumed run brings them to the checkpoint's
        # weights. Attached ones (external_urls) may hold anything (another run's): always synced.
        if loop is not None or cfg.rollout.learner.external_urls:
            sync_learner_engines(sync, learner, start - 1, driver.engines.learner if driver else None)
            if driver:
                driver.engines.learner.check_weight_versions()
        if resume and driver:  # steps after the checkpoint run again: their old records go
            driver.logger.keep_steps_through(start - 1 if start > 1 else -1)
        if start == 1 and cfg.eval.every_steps and driver:  # the starting point of the eval curve
            driver.logger.log(0, driver.evaluate(0))
        for step in range(start, cfg.schedule.steps + 1):
            step_started = time.perf_counter()
            phases.enter(step, "rollout")  # times itself: rollout and reward apart
            experience, metrics = driver.collect(step) if driver else (None, {})
            colocation.release()  # before the broadcast, which holds the other ranks until it is done
            batch = _broadcast(experience.batch if driver else None)

            with phases.timed(step, "logprobs", metrics):
                # Old log-probs of every sample, explorer ones too (so every PPO ratio starts at 1).
                logprobs_KBT = learner.compute_logprobs_at(batch, _logprob_temperatures(cfg, step))
                batch.old_logprobs = logprobs_KBT[0]
                if cfg.algo.loss.kl_coef > 0:
                    batch.ref_logprobs = learner.compute_ref_logprobs(batch)

            with phases.timed(step, "train", metrics):
                mini_batches = ppo_mini_batch_rows(
                    cfg.schedule.prompts_per_step,
                    cfg.schedule.group_size,
                    cfg.algo.ppo_mini_batch_prompts,
                    epochs=cfg.algo.ppo_epochs,
                    seed=cfg.seed,
                    step=step,
                )
                train_metrics = mean_over_updates([learner.train_step(batch.select(r)) for r in mini_batches])

            colocation.resume_weights()  # the sync writes into the engines' resumed weight memory
            with phases.timed(step, "sync", metrics):
                result = sync_learner_engines(sync, learner, step, driver.engines.learner if driver else None)
            colocation.resume_kv_cache()  # the engines can generate again (evaluation, next rollout)
            metrics.update({"sync/gb_per_s": result.gb_per_s, "sync/missed_engines": len(result.missed)})
            metrics["weight_version"] = step

            last = step == cfg.schedule.steps
            if cfg.eval.every_steps and (last or step % cfg.eval.every_steps == 0):
                metrics.update(driver.evaluate(step) if driver else {})
            if driver:
                metrics.update(
                    {_TRAIN_METRIC_NAMES.get(k, f"train/{k}"): v for k, v in train_metrics.items()}
                )
                metrics.update(engine_logprob_gaps(experience, logprobs_KBT[0], logprobs_KBT[-1]))
                metrics["time/step"] = time.perf_counter() - step_started
                driver.logger.log(step, metrics)
            # After logging: a run killed in between re-runs (and re-logs) this step on resume.
            stopping = stop.agreed(step)  # collective: rank 0's SIGTERM, the same step on every rank
            if stopping or cfg.checkpoint.saves_at(step, cfg.schedule.steps):
                phases.enter(step, "checkpoint")
                loop_state = {"driver": driver.state_dict()} if driver else None
                save_run_checkpoint(
                    run.checkpoints,
                    step,
                    learner,
                    loop_state,
                    cfg.checkpoint.keep_last,
                    cfg.checkpoint.keep_steps,
                )
            if stopping:
                break
    finally:
        stop.restore()
        if "sync" in locals():
            sync.close()
        if driver:
            driver.close()
