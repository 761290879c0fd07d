"""Rollout records -> TrainBatch: rewards from the real reward function, advantages over the
combined explorer + learner group, response-only loss mask, DAPO filters, per-source metrics."""

from pathlib import Path

import pytest
import torch

from megatron_s2l.algo import AlgoConfig, grpo_advantages
from megatron_s2l.data import PromptRecord
from megatron_s2l.demo.tiny import make_tokenizer
from megatron_s2l.reward import RewardConfig, RewardScorer
from megatron_s2l.rollout.records import RolloutGroup, RolloutRecord
from megatron_s2l.run.experience import (
    ScoredGroups,
    build_experience,
    engine_logprob_gaps,
    keep_groups_with_signal,
    score_groups,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return make_tokenizer(Path(tmp_path_factory.mktemp("tok")), vocab_size=300)


@pytest.fixture(scope="module")
def scorer():
    with RewardScorer(RewardConfig(timeout_s=20.0, num_workers=1)) as s:
        yield s


def record(tokenizer, prompt_id: str, source: str, index: int, text: str, prompt: list[int]) -> RolloutRecord:
    ids = tokenizer(text).input_ids
    return RolloutRecord(prompt_id, index, source, prompt, ids, [-0.5] * len(ids), "stop", "3")


def make_groups(tokenizer):
    p0, p1 = [5, 6, 7], [8, 9]
    answers0 = [
        ("explorer", "Answer: 4"),
        ("explorer", "Answer: 5"),
        ("learner", "Answer: 4"),
        ("learner", "no"),
    ]
    answers1 = [("learner", "Answer: 1")] * 4  # all wrong: no signal
    groups = []
    for pid, prompt, answers in (("a", p0, answers0), ("b", p1, answers1)):
        counters = {"explorer": 0, "learner": 0}
        records = []
        for source, text in answers:
            records.append(record(tokenizer, pid, source, counters[source], text, prompt))
            counters[source] += 1
        groups.append(RolloutGroup(pid, records))
    prompts = {
        "a": PromptRecord(0, "math_dapo", [{"role": "user", "content": "2+2"}], "4", {}),
        "b": PromptRecord(1, "math_dapo", [{"role": "user", "content": "0+0"}], "0", {}),
    }
    return groups, prompts


def test_advantages_are_over_the_combined_group(tokenizer, scorer) -> None:
    groups, prompts = make_groups(tokenizer)
    scored = score_groups(groups, prompts, tokenizer, scorer, AlgoConfig(), max_new_tokens=64)
    assert scored.rewards == [[1.0, -1.0, 1.0, -1.0], [-1.0] * 4]
    exp = build_experience(scored, AlgoConfig(), pad_id=0)
    rewards = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0])
    want = grpo_advantages(rewards, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    torch.testing.assert_close(exp.batch.advantages, want)
    # an explorer-only or learner-only normalisation would give other values: check one by hand
    assert exp.batch.advantages[0].item() == pytest.approx(1.0 / (4 / 3) ** 0.5, rel=1e-5)  # std = sqrt(4/3)
    assert exp.metrics["acc/explorer"] == 0.5 and exp.metrics["acc/learner"] == pytest.approx(1 / 6)
    assert exp.metrics["reward/explorer"] == 0.0


def test_loss_mask_covers_exactly_the_response(tokenizer, scorer) -> None:
    groups, prompts = make_groups(tokenizer)
    exp = build_experience(
        score_groups(groups, prompts, tokenizer, scorer, AlgoConfig(), max_new_tokens=64),
        AlgoConfig(),
        pad_id=0,
    )
    for row, rec in enumerate(exp.records):
        seq = rec.prompt_ids + rec.response_ids
        assert exp.batch.input_ids[row, : len(seq)].tolist() == seq
        predicted = [
            exp.batch.input_ids[row, t + 1].item()
            for t in range(exp.batch.loss_mask.shape[1])
            if exp.batch.loss_mask[row, t] == 1
        ]
        assert predicted == rec.response_ids


def test_dynamic_sampling_and_overlong_shaping(tokenizer, scorer) -> None:
    groups, prompts = make_groups(tokenizer)
    algo = AlgoConfig(overlong_buffer=2, overlong_penalty_factor=1.0)
    scored = score_groups(groups, prompts, tokenizer, scorer, algo, max_new_tokens=4)
    lengths = [len(r.response_ids) for r in groups[0].records]
    base = [1.0, -1.0, 1.0, -1.0]
    want = [b + min(-(n - 2) / 2, 0.0) for b, n in zip(base, lengths, strict=True)]
    assert scored.rewards[0] == pytest.approx(want)
    for metric in ("acc", "reward"):
        kept = keep_groups_with_signal(scored, metric)
        assert [g.prompt_id for g in kept.groups] == ["a"]


def test_dynamic_sampling_filters_on_accuracy_or_reward(tokenizer) -> None:
    """All-wrong answers of different lengths under overlong shaping: the rewards differ, the verdicts
    do not. DAPO's scripts filter on accuracy (drop the group); on reward the group stays."""
    groups, _ = make_groups(tokenizer)
    scored = ScoredGroups(
        groups,
        rewards=[[1.0, -1.0, 1.0, -1.0], [-1.0, -1.1, -1.0, -1.3]],
        correct=[[True, False, True, False], [False] * 4],
        timed_out=0,
    )
    assert [g.prompt_id for g in keep_groups_with_signal(scored, "acc").groups] == ["a"]
    kept = keep_groups_with_signal(scored, "reward")
    assert [g.prompt_id for g in kept.groups] == ["a", "b"]
    assert kept.rewards[1] == [-1.0, -1.1, -1.0, -1.3]


def test_engine_logprob_gaps_by_source(tokenizer, scorer) -> None:
    groups, prompts = make_groups(tokenizer)
    exp = build_experience(
        score_groups(groups, prompts, tokenizer, scorer, AlgoConfig(), max_new_tokens=64),
        AlgoConfig(),
        pad_id=0,
    )
    learner_logprobs = torch.full(exp.batch.loss_mask.shape, -0.75)
    at_explorer_temperature = torch.full(exp.batch.loss_mask.shape, -1.0)
    gaps = engine_logprob_gaps(exp, learner_logprobs, at_explorer_temperature)
    # Each source against the learner at that source's own sampling temperature.
    assert gaps["explorer/engine_minus_learner_logprob"] == pytest.approx(0.5)
    assert gaps["mismatch/engine_minus_learner_logprob"] == pytest.approx(0.25)
    # Not computed at the explorer's temperature this step: no explorer gap, the learner's unchanged.
    assert engine_logprob_gaps(exp, learner_logprobs, None) == {
        "mismatch/engine_minus_learner_logprob": pytest.approx(0.25)
    }


@pytest.mark.parametrize(
    ("every", "explorer_t", "expected"),
    [(1, 0.7, [2, 2, 1]), (2, 0.7, [1, 2, 1]), (3, 0.7, [1, 1, 1]), (0, 0.7, [1, 1, 1]), (1, 1.0, [1, 1, 1])],
)
def test_the_explorer_temperature_pass_runs_every_n_mixing_steps(every, explorer_t, expected) -> None:
    """Steps 1 (G_w 8, G_s 0; every % 1), 2 and 3 (t_mix 3: step 3 has no explorer samples): the
    log-prob pass gets the explorer's temperature only at the asked steps with explorer samples and a
    temperature of its own; the explorer gap reads the row of that temperature, else none."""
    from megatron_s2l.algo import step_rollouts
    from megatron_s2l.config import load_config
    from megatron_s2l.run.steps import at_explorer_temperature, logprob_temperatures

    cfg = load_config(
        Path(__file__).resolve().parents[2] / "yaml" / "demo-cpu.yaml",
        [
            "schedule.steps=3",
            "schedule.t_mix=3",
            "schedule.group_size=8",
            f"logging.explorer_gap_every={every}",
            f"rollout.explorer_sampling.temperature={explorer_t}",
        ],
    )
    counts = []
    for step in (1, 2, 3):
        (rollout,) = step_rollouts(step, cfg.schedule)
        temperatures = logprob_temperatures(cfg, rollout)
        counts.append(len(temperatures))
        logprobs_KBT = torch.arange(len(temperatures), dtype=torch.float32)[:, None, None].expand(-1, 2, 3)
        found = at_explorer_temperature(cfg, temperatures, logprobs_KBT)
        if explorer_t == 1.0:  # the learner's own temperature: its log-probs serve both
            assert found is not None and found.eq(0).all()
        elif len(temperatures) == 2:
            assert found is not None and found.eq(1).all()
        else:
            assert found is None
    assert counts == expected
