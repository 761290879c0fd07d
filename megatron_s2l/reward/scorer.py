"""Scoring a batch of responses in worker processes, each response under a time limit.

    with RewardScorer(RewardConfig(timeout_s=10.0, num_workers=2)) as scorer:
        results = scorer.score([("math_dapo", response, "42"), ...])

A small pool of our own rather than concurrent.futures.ProcessPoolExecutor: a response over its limit
must cost only its own worker, and ProcessPoolExecutor can neither tell when an item started running
(it queues items ahead) nor kill one worker (before Python 3.14), so a stuck sympy call would hold
a worker for ever or break the whole pool. Here each worker holds one item at a time on its own
pipe; one that overruns is killed with SIGKILL (a huge big-integer power holds the GIL, so no signal
handler inside the worker would run) and replaced by a fresh process.

Workers are started with "spawn": the trainer holds torch threads and a gloo process group, which a
fork would copy in a broken state.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import cast

from megatron_s2l.reward.sources import compute_score, wrong_answer_score

logger = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("spawn")
_STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports sympy and math-verify; slow on a busy 2-core box
_STOP_TIMEOUT_S = 5.0
_READY = "ready"


@dataclass(kw_only=True, slots=True)
class RewardConfig:
    timeout_s: float = 10.0
    """Wall-clock limit for scoring one response; one over it scores as a wrong answer (timed_out)."""
    num_workers: int = 2
    """Scoring processes; a timed-out one is killed and replaced."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:  # also rejects NaN
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")


@dataclass(frozen=True, slots=True)
class RewardResult:
    score: float
    acc: bool
    pred: str
    timed_out: bool = False
    """True when scoring ran past the time limit: score is then the wrong-answer score, pred ""."""
    crashed: bool = False
    """True when the worker died while scoring it (killed, out of memory, a crash in native code):
    the wrong-answer score, pred "", and a fresh worker takes its place."""


def _serve(conn: Connection) -> None:
    """Worker loop: score (index, item) messages until None arrives or the parent goes away."""
    # The parent enforces the time limit; math-verify would otherwise warn that its own one is off.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send(_READY)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent died
            return
        if task is None:
            return
        index, (data_source, solution, ground_truth) = task
        try:
            conn.send((index, compute_score(data_source, solution, ground_truth), None))
        except Exception:
            conn.send((index, None, traceback.format_exc()))


class _Worker:
    """One scoring process, the parent's end of its pipe, and the item it is working on."""

    def __init__(self) -> None:
        self.conn, child_conn = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_serve, args=(child_conn,), name="reward-worker", daemon=True)
        self.process.start()
        child_conn.close()
        self.ready = False
        self.index: int | None = None
        """Index of the item in flight; None when idle."""
        self.deadline = time.monotonic() + _STARTUP_TIMEOUT_S

    def assign(self, index: int, item: tuple[str, str, str], timeout_s: float) -> None:
        self.conn.send((index, item))
        self.index = index
        self.deadline = time.monotonic() + timeout_s

    def kill(self) -> None:
        self.process.kill()  # a no-op when it has already exited
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it has not within a few seconds."""
        with contextlib.suppress(OSError):  # it has already died
            self.conn.send(None)
        self.process.join(timeout=_STOP_TIMEOUT_S)
        self.kill()


class RewardScorer:
    """Scores (data_source, solution, ground_truth) items in `cfg.num_workers` spawned processes.

    Not thread-safe: one `score` call at a time. Use as a context manager so the workers are stopped.
    """

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self._workers = [_Worker() for _ in range(cfg.num_workers)]

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def score(self, items: Sequence[tuple[str, str, str]]) -> list[RewardResult]:
        """Results in item order.

        An item over the time limit gets its data source's wrong-answer score, acc False, pred "" and
        timed_out True; one whose worker dies while scoring it, the same with crashed True (and a
        fresh worker). Raises ValueError for an unknown data source (before scoring anything) and
        RuntimeError when a reward function raises or a worker dies while starting.
        """
        if not self._workers:
            raise RuntimeError("RewardScorer is closed")
        wrong_scores = [wrong_answer_score(data_source) for data_source, _, _ in items]
        results: list[RewardResult | None] = [None] * len(items)
        todo = deque(range(len(items)))
        try:
            while todo or any(worker.index is not None for worker in self._workers):
                for worker in self._workers:
                    if todo and worker.ready and worker.index is None:
                        index = todo.popleft()
                        worker.assign(index, items[index], self.cfg.timeout_s)
                waiting = [worker for worker in self._workers if not worker.ready or worker.index is not None]
                wait_s = max(0.0, min(worker.deadline for worker in waiting) - time.monotonic())
                answered = wait([worker.conn for worker in waiting], wait_s)
                for worker in waiting:
                    if worker.conn in answered:
                        self._receive(worker, items, results, wrong_scores)
                    elif time.monotonic() > worker.deadline:
                        self._expire(worker, items, results, wrong_scores)
        except BaseException:
            # Leave no worker busy with an item of this batch: the next batch would read its answer.
            self._replace(lambda worker: worker.index is not None or not worker.process.is_alive())
            raise
        return cast(list[RewardResult], results)  # the loop ends once every item has a result

    def _receive(
        self,
        worker: _Worker,
        items: Sequence[tuple[str, str, str]],
        results: list[RewardResult | None],
        wrong_scores: list[float],
    ) -> None:
        try:
            message = worker.conn.recv()
        except EOFError:
            index = worker.index
            if index is None:  # not item-specific (e.g. an import error): a fresh worker would too
                raise RuntimeError(
                    f"reward worker (pid {worker.process.pid}) exited while starting; see its stderr"
                ) from None
            logger.warning(
                "reward worker %d died while scoring item %d (data source %r): scored as wrong, "
                "worker replaced",
                worker.process.pid,
                index,
                items[index][0],
            )
            results[index] = RewardResult(score=wrong_scores[index], acc=False, pred="", crashed=True)
            self._replace(lambda candidate: candidate is worker)
            return
        if message == _READY:
            worker.ready = True
            return
        index, result, error = message
        worker.index = None
        if error is not None:
            source = items[index][0]
            raise RuntimeError(f"reward function failed on item {index} (data source {source!r}):\n{error}")
        results[index] = RewardResult(
            score=float(result["score"]), acc=bool(result["acc"]), pred=str(result["pred"])
        )

    def _expire(
        self,
        worker: _Worker,
        items: Sequence[tuple[str, str, str]],
        results: list[RewardResult | None],
        wrong_scores: list[float],
    ) -> None:
        index = worker.index
        if index is None:
            pid = worker.process.pid
            raise RuntimeError(f"reward worker (pid {pid}) did not start within {_STARTUP_TIMEOUT_S} s")
        logger.warning(
            "reward item %d (data source %r) ran past %.1f s: scored as wrong, worker %d killed",
            index,
            items[index][0],
            self.cfg.timeout_s,
            worker.process.pid,
        )
        results[index] = RewardResult(score=wrong_scores[index], acc=False, pred="", timed_out=True)
        self._replace(lambda candidate: candidate is worker)

    def _replace(self, should_replace: Callable[[_Worker], bool]) -> None:
        """Kill the workers `should_replace` picks and start fresh ones in their place."""
        for slot, worker in enumerate(self._workers):
            if should_replace(worker):
                worker.kill()
                self._workers[slot] = _Worker()
