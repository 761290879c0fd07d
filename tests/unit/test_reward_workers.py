"""Hostile model output against the reward workers: each case costs only its own item (scored as
wrong), the next item is scored right, a worker stays under its memory limit, sees no secrets and
dies with its parent. Real worker processes, real sympy and math-verify. CPU only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from megatron_s2l.reward import RewardConfig, RewardResult, RewardScorer

NUM_GPUS = 0

# 42 characters that fit DAPO's answer tail and reach sympy.zeros through latex2sympy: a 20000 x 20000
# matrix, gigabytes (3.1 GB resident after 11 s on this CPU, then more) without a memory limit.
ZEROS_BOMB = "Answer: $\\operatorname{zeros}(20000,20000)$"
# sympy evaluates this tower exactly when math-verify compares it with a number: it never finishes.
POWER_TOWER = "Answer: $9^{9^{9^9}}$"
LIMIT_MB = 512


def _vm_peak_mb(pid: int) -> int | None:
    """The process's peak address space (VmPeak), None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(
        (int(line.split()[1]) // 1024 for line in status.splitlines() if line.startswith("VmPeak:")), None
    )


@contextmanager
def _peak_memory_by_worker(scorer: RewardScorer) -> Iterator[dict[int, int]]:
    """VmPeak of every worker the scorer runs meanwhile, read every 20 ms until it dies (the limit
    caps the address space, so a reading short of a dying worker's last one cannot hide a breach)."""
    peaks: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in scorer.worker_pids():
                if (peak := _vm_peak_mb(pid)) is not None:
                    peaks[pid] = max(peaks.get(pid, 0), peak)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        done.set()
        sampler.join()


def _gone(pid: int) -> bool:
    """Exited (a zombie nobody has reaped yet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_hostile_answers_cost_only_their_own_item() -> None:
    """More bombs than workers, twice: the zeros bomb stops at the memory limit (math-verify finds no
    answer: wrong), the power tower at the time limit, a reward function that raises (a ground truth
    that is not a string) fails its item; the ordinary items around them are scored right, no
    worker's address space passes the limit, and the scorer keeps working."""
    cfg = RewardConfig(timeout_s=4.0, num_workers=2, max_memory_mb=LIMIT_MB, startup_timeout_s=60.0)
    bomb = RewardResult(score=-1.0, acc=False, pred="\\operatorname{zeros}(20000,20000)")
    with RewardScorer(cfg) as scorer:
        assert scorer.score([("math_dapo", "Answer: 3", "3")]) == [
            RewardResult(score=1.0, acc=True, pred="3")
        ]
        for _ in range(2):
            items = [
                ("math_dapo", ZEROS_BOMB, "5"),
                ("math_dapo", "Answer: 2", "2"),
                ("math_dapo", ZEROS_BOMB, "5"),
                ("math_dapo", POWER_TOWER, "5"),
                ("math_boxed", "\\boxed{4}", None),  # the reward function raises (TypeError)
                ("math_dapo", ZEROS_BOMB, "5"),
                ("commonsense_qa", "Answer: B", "B"),
            ]
            start = time.monotonic()
            with _peak_memory_by_worker(scorer) as peaks:
                results = scorer.score(items)
            assert time.monotonic() - start < 30
            assert results == [
                bomb,
                RewardResult(score=1.0, acc=True, pred="2"),
                bomb,
                RewardResult(score=-1.0, acc=False, pred="", timed_out=True),
                RewardResult(score=0.0, acc=False, pred="", failed=True),
                bomb,
                RewardResult(score=1.0, acc=True, pred="B"),
            ]
            assert max(peaks.values()) <= LIMIT_MB, peaks
            assert max(peaks.values()) > 50, peaks  # the sampler read live workers (~60 MB after imports)
            assert scorer.score([("math_dapo", "Answer: 8", "8")]) == [
                RewardResult(score=1.0, acc=True, pred="8")
            ]


def test_a_worker_killed_while_idle_is_replaced_before_it_gets_an_item() -> None:
    """One idle worker killed, then both: the batch is scored in full (the items were never sent to a
    dead worker, so none fails) and the dead workers are replaced."""
    cfg = RewardConfig(timeout_s=30.0, num_workers=2, startup_timeout_s=60.0)
    items = [("math_dapo", f"Answer: {n}", str(n)) for n in range(5)]
    right = [RewardResult(score=1.0, acc=True, pred=str(n)) for n in range(5)]
    with RewardScorer(cfg) as scorer:
        scorer.score(items[:1])  # the workers are up
        for victims in (1, 2):
            before = scorer.worker_pids()
            for pid in before[:victims]:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            assert scorer.score(items) == right
            after = scorer.worker_pids()
            assert len(after) == 2 and set(after) & set(before) == set(before[victims:])


def test_a_replacement_that_starts_slowly_costs_its_item_not_the_run() -> None:
    """The only worker times out on the tower; its replacement is stopped (SIGSTOP) before it starts.
    The next item waits `startup_timeout_s`, then scores as failed; the stopped replacement is killed
    and started again, and the item after that is scored right. Twice."""
    cfg = RewardConfig(timeout_s=1.0, num_workers=1, startup_timeout_s=5.0)
    with RewardScorer(cfg) as scorer:
        assert scorer.score([("math_dapo", "Answer: 3", "3")]) == [
            RewardResult(score=1.0, acc=True, pred="3")
        ]
        for _ in range(2):
            assert scorer.score([("math_dapo", POWER_TOWER, "5")])[0].timed_out
            (replacement,) = scorer.worker_pids()
            os.kill(replacement, signal.SIGSTOP)
            start = time.monotonic()
            assert scorer.score([("math_dapo", "Answer: 4", "4")]) == [
                RewardResult(score=-1.0, acc=False, pred="", failed=True)
            ]
            assert cfg.startup_timeout_s <= time.monotonic() - start < cfg.startup_timeout_s + 5
            assert _gone(replacement) and scorer.worker_pids() != [replacement]
            assert scorer.score([("math_dapo", "Answer: 6", "6")]) == [
                RewardResult(score=1.0, acc=True, pred="6")
            ]


def test_workers_see_no_secrets_and_volunteer_for_the_oom_killer(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "S2L_ENGINE_API_KEY": "k1",  # the launcher's default api_key_env
        "HF_TOKEN": "k2",
        "MY_DB_PASSWORD": "k3",
        "AWS_SECRET_ACCESS_KEY": "k4",
        "ENGINE_PASSPHRASE": "k5",  # no pattern matches: hidden by name (an engine's api_key_env)
    }
    for name, value in {**secrets, "S2L_TEST_VISIBLE": "yes"}.items():
        monkeypatch.setenv(name, value)
    cfg = RewardConfig(num_workers=2, max_memory_mb=LIMIT_MB)
    with RewardScorer(cfg, hidden_env=["ENGINE_PASSPHRASE"]) as scorer:
        assert scorer.score([("math_dapo", "Answer: 3", "3")]) == [
            RewardResult(score=1.0, acc=True, pred="3")
        ]
        for pid in scorer.worker_pids():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
            assert "S2L_TEST_VISIBLE" in names and "PATH" in names
            assert not names & set(secrets), names & set(secrets)
            assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "1000"
            limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
            address_space = next(line for line in limits if line.startswith("Max address space"))
            assert address_space.split()[3:5] == [str(LIMIT_MB * 2**20)] * 2


_TRAINER = """
import sys
from megatron_s2l.reward import RewardConfig, RewardScorer
scorer = RewardScorer(RewardConfig(timeout_s=600.0, num_workers=2))
scorer.score([("math_dapo", "Answer: 1", "1")])
print(*scorer.worker_pids(), flush=True)
scorer.score([("math_dapo", sys.argv[1], "5")])  # one worker stuck for 600 s, one idle
"""


def test_workers_die_with_a_killed_trainer() -> None:
    """SIGKILL to the process that owns the scorer, while one worker is stuck on the tower: both
    workers die with it (PR_SET_PDEATHSIG), twice."""
    for _ in range(2):
        trainer = subprocess.Popen(
            [sys.executable, "-c", _TRAINER, POWER_TOWER], stdout=subprocess.PIPE, text=True
        )
        assert trainer.stdout is not None
        workers = [int(pid) for pid in trainer.stdout.readline().split()]
        assert len(workers) == 2
        time.sleep(1.0)  # the tower is being scored by now
        assert not any(_gone(pid) for pid in workers)
        trainer.kill()
        trainer.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in workers if not _gone(pid)]
        for pid in survivors:  # leave nothing running when this fails
            os.kill(pid, signal.SIGKILL)
        assert not survivors


def test_failures_reach_the_step_metrics(tmp_path: Path) -> None:
    """`rollout/reward_failures` counts failed items through scoring, dynamic sampling and the
    driver's merge and trim of sampling rounds, as `rollout/reward_timeouts` counts time-outs."""
    from megatron_s2l.algo import AlgoConfig
    from megatron_s2l.data import PromptRecord
    from megatron_s2l.demo.tiny import make_tokenizer
    from megatron_s2l.rollout.records import RolloutGroup, RolloutRecord
    from megatron_s2l.run.driver import _concat, _trim
    from megatron_s2l.run.experience import keep_groups_with_signal, score_groups

    tokenizer = make_tokenizer(tmp_path, vocab_size=300)
    answers = {"a": ["Answer: 4", "Answer: 5"], "b": ["Answer: 4", "Answer: 4"]}
    groups = []
    for prompt_id, texts in answers.items():
        ids = [tokenizer(text).input_ids for text in texts]
        records = [
            RolloutRecord(prompt_id, i, "learner", [5, 6], r, [-0.5] * len(r), "stop", "3")
            for i, r in enumerate(ids)
        ]
        groups.append(RolloutGroup(prompt_id, records))
    messages = [{"role": "user", "content": "2+2"}]
    prompts = {
        "a": PromptRecord(0, "math_dapo", messages, "4", {}),
        "b": PromptRecord(1, "math_dapo", messages, None, {}),  # type: ignore[arg-type]  # raises in scoring
    }
    with RewardScorer(RewardConfig(num_workers=1)) as scorer:
        scored = score_groups(groups, prompts, tokenizer, scorer, AlgoConfig(), max_new_tokens=16)
    assert scored.rewards == [[1.0, -1.0], [-1.0, -1.0]]
    assert (scored.timed_out, scored.failed) == (0, 2)
    kept = keep_groups_with_signal(scored, "acc")
    assert [g.prompt_id for g in kept.groups] == ["a"] and kept.failed == 2
    assert _concat(kept, scored).failed == 4 and _trim(_concat(kept, scored), 1).failed == 4
