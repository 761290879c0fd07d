"""The driver (global rank 0): rollout engines, prompts, rewards, evaluation and the run's logs.

The learner ranks only see `TrainBatch`es; everything that talks to SGLang or reads data is here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch

from megatron_s2l.algo import StepRollout, step_rollouts
from megatron_s2l.archs import load_arch
from megatron_s2l.config import S2LConfig
from megatron_s2l.configio import to_dict
from megatron_s2l.data import PromptRecord, PromptSampler, load_prompt_dataset, prompt_id
from megatron_s2l.eval.protocol import cap_to_context
from megatron_s2l.eval.score import sample_and_score, summarize
from megatron_s2l.learner.micro_batches import micro_batch_rows
from megatron_s2l.learner.parallel import ParallelLayout
from megatron_s2l.reward import RewardScorer, check_data_source
from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.engines import RolloutEngines
from megatron_s2l.rollout.records import Prompt, RolloutBatch, RolloutRecord
from megatron_s2l.rollout.sampler import merge_round_metrics
from megatron_s2l.rollout.sampling_params import SamplingConfig
from megatron_s2l.run.experience import Experience, build_experience, keep_groups_with_signal, score_groups
from megatron_s2l.run.metrics import RunLogger
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.run.samples import (
    eval_sample_path,
    eval_sample_rows,
    rollout_sample_path,
    rollout_sample_rows,
    write_sample_rows,
)

logger = logging.getLogger(__name__)


T = TypeVar("T")


class DynamicSamplingError(RuntimeError):
    """Dynamic sampling could not fill the batch with informative groups in the allowed rounds."""


class StaleSamplesError(RuntimeError):
    """A learner sample came from weights more than one step older than the ones it trains."""


@dataclass(slots=True)
class Ahead:
    """The next rollout, started before its step (`Driver._start_next`)."""

    rollout: StepRollout
    indices: list[int]
    """Its prompts (indices into the training set), drawn early."""
    prompts_state: dict[str, int]
    """The prompt sampler's state before the draw: what a checkpoint saves, so that a resumed run
    draws the same prompts again (and generates the rollout afresh)."""
    cache_state: dict[str, Any] | None
    """The explorer cache's position before the rollout drew from it (None without a cache)."""
    batch: concurrent.futures.Future[tuple[RolloutBatch, float]] | None
    """`rollout.overlap`: the whole rollout being generated (and its generation seconds); None:
    only its explorer samples were started (`rollout.prefetch_explorer`)."""


class Driver:
    def __init__(
        self,
        cfg: S2LConfig,
        run: RunDir,
        *,
        explorer_retired: bool = False,
        node_cores: frozenset[int] | None = None,
    ) -> None:
        """`explorer_retired`: start the engines in the layout after the explorer's hand-over (a run
        resumed after its last step with explorer samples: run/hand_over.py). `node_cores`: the
        cores the engines are placed on (those this process had before `learner.cpu_cores` pinned
        it; None: its affinity mask)."""
        from transformers import AutoTokenizer

        self.cfg, self.run = cfg, run
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.learner)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Every row's data_source must have a reward function: checked here, before any server starts.
        load = partial(
            load_prompt_dataset, tokenizer=self.tokenizer, cfg=cfg.data, check_source=check_data_source
        )
        self.train_set = load(cfg.data.train_files)
        self.eval_set = load(cfg.data.eval_files) if cfg.data.eval_files else None
        self.eval_sampling = self._eval_sampling()
        self.prompts = PromptSampler(range(len(self.train_set)), shuffle=cfg.data.shuffle, seed=cfg.seed)
        self._batches = self.prompts.batches(cfg.schedule.prompts_per_step)
        # The workers read model output: they get no engine API key (nor any other secret).
        api_key_envs = [pool.engine.api_key_env for pool in (cfg.rollout.explorer, cfg.rollout.learner)]
        self.scorer = RewardScorer(cfg.reward, hidden_env=[name for name in api_key_envs if name])
        explorer = cfg.model.explorer if cfg.schedule.t_mix > 0 else None
        self.engines = RolloutEngines(
            cfg.rollout,
            explorer_model=explorer,
            learner_model=cfg.model.learner,
            explorer_retired=explorer_retired,
            cores=node_cores,
            learner_cores=cfg.learner.cpu_cores,
        )
        self.engines.start()
        self.sampler = self.engines.build_sampler(
            t_mix=cfg.schedule.t_mix, group_size=cfg.schedule.group_size, seed=cfg.seed
        )
        self.logger = RunLogger(
            run,
            tensorboard=cfg.logging.tensorboard,
            total_steps=cfg.schedule.steps,
            wandb=cfg.logging.wandb,
            config=to_dict(cfg),
            run_name=cfg.name,
        )
        self._ahead: Ahead | None = None

    def _eval_sampling(self) -> SamplingConfig | None:
        """`eval.sampling` with its response cap cut to the learner engines' context less the longest
        evaluation prompt (as `s2l eval` does); None without evaluation prompts."""
        if self.eval_set is None or len(self.eval_set) == 0:
            return None
        context = self.cfg.rollout.learner.engine.context_length
        context = context or load_arch(self.cfg.model.learner).max_position_embeddings
        longest = max(map(len, self.eval_set.prompt_ids))
        try:
            return cap_to_context(self.cfg.eval.sampling, context, longest)
        except ValueError as e:
            raise ValueError(f"eval.sampling: {e}") from e

    def log_summary(self, layout: ParallelLayout) -> None:
        """The run's derived numbers, once at start-up (nanochat's "Calculated ..." lines)."""
        cfg, sched, algo = self.cfg, self.cfg.schedule, self.cfg.algo
        samples = sched.prompts_per_step * sched.group_size
        per_update = (algo.ppo_mini_batch_prompts or sched.prompts_per_step) * sched.group_size
        micro, budget = cfg.learner.parallel.micro_batch_size, cfg.learner.parallel.max_tokens_per_micro_batch
        rows = micro_batch_rows(per_update // layout.dp, micro)
        micro_batching = (
            f"{per_update // layout.dp // rows} micro-batches of {rows}"
            if budget is None
            else f"micro-batches of up to {budget:,} tokens"
        )
        lines = [
            f"run directory {self.run.root}",
            f"learner ranks {layout.world_size} = TP {layout.tp} x PP {layout.pp} x DP {layout.dp}",
            f"per step: {sched.prompts_per_step} prompts x G {sched.group_size} = {samples} samples; "
            f"{algo.updates_per_step(sched.prompts_per_step)} optimizer updates of {per_update} samples "
            f"({micro_batching} per DP rank each)",
            f"schedule: {sched.steps} steps, explorer share annealed over T_mix = {sched.t_mix} "
            f"({sched.mode} mixing steps, {sched.rounding} rounding); "
            f"{len(self.train_set)} training prompts ({len(self.train_set) / sched.prompts_per_step:.1f} "
            "steps per epoch)",
        ]
        if sched.mode == "alternating":
            updates = [
                algo.updates_per_rollout(r.part, sched.prompts_per_step, r.g_explorer + r.g_learner)
                for step in range(1, sched.steps + 1)
                for r in step_rollouts(step, sched)
                if r.part == "explorer"
            ]
            lines.append(
                f"explorer half-steps: mini-batches of {algo.ppo_mini_batch_prompts or 'all'} "
                f"{algo.explorer_mini_batch}; {updates[0] if updates else 0} optimizer updates at step 1, "
                f"{sum(updates)} over the run"
            )
        for name, seconds in self.engines.startup_seconds.items():
            pool = getattr(self.engines, name)
            started = ", ".join(f"{url} ({t:.0f} s)" for url, t in zip(pool.urls, seconds, strict=True))
            lines.append(f"{name} engines: {len(pool.urls)} x TP {pool.config.engine.tp}: {started}")
        for line in lines:
            logger.info(line)

    def _prompt(self, index: int) -> tuple[Prompt, PromptRecord]:
        record = self.train_set[index]
        return Prompt(prompt_id("train", index), self.train_set.prompt_ids[index]), record

    def collect(self, rollout: StepRollout) -> tuple[Experience, dict[str, float]]:
        """Sample `rollout`'s groups (G_w explorer and G_s learner samples per prompt: a combined
        step, or one source alone in a half-step) for the next batch of prompts, score them, compute
        advantages. With dynamic sampling, keep drawing prompts until the batch holds enough
        informative groups."""
        started = time.perf_counter()
        step = rollout.step
        algo, want = self.cfg.algo, self.cfg.schedule.prompts_per_step
        max_new = self.cfg.rollout.learner_sampling.max_new_tokens
        scored = None
        round_metrics: list[dict[str, float]] = []
        rounds, reward_seconds, early_seconds = 0, 0.0, 0.0
        while True:
            prompts, batch, early = self._sample_round(rollout, rounds)
            early_seconds += early
            rounds += 1
            round_metrics.append(batch.metrics)
            records = {p.prompt_id: r for p, r in prompts}
            reward_started = time.perf_counter()
            new = score_groups(
                batch.groups,
                records,
                self.tokenizer,
                self.scorer,
                algo,
                max_new,
                explorer_train_max_new_tokens=self.cfg.rollout.explorer_train_max_new_tokens,
            )
            reward_seconds += time.perf_counter() - reward_started
            if algo.dynamic_sampling:
                new = keep_groups_with_signal(new, algo.dynamic_sampling_metric)
            scored = new if scored is None else _concat(scored, new)
            if not algo.dynamic_sampling or len(scored.groups) >= want:
                break
            if rounds == algo.max_sampling_rounds:
                raise DynamicSamplingError(
                    f"step {step}: only {len(scored.groups)} of {want} groups had unequal rewards after "
                    f"{rounds} sampling rounds (algo.max_sampling_rounds)"
                )
        scored = _trim(scored, want)
        experience = build_experience(scored, algo, self.pad_id)
        if self.cfg.logging.dump_samples:
            rows = rollout_sample_rows(experience, self.tokenizer, step, self.cfg.logging.dump_samples)
            write_sample_rows(rollout_sample_path(self.run.samples, step), rows)
        # A rollout generated early (rollout.overlap) counts its generation time, not the wait for it.
        elapsed = time.perf_counter() - started - reward_seconds + early_seconds
        tokens = sum(len(r.response_ids) for r in experience.records)
        metrics = {
            **merge_round_metrics(round_metrics),
            "schedule/g_explorer": rollout.g_explorer,
            "schedule/g_learner": rollout.g_learner,
            **_weight_versions(experience.records),
            **self._staleness(experience.records, step),
            **experience.metrics,
            "rollout/sampling_rounds": rounds,
            "data/epoch": self.prompts.epoch,
            "data/position": self.prompts.position,
            "rollout/reward_timeouts": scored.timed_out,
            "rollout/reward_failures": scored.failed,
            "rollout/tokens_per_s": tokens / elapsed,
            "time/rollout": elapsed,
            "time/reward": reward_seconds,
        }
        self._start_next(self._rollout_after(rollout))
        return experience, metrics

    def _sample_round(
        self, rollout: StepRollout, sampling_round: int
    ) -> tuple[list[tuple[Prompt, PromptRecord]], RolloutBatch, float]:
        """One sampling round's prompts and samples, and the seconds they took to generate when
        they were generated early (`_start_next`; else 0): those started early, else new ones."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.rollout != rollout:
            raise RuntimeError(f"{rollout} found the early rollout of {ahead.rollout}")
        prompts = [self._prompt(i) for i in (ahead.indices if ahead else next(self._batches))]
        if ahead is not None and ahead.batch is not None:
            return prompts, *ahead.batch.result()
        counts = (rollout.g_explorer, rollout.g_learner)
        sample = self.sampler.sample([p for p, _ in prompts], rollout.step, sampling_round, counts)
        return prompts, self.engines.run(sample), 0.0

    def _staleness(self, records: list[RolloutRecord], step: int) -> dict[str, float]:
        """`rollout/staleness_max` and `_mean` of the learner samples: how many steps older their
        weights are than those step `step` trains (the weights after step - 1): 0 on-policy, 1 with
        `rollout.overlap`. With overlap, more than 1 is an error (without, an engine restarted
        mid-run serves the base weights until the next sync, as `rollout/stale_learner_samples`
        counts)."""
        staleness = [step - 1 - weight_step(r.weight_version) for r in records if r.source == "learner"]
        if not staleness:
            return {}
        if self.cfg.rollout.overlap and max(staleness) > 1:
            versions = sorted({r.weight_version for r in records if r.source == "learner"})
            raise StaleSamplesError(
                f"step {step}: learner samples from weight versions {versions}, more than one step "
                "older than the weights after the step before (rollout.overlap allows one)"
            )
        return {
            "rollout/staleness_max": float(max(staleness)),
            "rollout/staleness_mean": sum(staleness) / len(staleness),
        }

    def _rollout_after(self, rollout: StepRollout) -> StepRollout | None:
        """The run's next rollout (the learner half-step after an explorer one, else the next step's
        first), None after the last."""
        rollouts = step_rollouts(rollout.step, self.cfg.schedule)
        later = rollouts[rollouts.index(rollout) + 1 :]
        if later:
            return later[0]
        step = rollout.step + 1
        return step_rollouts(step, self.cfg.schedule)[0] if step <= self.cfg.schedule.steps else None

    def _start_next(self, rollout: StepRollout | None) -> None:
        """Draw `rollout`'s prompts now and start sampling them, to be generated while the trainer
        trains: the whole rollout, from the weights the engines hold now (`rollout.overlap`), or its
        explorer samples (`rollout.prefetch_explorer`: the explorer is frozen)."""
        if rollout is None:
            return
        overlap = self.cfg.rollout.overlap
        live_explorer = self.sampler.explorer is not None
        if not (overlap or (self.cfg.rollout.prefetch_explorer and live_explorer and rollout.g_explorer)):
            return
        cache = self.sampler.explorer_cache
        prompts_state, cache_state = self.prompts.state_dict(), cache.state_dict() if cache else None
        indices = next(self._batches)
        prompts = [self._prompt(i)[0] for i in indices]
        batch = None
        if overlap:
            counts = (rollout.g_explorer, rollout.g_learner)
            batch = self.engines.submit(_timed(self.sampler.sample(prompts, rollout.step, 0, counts)))
        else:
            self.sampler.prefetch_explorer(prompts, rollout.step, rollout.g_explorer)
        self._ahead = Ahead(rollout, indices, prompts_state, cache_state, batch)

    def wait_for_generation(self) -> float:
        """Wait until the rollout started early (`rollout.overlap`) has finished generating, so
        that the weight sync never changes an engine's weights mid-rollout (nor evaluation, which
        follows the sync, shares the engines with it); returns the seconds waited. Its errors are
        raised when the next step collects it."""
        started = time.perf_counter()
        if self._ahead is not None and self._ahead.batch is not None:
            concurrent.futures.wait([self._ahead.batch])
        return time.perf_counter() - started

    def evaluate(self, step: int) -> dict[str, float]:
        """avg@k and pass@k on the held-out prompts, sampled from the learner engines (seeded) with
        `eval.sampling` (the paper's evaluation protocol by default, not the training rollouts')."""
        if self.eval_set is None or self.eval_sampling is None:
            return {}
        k = self.cfg.eval.samples_per_prompt
        client = RolloutClient(self.engines.learner, "learner", self.cfg.rollout.client)
        results = self.engines.run(
            sample_and_score(
                client,
                self.eval_set,
                self.tokenizer,
                self.scorer,
                n=k,
                sampling=self.eval_sampling,
                seed=self.cfg.seed,
                step=step,
            )
        )
        if self.cfg.logging.dump_samples:
            rows = eval_sample_rows(
                results, self.eval_set, self.tokenizer, step, self.cfg.logging.dump_samples
            )
            write_sample_rows(eval_sample_path(self.run.samples, step), rows)
        summary = summarize(results, k)
        return {
            "eval/avg_at_k": summary["avg@n"],
            "eval/avg_at_k_se": summary["avg@n_se"],
            "eval/pass_at_k": summary["pass@k"][str(k)],
        }

    def state_dict(self) -> dict[str, Any]:
        cache = self.sampler.explorer_cache
        return {
            # A rollout started early is dropped: a resumed run draws its prompts and samples again.
            "prompts": self._ahead.prompts_state if self._ahead else self.prompts.state_dict(),
            "explorer_cache": (
                self._ahead.cache_state if self._ahead else cache.state_dict() if cache else None
            ),
            "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prompts.load_state_dict(state["prompts"])
        if self.sampler.explorer_cache is not None:
            self.sampler.explorer_cache.load_state_dict(state["explorer_cache"])
        self._batches = self.prompts.batches(self.cfg.schedule.prompts_per_step)
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])

    def hand_over_explorer(self) -> bool:
        """`RolloutEngines.hand_over_explorer`, logged; whether learner engines started (to be synced)."""
        attached = self.engines.explorer is not None and bool(self.cfg.rollout.explorer.external_urls)
        done = self.engines.hand_over_explorer()
        if done.stopped:
            shared = self.cfg.rollout.explorer.placement == "shared"
            logger.info(
                "explorer hand-over: stopped the explorer engines %s; learner engines started in their "
                "place: %s",
                done.stopped,
                done.started or ("none (the learner engines run there already)" if shared else "none"),
            )
        if attached:
            logger.info(
                "explorer hand-over: the attached explorer servers %s get no more requests from this "
                "run; released their memory: %s (only servers started with --enable-memory-saver free "
                "any): their GPUs are free for other use (stop the servers to free all of it)",
                self.cfg.rollout.explorer.external_urls,
                done.released or "none",
            )
        return bool(done.started)

    def engine_counts(self) -> dict[str, int]:
        """The engines serving each pool now (`rollout/learner_engines`, `rollout/explorer_engines`)."""
        explorer = self.engines.explorer
        return {
            "rollout/learner_engines": len(self.engines.learner.servers),
            "rollout/explorer_engines": 0 if explorer is None else len(explorer.servers),
        }

    def close(self) -> None:
        self.logger.close()
        self.scorer.close()
        self.engines.stop()


async def _timed(coroutine: Coroutine[Any, Any, T]) -> tuple[T, float]:
    started = time.perf_counter()
    return await coroutine, time.perf_counter() - started


def weight_step(version: str) -> int:
    """The step whose update an engine's weight version holds: "default" (the base weights) 0,
    "<n>" n, "<n>-explorer" (the explorer half-step of step n on top of step n - 1's) n - 1."""
    if version == "default":
        return 0
    step, _, half = version.partition("-")
    if not step.isdigit() or half not in ("", "explorer"):
        raise ValueError(f"weight version {version!r} names no training step")
    return int(step) - 1 if half == "explorer" else int(step)


def _weight_versions(records) -> dict[str, str]:
    """The engines' weight version(s) behind each source's samples, e.g. "default" or "3" (a comma-
    separated list when a batch mixes versions, which only a missed sync can cause)."""
    versions: dict[str, set[str]] = {}
    for record in records:
        versions.setdefault(record.source, set()).add(record.weight_version)
    return {f"rollout/{source}_weight_version": ",".join(sorted(v)) for source, v in versions.items()}


def _concat(a, b):
    return type(a)(
        a.groups + b.groups,
        a.rewards + b.rewards,
        a.correct + b.correct,
        a.timed_out + b.timed_out,
        a.failed + b.failed,
    )


def _trim(scored, n: int):
    return type(scored)(
        scored.groups[:n], scored.rewards[:n], scored.correct[:n], scored.timed_out, scored.failed
    )
