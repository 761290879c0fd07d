"""One S2L-PO run, step by step (docs/design.md 1-2): generate -> reward -> advantages -> old (and
reference) log-probs -> PPO updates over mini-batches -> sync weights -> log / evaluate / checkpoint.
How a step runs its rollouts is `schedule.mode`'s step function (run/steps.py): Algorithm 1's one
combined rollout, or the released scripts' explorer and learner half-steps.

    s2l train --config yaml/demo-cpu.yaml [key.sub=value ...]
    s2l train --resume runs/demo-cpu

Every learner rank runs `train`; global rank 0 is also the driver (SGLang engines, data, rewards,
logs). The driver broadcasts each step's TrainBatch, so the learner code is SPMD.
"""

from __future__ import annotations

import time
from typing import Any

import torch.distributed as dist

from megatron_s2l.config import S2LConfig
from megatron_s2l.learner.learner import Learner
from megatron_s2l.learner.offload import prepare_learner_for_colocation
from megatron_s2l.learner.parallel import pin_learner_rank
from megatron_s2l.rollout.colocate import Colocation
from megatron_s2l.run.checkpoint import load_latest_run_checkpoint, save_run_checkpoint
from megatron_s2l.run.hand_over import hand_over_explorer, resumes_after_explorer
from megatron_s2l.run.phases import Phases
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.run.steps import STEP_MODES, StepPieces, broadcast, sync_learner_engines
from megatron_s2l.run.stop import StopSignal
from megatron_s2l.sync.manifest import read_weight_manifest
from megatron_s2l.sync.weight_sync import WeightSync, pool_endpoints


def train(cfg: S2LConfig, run: RunDir, *, resume: bool) -> None:
    # learner.cpu_cores: before anything starts threads; the engines go on the node's other cores.
    node_cores = pin_learner_rank(cfg.learner.cpu_cores)
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

        # A run resumed after its last step with explorer samples starts without explorer engines.
        retired = resume and resumes_after_explorer(cfg, run.checkpoints)
        driver = Driver(cfg, run, explorer_retired=retired, node_cores=node_cores)
        driver.log_summary(learner.layout)
    try:
        layout = learner.layout
        sync = WeightSync(
            cfg.sync,
            endpoints=broadcast(pool_endpoints(driver.engines.learner) if driver else None),
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
        start, version, explorer_half_done = 1, 0, None
        loop = load_latest_run_checkpoint(run.checkpoints, learner) if resume else None
        if loop is not None:
            start, version = loop["step"] + 1, loop["step"]
            if driver:
                driver.load_state_dict(loop["driver"])
            if loop.get("explorer_half") is not None:  # saved between the half-steps of `start`
                explorer_half_done = loop["explorer_half"]["metrics"]
                version = f"{start}-explorer"

        def checkpoint(step: int, explorer_half: dict[str, Any] | None = None) -> None:
            phases.enter(step, "checkpoint")
            loop_state = {"driver": driver.state_dict(), "explorer_half": explorer_half} if driver else None
            keep = (cfg.checkpoint.keep_last, cfg.checkpoint.keep_steps)
            save_run_checkpoint(
                run.checkpoints, step, learner, loop_state, *keep, explorer_half=bool(explorer_half)
            )

        def checkpoint_explorer_half(step: int, metrics: dict[str, Any]) -> bool:
            stopping = stop.agreed(step)  # collective
            if stopping or cfg.checkpoint.saves_at(step, cfg.schedule.steps):
                checkpoint(step, {"step": step, "metrics": metrics})
            return stopping

        pieces = StepPieces(cfg, learner, driver, sync, colocation, phases, checkpoint_explorer_half)
        run_step = STEP_MODES[cfg.schedule.mode]
        # Engines started here hold the base model: a resumed run brings them to the checkpoint's
        # weights. Attached ones (external_urls) may hold anything (another run's): always synced.
        if loop is not None or cfg.rollout.learner.external_urls:
            sync_learner_engines(sync, learner, version, driver.engines.learner if driver else None)
            if driver:
                driver.engines.learner.check_weight_versions()
        if resume and driver:  # steps after the checkpoint run again: their old records go
            driver.logger.keep_steps_through(start - 1 if start > 1 else -1)
        if start == 1 and cfg.eval.every_steps and driver:  # the starting point of the eval curve
            driver.logger.log(0, driver.evaluate(0))
        for step in range(start, cfg.schedule.steps + 1):
            step_started = time.perf_counter()
            hand_over = hand_over_explorer(pieces, step)  # collective; explorer engines -> learner ones
            metrics = run_step(pieces, step, explorer_half_done if step == start else None)
            if metrics is None:  # SIGTERM between two half-steps: the first is checkpointed
                break
            metrics["weight_version"] = step
            last = step == cfg.schedule.steps
            if cfg.eval.every_steps and (last or step % cfg.eval.every_steps == 0):
                metrics.update(driver.evaluate(step) if driver else {})
            if driver:
                metrics.update(hand_over | driver.engine_counts())
                metrics["time/step"] = time.perf_counter() - step_started
                driver.logger.log(step, metrics)
            # After logging: a run killed in between re-runs (and re-logs) this step on resume.
            stopping = stop.agreed(step)  # collective: rank 0's SIGTERM, the same step on every rank
            if stopping or cfg.checkpoint.saves_at(step, cfg.schedule.steps):
                checkpoint(step)
            if stopping:
                break
    finally:
        stop.restore()
        if "sync" in locals():
            sync.close()
        if driver:
            driver.close()
