"""`logging.dump_samples`: the decoded samples a run writes per step (megatron_s2l/run/samples.py),
and the evaluation protocol's sampling settings (`eval.sampling`) shared with `s2l eval`.

    .venv/bin/pytest tests/unit/test_run_samples.py -q

NUM_GPUS = 0. A real tokenizer (trained here), real `build_experience`; the expected texts are the
strings the samples were made from and the expected advantages come from a float64 formula here.
"""

from __future__ import annotations

import argparse
import json
import statistics

import pytest

from megatron_s2l.algo import AlgoConfig
from megatron_s2l.config import EvalConfig, LoggingConfig, load_config
from megatron_s2l.configio import ConfigError
from megatron_s2l.data import DataConfig, load_prompt_dataset
from megatron_s2l.demo.tiny import make_tokenizer
from megatron_s2l.eval import protocol
from megatron_s2l.eval.score import ProblemResult
from megatron_s2l.rollout.records import RolloutGroup, RolloutRecord
from megatron_s2l.run.experience import ScoredGroups, build_experience
from megatron_s2l.run.samples import (
    eval_sample_path,
    eval_sample_rows,
    pick_rollout_rows,
    rollout_sample_path,
    rollout_sample_rows,
    write_sample_rows,
)

NUM_GPUS = 0
PROMPTS = ["Compute 4 + 5 - 3.", "Compute 7 - 2 + 1.", "Compute 9 - 8 + 6."]
G_EXPLORER, G_LEARNER = 2, 3


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"), seed=0)


def response_text(group: int, source: str, index: int) -> str:
    return f"Step {group}: {source} sample {index}. Answer: {group + index}"


def make_experience(tokenizer):
    """3 prompts, each a combined group of 2 explorer + 3 learner samples with distinct texts."""
    groups, rewards = [], []
    for g, prompt in enumerate(PROMPTS):
        prompt_ids = tokenizer(prompt)["input_ids"]
        records = [
            RolloutRecord(
                prompt_id=f"train:{g}",
                sample_index=i,
                source=source,
                prompt_ids=prompt_ids,
                response_ids=tokenizer(response_text(g, source, i))["input_ids"],
                logprobs=[],
                finish_reason="stop",
                weight_version="default" if source == "explorer" else str(g),
            )
            for source, count in (("explorer", G_EXPLORER), ("learner", G_LEARNER))
            for i in range(count)
        ]
        groups.append(RolloutGroup(f"train:{g}", records))
        rewards.append([1.0 if (g + k) % 2 else -1.0 for k in range(len(records))])
    correct = [[r > 0 for r in rs] for rs in rewards]
    scored = ScoredGroups(groups, rewards, correct, timed_out=0)
    return build_experience(scored, AlgoConfig(), pad_id=0), rewards


def expected_advantage(rewards: list[float], k: int) -> float:
    """GRPO's (r - mean) / (unbiased std + 1e-6) over the combined group, in float64."""
    return (rewards[k] - statistics.fmean(rewards)) / (statistics.stdev(rewards) + 1e-6)


def test_rollout_rows_spread_over_prompts_and_carry_text_reward_and_advantage(tokenizer) -> None:
    experience, rewards = make_experience(tokenizer)
    rows = rollout_sample_rows(experience, tokenizer, step=3, per_source=2)
    # Each source's first sample of the first two prompts, not two samples of one prompt.
    assert [(r["source"], r["prompt_id"], r["sample_index"]) for r in rows] == [
        ("explorer", "train:0", 0),
        ("explorer", "train:1", 0),
        ("learner", "train:0", 0),
        ("learner", "train:1", 0),
    ]
    for row in rows:
        g = int(row["prompt_id"].split(":")[1])
        k = row["sample_index"] + (G_EXPLORER if row["source"] == "learner" else 0)  # position in its group
        assert row["step"] == 3
        assert row["prompt"] == PROMPTS[g]
        assert row["response"] == response_text(g, row["source"], row["sample_index"])
        assert row["reward"] == rewards[g][k]
        assert row["correct"] == (rewards[g][k] > 0)
        assert row["advantage"] == pytest.approx(expected_advantage(rewards[g], k), abs=1e-6)
        assert row["weight_version"] == ("default" if row["source"] == "explorer" else str(g))
        assert row["finish_reason"] == "stop"
        assert row["response_tokens"] == len(tokenizer(row["response"])["input_ids"])


@pytest.mark.parametrize("per_source", [0, 1, G_EXPLORER * len(PROMPTS), 100])
def test_rollout_rows_per_source_limit_past_the_batch(tokenizer, per_source: int) -> None:
    experience, _ = make_experience(tokenizer)
    picked = pick_rollout_rows(experience, per_source)
    assert len(picked) == len(set(picked))  # no sample twice
    by_source = {s: [i for i in picked if experience.records[i].source == s] for s in ("explorer", "learner")}
    assert len(by_source["explorer"]) == min(per_source, G_EXPLORER * len(PROMPTS))
    assert len(by_source["learner"]) == min(per_source, G_LEARNER * len(PROMPTS))


def test_write_replaces_the_step_file_whole_and_survives_a_failed_write(tmp_path, tokenizer) -> None:
    experience, _ = make_experience(tokenizer)
    path = rollout_sample_path(tmp_path / "samples", 3)
    assert path.name == "step_000003.jsonl"
    first = rollout_sample_rows(experience, tokenizer, 3, per_source=2)
    write_sample_rows(path, first)
    assert [json.loads(line) for line in path.read_text().splitlines()] == first
    # A write that fails half-way (a row JSON cannot hold) leaves the previous file as it was.
    with pytest.raises(TypeError):
        write_sample_rows(path, [first[0], {"bad": object()}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == first
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_000003.jsonl"]  # no temporary left
    # The step again (a resumed run repeats it): its file holds the new rows only, once.
    again = rollout_sample_rows(experience, tokenizer, 3, per_source=1)
    write_sample_rows(path, again)
    assert [json.loads(line) for line in path.read_text().splitlines()] == again


def test_eval_rows_show_the_first_sample_of_the_first_problems(tmp_path, tokenizer) -> None:
    data = tmp_path / "eval.jsonl"
    rows = [
        {
            "data_source": "synthetic_arith",
            "prompt": [{"role": "user", "content": p}],
            "reward_model": {"ground_truth": str(i)},
        }
        for i, p in enumerate(PROMPTS)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = load_prompt_dataset([str(data)], tokenizer, DataConfig(template="raw", shuffle=False))
    results = [
        ProblemResult(
            i, "synthetic_arith", [f"Answer: {i}", f"Answer: {i + 1}"], [str(i), str(i + 1)], [True, False]
        )
        for i in range(len(PROMPTS))
    ]
    out = eval_sample_rows(results, dataset, tokenizer, step=4, problems=2)
    assert [(r["problem"], r["prompt"], r["response"], r["pred"], r["correct"]) for r in out] == [
        (0, PROMPTS[0], "Answer: 0", "0", True),
        (1, PROMPTS[1], "Answer: 1", "1", True),
    ]
    assert {r["ground_truth"] for r in out} == {"0", "1"} and {r["source"] for r in out} == {"eval"}
    assert len(eval_sample_rows(results, dataset, tokenizer, step=4, problems=10)) == len(PROMPTS)
    assert eval_sample_path(tmp_path, 4).name == "eval_step_000004.jsonl"


def test_dump_samples_config() -> None:
    assert LoggingConfig().dump_samples == 4
    with pytest.raises(ValueError, match="dump_samples"):
        LoggingConfig(dump_samples=-1)
    with pytest.raises(ConfigError, match="dump_samples"):
        load_config("yaml/demo-cpu.yaml", ["logging.dump_samples=-2"])
    assert load_config("yaml/demo-cpu.yaml", ["logging.dump_samples=0"]).logging.dump_samples == 0


def test_in_run_evaluation_defaults_to_the_eval_protocol_of_s2l_eval() -> None:
    """`eval.sampling` is the protocol, not the learner's training sampling; and `s2l eval`'s option
    defaults are the same numbers (they live in eval/cli.py's parser: this keeps the two equal)."""
    from megatron_s2l.eval.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sampling = EvalConfig().sampling
    got = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "presence_penalty": sampling.presence_penalty,
        "max_new_tokens": sampling.max_new_tokens,
    }
    assert got == {name: parser.get_default(name) for name in got}
    assert (parser.get_default("n"), parser.get_default("template")) == (
        protocol.SAMPLES_PER_PROBLEM,
        protocol.TEMPLATE,
    )
    assert EvalConfig().samples_per_prompt == protocol.SAMPLES_PER_PROBLEM
    cfg = load_config("yaml/qwen3-8b-s2l.yaml")
    assert cfg.eval.sampling.temperature == 0.7 != cfg.rollout.learner_sampling.temperature


def test_eval_response_cap_follows_the_context() -> None:
    sampling = protocol.no_think_sampling()
    assert protocol.cap_to_context(sampling, context=32768, longest_prompt=600).max_new_tokens == 32168
    assert protocol.cap_to_context(sampling, context=40960, longest_prompt=100).max_new_tokens == 38912
    assert protocol.cap_to_context(sampling, context=256, longest_prompt=255).max_new_tokens == 1
    with pytest.raises(ValueError, match="fills the context"):
        protocol.cap_to_context(sampling, context=256, longest_prompt=256)
    assert sampling.max_new_tokens == 38912  # not changed in place


def test_config_reference_shows_a_section_factory_s_defaults() -> None:
    """docs/config.md lists the defaults a run gets: a section built by its own factory (the
    explorer's and the evaluation's sampling) is not shown with its class's defaults."""
    from megatron_s2l.config import S2LConfig
    from megatron_s2l.configio import reference_markdown

    rows = {
        row.split("|")[1].strip(" `"): row.split("|")[3].strip(" `") for row in reference_markdown(S2LConfig)
    }
    assert rows["eval.sampling.temperature"] == "0.7" and rows["eval.sampling.presence_penalty"] == "1.5"
    assert rows["rollout.explorer_sampling.top_p"] == "0.95"
    assert rows["rollout.learner_sampling.temperature"] == "1.0"
