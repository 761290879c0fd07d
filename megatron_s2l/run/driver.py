"""The driver (global rank 0): rollout engines, prompts, rewards, evaluation and the run's logs.

The learner ranks only see `TrainBatch`es; everything that talks to SGLang or reads data is here.
"""

from __future__ import annotations

import logging
import random
import time
from functools import partial
from typing import Any

import torch

from megatron_s2l.algo import StepRollout, step_rollouts
from megatron_s2l.archs import load_arch
from megatron_s2l.config import S2LConfig
from megatron_s2l.configio import to_dict
from megatron_s2l.data import PromptRecord, PromptSampler, load_prompt_dataset, prompt_id
from megatron_s2l.eval.protocol import cap_to_context
from megatron_s2l.eval.score import sample_and_score, summarize
from megatron_s2l.learner.parallel import ParallelLayout
from megatron_s2l.reward import RewardScorer, check_data_source
from megatron_s2l.rollout.client import RolloutClient
from megatron_s2l.rollout.engines import RolloutEngines
from megatron_s2l.rollout.records import Prompt
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


class DynamicSamplingError(RuntimeError):
    """Dynamic sampling could not fill the batch with informative groups in the allowed rounds."""


class Driver:
    def __init__(self, cfg: S2LConfig, run: RunDir) -> None:
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
        self.engines = RolloutEngines(cfg.rollout, explorer_model=explorer, learner_model=cfg.model.learner)
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
        self._ahead: tuple[list[int], dict[str, int]] | None = None
        """The next step's prompts, drawn early for the explorer prefetch, and the prompt sampler's
        state before that draw (what a checkpoint saves: a resumed run draws them again)."""

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
        micro_batching = (
            f"{per_update // (layout.dp * micro)} micro-batches of {micro}"
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
        step, counts = rollout.step, (rollout.g_explorer, rollout.g_learner)
        algo, want = self.cfg.algo, self.cfg.schedule.prompts_per_step
        max_new = self.cfg.rollout.learner_sampling.max_new_tokens
        scored = None
        round_metrics: list[dict[str, float]] = []
        rounds, reward_seconds = 0, 0.0
        while True:
            prompts = [self._prompt(i) for i in self._next_batch()]
            batch = self.engines.run(self.sampler.sample([p for p, _ in prompts], step, rounds, counts))
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
        elapsed = time.perf_counter() - started - reward_seconds
        tokens = sum(len(r.response_ids) for r in experience.records)
        metrics = {
            **merge_round_metrics(round_metrics),
            "schedule/g_explorer": rollout.g_explorer,
            "schedule/g_learner": rollout.g_learner,
            **_weight_versions(experience.records),
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
        self._prefetch_explorer(self._rollout_after(rollout))
        return experience, metrics

    def _next_batch(self) -> list[int]:
        if self._ahead is not None:
            indices, self._ahead = self._ahead[0], None
            return indices
        return next(self._batches)

    def _rollout_after(self, rollout: StepRollout) -> StepRollout | None:
        """The run's next rollout (the learner half-step after an explorer one, else the next step's
        first), None after the last."""
        rollouts = step_rollouts(rollout.step, self.cfg.schedule)
        later = rollouts[rollouts.index(rollout) + 1 :]
        if later:
            return later[0]
        step = rollout.step + 1
        return step_rollouts(step, self.cfg.schedule)[0] if step <= self.cfg.schedule.steps else None

    def _prefetch_explorer(self, rollout: StepRollout | None) -> None:
        """Draw `rollout`'s prompts now and start their explorer samples, to be generated while the
        trainer trains and syncs (rollout.prefetch_explorer)."""
        live_explorer = self.sampler.explorer is not None
        if not (self.cfg.rollout.prefetch_explorer and live_explorer and rollout and rollout.g_explorer):
            return
        state = self.prompts.state_dict()
        indices = next(self._batches)
        self._ahead = (indices, state)
        self.sampler.prefetch_explorer(
            [self._prompt(i)[0] for i in indices], rollout.step, rollout.g_explorer
        )

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
            "prompts": self._ahead[1] if self._ahead is not None else self.prompts.state_dict(),
            "explorer_cache": cache.state_dict() if cache is not None else None,
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

    def close(self) -> None:
        self.logger.close()
        self.scorer.close()
        self.engines.stop()


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
