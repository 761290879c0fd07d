"""Explorer samples as the S2L-PO authors' released runs made them (all off by default): responses
generated past the training limit and cut to it, rewarded on the whole text by a separate reward
function, and k of n cached samples drawn afresh at every use. CPU only."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_s2l.algo import AlgoConfig
from megatron_s2l.data import PromptRecord
from megatron_s2l.demo.tiny import make_tokenizer
from megatron_s2l.reward import RewardConfig, RewardScorer
from megatron_s2l.rollout.config import RolloutConfig
from megatron_s2l.rollout.explorer_cache import (
    ExplorerCache,
    ExplorerCacheExhaustedError,
    write_explorer_cache,
)
from megatron_s2l.rollout.records import RolloutGroup, RolloutRecord
from megatron_s2l.rollout.sampling_params import SamplingConfig
from megatron_s2l.run.experience import score_groups

NUM_GPUS = 0
PROMPT = [5, 6, 7]
# The explorer reasons at length and answers at the very end, past the training limit.
EXPLORER_TEXT = "we add 2 and 2 and then we check it again and again. so the answer is \\boxed{4}"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return make_tokenizer(Path(tmp_path_factory.mktemp("tok")), vocab_size=300)


def _record(tokenizer, source: str, index: int, text: str) -> RolloutRecord:
    ids = tokenizer(text).input_ids
    return RolloutRecord("a", index, source, PROMPT, ids, [-0.5] * len(ids), "stop", "0")


def _groups(tokenizer) -> list[RolloutGroup]:
    return [
        RolloutGroup(
            "a",
            [
                _record(tokenizer, "explorer", 0, EXPLORER_TEXT),
                _record(tokenizer, "learner", 0, "Answer: 4"),
                _record(tokenizer, "learner", 1, "Answer: 5"),
            ],
        )
    ]


PROMPTS = {"a": PromptRecord(0, "math_dapo", [{"role": "user", "content": "2+2"}], "4", {})}


@pytest.mark.parametrize("full_response", [True, False])
def test_explorer_samples_are_cut_for_training_and_scored_as_configured(
    tokenizer, full_response: bool
) -> None:
    """Cut to 8 tokens, the explorer's response loses its answer: with explorer_full_response the
    lenient check still sees `\\boxed{4}` in the whole text (reward 1), without it the cut text has
    none (reward 0, the lenient check's wrong score). Learner samples keep DAPO's +1 / -1 and are not
    cut; the groups returned (what is trained on) hold the cut response, finished by `length`."""
    cfg = RewardConfig(
        timeout_s=20.0,
        num_workers=1,
        explorer_source="s2l_released_lenient",
        explorer_full_response=full_response,
    )
    groups = _groups(tokenizer)
    whole = groups[0].records[0]
    assert len(whole.response_ids) > 8
    with RewardScorer(cfg) as scorer:
        scored = score_groups(
            groups,
            PROMPTS,
            tokenizer,
            scorer,
            AlgoConfig(),
            max_new_tokens=64,
            explorer_train_max_new_tokens=8,
        )
    explorer, learner_right, learner_wrong = scored.groups[0].records
    assert explorer.response_ids == whole.response_ids[:8] and explorer.logprobs == whole.logprobs[:8]
    assert explorer.finish_reason == "length"
    assert "boxed" not in tokenizer.decode(explorer.response_ids)
    assert learner_right == groups[0].records[1] and learner_wrong == groups[0].records[2]
    assert scored.rewards == [[1.0 if full_response else 0.0, 1.0, -1.0]]
    assert scored.correct == [[full_response, True, False]]


def test_without_the_released_options_explorer_samples_are_scored_like_any_other(tokenizer) -> None:
    """Defaults: no cut, the prompt's own reward (DAPO reads no `\\boxed{}`: -1)."""
    with RewardScorer(RewardConfig(timeout_s=20.0, num_workers=1)) as scorer:
        scored = score_groups(_groups(tokenizer), PROMPTS, tokenizer, scorer, AlgoConfig(), max_new_tokens=64)
    assert scored.groups[0].records == _groups(tokenizer)[0].records
    assert scored.rewards == [[-1.0, 1.0, -1.0]]


def test_explorer_budget_below_the_training_cut_is_a_config_error() -> None:
    ok = RolloutConfig(
        explorer_sampling=SamplingConfig(max_new_tokens=30_000), explorer_train_max_new_tokens=4096
    )
    assert ok.explorer_train_max_new_tokens == 4096
    with pytest.raises(
        ValueError, match=r"explorer_sampling.max_new_tokens \(1024\).*explorer_train_max_new_tokens"
    ):
        RolloutConfig(
            explorer_sampling=SamplingConfig(max_new_tokens=1024), explorer_train_max_new_tokens=4096
        )
    with pytest.raises(ValueError, match="explorer_train_max_new_tokens must be >= 1"):
        RolloutConfig(explorer_train_max_new_tokens=0)


def _cache_file(path: Path, per_prompt: dict[str, int]) -> Path:
    rows = [
        RolloutRecord(pid, i, "explorer", [1, 2], [100 * n + i, 9], [-0.1, -0.2], "stop", "0")
        for n, (pid, count) in enumerate(per_prompt.items())
        for i in range(count)
    ]
    write_explorer_cache(path, rows, append=False)
    return path


def test_per_use_draws_take_k_distinct_of_n_afresh_each_use_and_resume_exactly(tmp_path: Path) -> None:
    """Each use takes k distinct samples of the prompt's n (so a prompt can be used more often than
    n / k times, unlike `once`); uses differ; a cache rebuilt from a checkpoint's state draws what
    the uninterrupted one draws (twice in a row)."""
    path = _cache_file(tmp_path / "cache.jsonl", {"a": 6, "b": 6})
    cache = ExplorerCache(path, seed=7, draw="per-use", min_samples_per_prompt=4)
    uses = [sorted(r.response_ids[0] for r in cache.draw("a", [1, 2], 4)) for _ in range(5)]
    for use in uses:
        assert len(set(use)) == 4 and set(use) <= set(range(6))
    assert len({tuple(u) for u in uses}) > 1  # not the same four each time
    assert cache.remaining("a") == 6
    state = cache.state_dict()
    following = [sorted(r.response_ids[0] for r in cache.draw("a", [1, 2], 3)) for _ in range(3)]
    for _ in range(2):
        resumed = ExplorerCache(path, seed=7, draw="per-use", min_samples_per_prompt=4)
        resumed.load_state_dict(state)
        assert [
            sorted(r.response_ids[0] for r in resumed.draw("a", [1, 2], 3)) for _ in range(3)
        ] == following
    with pytest.raises(ExplorerCacheExhaustedError, match="has 6 samples of prompt 'a', 7 needed"):
        cache.draw("a", [1, 2], 7)
    with pytest.raises(ValueError, match="explorer_cache_draw is 'once' but the checkpoint drew 'per-use'"):
        ExplorerCache(path, seed=7).load_state_dict(state)


def test_a_cache_with_fewer_samples_than_a_group_is_refused_at_load(tmp_path: Path) -> None:
    path = _cache_file(tmp_path / "cache.jsonl", {"a": 8, "b": 3, "c": 8})
    config = RolloutConfig(explorer_cache_path=str(path), explorer_cache_draw="per-use")
    with pytest.raises(
        ValueError,
        match=r"rollout.explorer_cache_path: .* fewer than 8 samples .* 1 of 3 prompts \(prompt 'b': 3\)",
    ):
        ExplorerCache.for_run(config, seed=0, group_size=8)
    assert ExplorerCache.for_run(config, seed=0, group_size=3).remaining("b") == 3
    once = RolloutConfig(explorer_cache_path=str(path))  # `once` checks each draw instead
    assert ExplorerCache.for_run(once, seed=0, group_size=8).draw_mode == "once"


def test_pre_flight_names_a_missing_explorer_cache(tmp_path: Path) -> None:
    from megatron_s2l.config import load_config
    from megatron_s2l.run.preflight import check_paths

    root = Path(__file__).resolve().parents[2]
    missing = tmp_path / "nowhere.jsonl"
    cfg = load_config(root / "yaml/demo-cpu.yaml", [f"rollout.explorer_cache_path={missing}"])
    want = f"rollout.explorer_cache_path: {str(missing)!r} does not exist (fill it: "
    assert any(problem.startswith(want) for problem in check_paths(cfg))
    _cache_file(missing, {"a": 1})
    assert not any(p.startswith("rollout.explorer_cache_path") for p in check_paths(cfg))
    no_explorer = load_config(
        root / "yaml/demo-cpu.yaml", ["schedule.t_mix=0", f"rollout.explorer_cache_path={tmp_path}/x"]
    )
    assert not any(p.startswith("rollout.explorer_cache_path") for p in check_paths(no_explorer))
