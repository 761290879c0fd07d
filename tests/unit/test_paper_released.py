"""yaml/paper/*-released.yaml: the authors' released scripts' procedure and values (each cited to
its script line in the file), next to the Algorithm-1 configs they differ from."""

from __future__ import annotations

from pathlib import Path

from megatron_s2l.config import load_config

NUM_GPUS = 0
PAPER = Path(__file__).resolve().parents[2] / "yaml" / "paper"


def test_released_8b_config_runs_the_released_procedure() -> None:
    cfg = load_config(PAPER / "qwen3-8b-4b-s2l-released.yaml")
    sched = cfg.schedule
    assert (sched.steps, sched.t_mix, sched.group_size, sched.prompts_per_step) == (16, 8, 16, 1024)
    assert (sched.mode, sched.rounding) == ("alternating", "ceil-both")
    assert cfg.algo.explorer_mini_batch == "samples" and cfg.algo.ppo_mini_batch_prompts == 32
    loss = cfg.algo.loss
    assert (loss.agg, loss.clip_low, loss.clip_high, loss.clip_c) == ("token-mean-micro-batch", 0.2, 0.2, 3.0)
    assert (loss.kl_coef, loss.kl_estimator, loss.entropy_coef) == (0.001, "k3", 0.0)
    assert cfg.data.template == "chat-default" and cfg.data.max_prompt_tokens == 512
    parallel = cfg.learner.parallel
    assert (parallel.micro_batch_size, parallel.max_tokens_per_micro_batch) == (4, None)
    rollout = cfg.rollout
    assert (rollout.explorer_sampling.temperature, rollout.explorer_sampling.top_p) == (0.7, 0.95)
    assert (rollout.explorer_sampling.max_new_tokens, rollout.explorer_train_max_new_tokens) == (30_000, 4096)
    assert rollout.learner_sampling.max_new_tokens == 4096 and rollout.explorer_cache_draw == "per-use"
    assert rollout.explorer_cache_path is not None
    assert (cfg.reward.explorer_source, cfg.reward.explorer_full_response) == ("s2l_released_lenient", True)
    assert "Qwen3-8B-Base" in cfg.model.learner and "Qwen3-4B-Base" in cfg.model.explorer


def test_released_14b_and_inferred_1_7b_configs() -> None:
    big = load_config(PAPER / "qwen3-14b-4b-s2l-released.yaml")
    assert (big.schedule.group_size, big.schedule.t_mix, big.algo.ppo_mini_batch_prompts) == (8, 4, 16)
    assert big.learner.parallel.micro_batch_size == 2 and big.schedule.mode == "alternating"
    assert big.algo.loss.agg == "token-mean-micro-batch" and big.data.template == "chat-default"
    assert "Qwen3-14B-Base" in big.model.learner
    small = load_config(PAPER / "qwen3-8b-1.7b-s2l-released.yaml")
    assert "Qwen3-1.7B-Base" in small.model.explorer and small.schedule.rounding == "ceil-both"
    assert (PAPER / "qwen3-8b-1.7b-s2l-released.yaml").read_text().startswith("# INFERRED")


def test_algorithm_1_configs_keep_algorithm_1() -> None:
    """The released procedure is opt-in: the Algorithm-1 configs stay combined, exact, global."""
    for name in ("qwen3-8b-1.7b-s2l.yaml", "qwen3-8b-4b-s2l.yaml", "qwen3-14b-4b-s2l.yaml"):
        cfg = load_config(PAPER / name)
        assert (cfg.schedule.mode, cfg.schedule.rounding, cfg.algo.loss.agg) == (
            "combined",
            "exact",
            "token-mean",
        )
        assert cfg.rollout.explorer_train_max_new_tokens is None and cfg.reward.explorer_source is None
