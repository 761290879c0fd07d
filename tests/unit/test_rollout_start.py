"""Servers and pools start side by side (`rollout.pool.start_side_by_side`): every start runs at
once, results come back in order, and a failure is raised only after every other start returned."""

import threading
import time

import pytest

from megatron_s2l.rollout.pool import start_side_by_side


@pytest.mark.parametrize("count", [2, 3, 8])
def test_every_start_runs_at_once_and_results_keep_their_order(count: int) -> None:
    # Each start waits until all have begun: run one after another, the first would time out.
    everyone_started = threading.Barrier(count, timeout=10)

    def start(i: int) -> int:
        everyone_started.wait()
        return i * i

    for _ in range(2):  # twice in a row
        assert start_side_by_side([lambda i=i: start(i) for i in range(count)]) == [
            i * i for i in range(count)
        ]


def test_a_failure_is_raised_after_the_other_starts_returned() -> None:
    finished: list[int] = []

    def start(i: int) -> int:
        if i == 1:
            raise RuntimeError("server 1 did not start")
        time.sleep(0.2)  # the others are still starting when server 1 fails
        finished.append(i)
        return i

    with pytest.raises(RuntimeError, match="server 1 did not start"):
        start_side_by_side([lambda i=i: start(i) for i in range(4)])
    assert sorted(finished) == [0, 2, 3]


def test_one_or_no_start_runs_in_the_calling_thread() -> None:
    assert start_side_by_side([threading.current_thread]) == [threading.current_thread()]
    assert start_side_by_side([]) == []
