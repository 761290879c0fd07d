"""`rollout.overlap: 1` on the driver (run/driver.py), with fake engines that record what they were
asked to generate and from which weights: each step's collect starts the next step's rollout from
the weights the engines hold then; the next collect trains on it without generating again; its
learner samples are one step stale; a checkpoint taken with it in flight makes a resumed run draw
the same prompts and generate them afresh.

    .venv/bin/pytest tests/unit/test_driver_overlap.py -q
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from megatron_s2l.algo import StepRollout, step_rollouts
from megatron_s2l.config import S2LConfig
from megatron_s2l.data import PromptRecord, PromptSampler
from megatron_s2l.reward import RewardConfig
from megatron_s2l.reward.scorer import RewardResult
from megatron_s2l.rollout.loop_thread import LoopThread
from megatron_s2l.rollout.records import RolloutBatch, RolloutGroup, RolloutRecord
from megatron_s2l.run.driver import Driver, StaleSamplesError, weight_step

NUM_GPUS = 0
PROMPTS, GROUP, STEPS = 2, 2, 4


class FakeEngines:
    """The engines' loop in its thread; `weight_version` is what every engine holds now."""

    def __init__(self) -> None:
        self.loop = LoopThread("test-rollout")
        self.weight_version = "default"

    def submit(self, coroutine):
        return self.loop.submit(coroutine)

    def run(self, coroutine):
        return self.submit(coroutine).result()


class FakeSampler:
    """Learner samples only (t_mix 0), tagged with the engines' weights when generation starts;
    generation ends when the test releases it (`release`)."""

    explorer = None
    explorer_cache = None

    def __init__(self, engines: FakeEngines) -> None:
        self.engines = engines
        self.calls: list[tuple[int, list[str]]] = []
        self.release = threading.Event()
        self.release.set()

    async def sample(self, prompts, step, sampling_round=0, counts=None) -> RolloutBatch:
        version = self.engines.weight_version
        self.calls.append((step, [p.prompt_id for p in prompts]))
        await asyncio.to_thread(self.release.wait)
        groups = [
            RolloutGroup(
                p.prompt_id,
                [
                    RolloutRecord(
                        p.prompt_id, i, "learner", p.input_ids, [7, 8], [-0.1, -0.2], "stop", version
                    )
                    for i in range(GROUP)
                ],
            )
            for p in prompts
        ]
        return RolloutBatch(step=step, g_explorer=0, g_learner=GROUP, groups=groups)


class FakeTrainSet:
    def __init__(self, size: int) -> None:
        self.prompt_ids = [[1, 2 + i] for i in range(size)]
        self.records = [
            PromptRecord(i, "demo", [{"role": "user", "content": "q"}], "1", {}) for i in range(size)
        ]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]


class FakeTokenizer:
    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        return ["answer"] * len(ids)


class FakeScorer:
    cfg = RewardConfig()

    def score(self, items) -> list[RewardResult]:
        return [RewardResult(score=float(i % 2), acc=bool(i % 2), pred="") for i in range(len(items))]


def make_driver(engines: FakeEngines) -> Driver:
    """A Driver on the fakes (no servers, tokenizer or data files)."""
    cfg = S2LConfig()
    cfg.rollout.overlap = 1
    cfg.logging.dump_samples = 0
    cfg.schedule.prompts_per_step, cfg.schedule.group_size, cfg.schedule.steps = PROMPTS, GROUP, STEPS
    cfg.schedule.t_mix = 0
    driver = Driver.__new__(Driver)
    driver.cfg, driver.engines, driver.pad_id = cfg, engines, 0
    driver.train_set = FakeTrainSet(11)
    driver.prompts = PromptSampler(range(len(driver.train_set)), shuffle=True, seed=3)
    driver._batches = driver.prompts.batches(PROMPTS)
    driver.sampler, driver.tokenizer, driver.scorer = FakeSampler(engines), FakeTokenizer(), FakeScorer()
    driver._ahead = None
    return driver


def combined(driver: Driver, step: int) -> StepRollout:
    (rollout,) = step_rollouts(step, driver.cfg.schedule)
    return rollout


def started_steps(sampler: FakeSampler, count: int) -> list[int]:
    """The steps whose rollouts have started, once `count` have (a rollout submitted by `collect`
    starts on the engines' loop thread a moment later)."""
    deadline = time.monotonic() + 10
    while len(sampler.calls) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [step for step, _ in sampler.calls]


def prompt_ids(experience) -> list[str]:
    return sorted({r.prompt_id for r in experience.records})


@pytest.fixture
def engines():
    engines = FakeEngines()
    yield engines
    engines.loop.close()


def test_next_rollout_runs_during_the_step_from_the_weights_before_it(engines: FakeEngines) -> None:
    driver = make_driver(engines)
    sampler = driver.sampler
    _, metrics = driver.collect(combined(driver, 1))
    # Step 1 sampled now; step 2's rollout was started before collect returned, from "default".
    assert started_steps(sampler, 2) == [1, 2]
    assert metrics["rollout/staleness_max"] == 0.0 and metrics["rollout/staleness_mean"] == 0.0
    driver.wait_for_generation()  # the trainer waits, then syncs the engines to step 1's weights
    engines.weight_version = "1"
    sampler.release.clear()  # step 3's rollout (started by the next collect) stays in flight
    experience2, metrics = driver.collect(combined(driver, 2))
    assert started_steps(sampler, 3) == [1, 2, 3]  # step 2 was not generated again
    assert prompt_ids(experience2) == sorted(sampler.calls[1][1])
    assert {r.weight_version for r in experience2.records} == {"default"}
    assert metrics["rollout/staleness_max"] == 1.0 and metrics["rollout/staleness_mean"] == 1.0
    assert metrics["data/position"] == 2 * PROMPTS  # as without overlap: step 3's draw comes after
    assert driver.prompts.position == 3 * PROMPTS
    assert not driver._ahead.batch.done()
    sampler.release.set()
    assert driver.wait_for_generation() >= 0 and driver._ahead.batch.done()


def test_a_sample_two_steps_stale_is_an_error(engines: FakeEngines) -> None:
    """Steps 2 and 3 both start their rollouts from the base weights (no sync in between)."""
    driver = make_driver(engines)
    driver.collect(combined(driver, 1))
    driver.collect(combined(driver, 2))
    with pytest.raises(
        StaleSamplesError, match=r"step 3: learner samples from weight versions \['default'\]"
    ):
        driver.collect(combined(driver, 3))


def test_a_rollout_in_flight_is_dropped_by_a_checkpoint_and_drawn_again(engines: FakeEngines) -> None:
    driver = make_driver(engines)
    driver.collect(combined(driver, 1))
    driver.wait_for_generation()
    state = driver.state_dict()  # step 1's checkpoint: step 2's rollout is generated, not used
    in_flight_prompts = driver._ahead.indices
    engines.weight_version = "1"  # the resumed run syncs the engines to the checkpoint's weights

    resumed = make_driver(engines)
    resumed.load_state_dict(state)
    experience, metrics = resumed.collect(combined(resumed, 2))
    step, prompts = resumed.sampler.calls[0]
    assert step == 2 and prompts == [f"train-{i}" for i in in_flight_prompts]  # the same prompts
    assert prompt_ids(experience) == sorted(prompts)
    # Generated afresh from the checkpoint's weights: on-policy again.
    assert {r.weight_version for r in experience.records} == {"1"}
    assert metrics["rollout/staleness_max"] == 0.0
    # The resumed run goes on where the uninterrupted one would have: step 3 draws what it drew.
    driver.collect(combined(driver, 2))
    assert resumed._ahead.indices == driver._ahead.indices


def test_the_checkpoint_keeps_the_sampler_state_without_overlap_too(engines: FakeEngines) -> None:
    """Without overlap or an explorer nothing is started early: the checkpoint holds the sampler's
    current state, and collect samples each step when it runs."""
    driver = make_driver(engines)
    driver.cfg.rollout.overlap = 0
    driver.collect(combined(driver, 1))
    assert driver._ahead is None and driver.state_dict()["prompts"] == driver.prompts.state_dict()
    assert [step for step, _ in driver.sampler.calls] == [1]


def test_weight_step() -> None:
    assert [weight_step(v) for v in ("default", "0", "7", "7-explorer")] == [0, 0, 7, 6]
    for bad in ("", "x", "3-learner"):
        with pytest.raises(ValueError, match="names no training step"):
            weight_step(bad)
