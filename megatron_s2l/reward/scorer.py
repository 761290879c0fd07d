"""Scoring a batch of responses in worker processes, each response under a time and a memory limit.

    with RewardScorer(RewardConfig(timeout_s=10.0, num_workers=2), hidden_env=["MY_API_KEY"]) as scorer:
        results = scorer.score([("math_dapo", response, "42"), ...])

A small pool of our own rather than concurrent.futures.ProcessPoolExecutor: a response over its limit
must cost only its own worker, and ProcessPoolExecutor can neither tell when an item started running
(it queues items ahead) nor kill one worker (before Python 3.14), so a stuck sympy call would hold
a worker for ever or break the whole pool. Here each worker holds one item at a time on its own
socket; one that overruns is killed with SIGKILL (a huge big-integer power holds the GIL, so no
signal handler inside the worker would run) and replaced by a fresh process.

Model output is hostile input, so nothing a response does aborts the run: a response that runs past
`timeout_s` (timed_out), makes its reward function raise, or kills its worker (past
`max_memory_mb`, a crash in native code, the OOM killer) scores as a wrong answer (failed) and only
its worker is replaced. A worker found dead while idle is replaced before it gets an item. A
replacement that does not start within `startup_timeout_s` is killed and started again; when no
worker at all has started within it, the items still waiting score as failures and the next batch
tries again. Only a worker that exits while starting before any worker of the pool ever started (a
broken installation, not model output) raises.

Workers are fresh interpreters (`subprocess`, not `fork`: the trainer holds torch threads and a gloo
process group, which a fork would copy in a broken state; not multiprocessing's "spawn" either,
which re-imports the parent's `__main__`, torch included, and hands the child the whole environment).
What each worker does to fence itself in is in worker.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import cast

from megatron_s2l.reward.sources import check_data_source, wrong_answer_score
from megatron_s2l.reward.worker import READY

logger = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 5.0
_MAX_ERROR_CHARS = 4000
"""How much of a reward function's traceback is logged (its end, where the error is)."""
_RESTART_DELAY_S = 1.0
"""A slot whose process could not be started (fork failed) tries again after this."""
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_WORKER_SCRIPT = Path(__file__).with_name("worker.py")
SECRET_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
"""Environment variables whose names match this are not passed to reward workers."""
# NOTE: PR_SET_PDEATHSIG fires when the *thread* that started the child exits, not the process: a
# replacement started from a short-lived thread would be killed with it. So every worker is started
# by this one thread, which lives as long as the process.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2l-reward-spawner")


@dataclass(kw_only=True, slots=True)
class RewardConfig:
    timeout_s: float = 10.0
    """Wall-clock limit for scoring one response; one over it scores as a wrong answer (timed_out)."""
    num_workers: int = 2
    """Scoring processes; a timed-out or failed one is killed and replaced."""
    max_memory_mb: int = 4096
    """Address-space limit of each worker (RLIMIT_AS), in MiB; a worker takes about 60 after its
    imports. Past it an allocation fails and the response scores as a wrong answer. Budget
    num_workers x max_memory_mb of host memory for scoring."""
    startup_timeout_s: float = 120.0
    """A worker not started within this (imports of sympy and math-verify) is killed and started
    again; when no worker has started within it, the responses still waiting score as wrong
    answers (failed)."""
    explorer_source: str | None = None
    """Score explorer samples with the reward function of this data source instead of their prompt's
    (learner samples keep their prompt's). `s2l_released_lenient` is the 1 / 0 check the S2L-PO
    authors' released scripts scored their offline explorer samples with (released_lenient.py).
    NOTE: in `schedule.mode: combined` a group mixes both sources' scores, so pick a function on the
    same scale as the prompts' (DAPO's is +1 / -1, the lenient one 1 / 0); with pure groups
    (`alternating`) the scale cancels in the advantage. None: every sample by its prompt's source."""
    explorer_full_response: bool = False
    """Score each explorer sample on its whole response, before it is cut to
    `rollout.explorer_train_max_new_tokens` for training, as the released runs did (they generated up
    to 30,000 tokens, trained on the first 4,096 and kept the full response's reward). Off: the reward
    is that of the text trained on."""

    def __post_init__(self) -> None:
        for name in ("timeout_s", "startup_timeout_s"):
            if not getattr(self, name) > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.max_memory_mb < 256:
            raise ValueError(
                f"max_memory_mb must be >= 256 (a worker's imports need ~60), got {self.max_memory_mb}"
            )
        if self.explorer_source is not None:
            try:
                check_data_source(self.explorer_source)
            except ValueError as error:
                raise ValueError(f"explorer_source: {error}") from None


@dataclass(frozen=True, slots=True)
class RewardResult:
    score: float
    acc: bool
    pred: str
    timed_out: bool = False
    """True when scoring ran past the time limit: score is then the wrong-answer score, pred ""."""
    failed: bool = False
    """True when scoring failed (the reward function raised; the worker died: killed, a crash in
    native code, the OOM killer; or no worker started in time): the wrong-answer score, pred "";
    a worker that died is replaced."""


def worker_environment(hidden: Collection[str] = ()) -> dict[str, str]:
    """This process's environment less secrets (the names in `hidden` and every name matching
    SECRET_NAME_RE), with this package importable."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in hidden and not SECRET_NAME_RE.search(name)
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
    return env


class _Worker:
    """One scoring process, the parent's end of its socket, and the item it is working on."""

    def __init__(self, max_memory_mb: int, env: dict[str, str], startup_timeout_s: float) -> None:
        parent_sock, child_sock = socket.socketpair()
        with child_sock:
            argv = [
                sys.executable,
                "-P",
                str(_WORKER_SCRIPT),
                str(child_sock.fileno()),
                str(os.getpid()),
                str(max_memory_mb),
            ]
            try:
                self.process = _SPAWNER.submit(
                    subprocess.Popen,
                    argv,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    pass_fds=(child_sock.fileno(),),
                    # Its own session: a Ctrl-C in the terminal is the trainer's to handle.
                    start_new_session=True,
                ).result()
            except BaseException:
                parent_sock.close()
                raise
        self.conn = Connection(parent_sock.detach())
        self.ready = False
        self.index: int | None = None
        """Index of the item in flight; None when idle."""
        self.deadline = time.monotonic() + startup_timeout_s

    @property
    def pid(self) -> int:
        return self.process.pid

    def assign(self, index: int, item: tuple[str, str, str], timeout_s: float) -> bool:
        """Send the item; False when the worker is gone (it exited while idle)."""
        if self.process.poll() is not None:
            return False
        try:
            self.conn.send((index, item))
        except OSError:
            return False
        self.index = index
        self.deadline = time.monotonic() + timeout_s
        return True

    def kill(self) -> None:
        self.process.kill()  # a no-op when it has already exited
        self.process.wait()
        self.conn.close()

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it has not within a few seconds."""
        with contextlib.suppress(OSError):  # it has already died
            self.conn.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=_STOP_TIMEOUT_S)
        self.kill()


class RewardScorer:
    """Scores (data_source, solution, ground_truth) items in `cfg.num_workers` worker processes.

    `hidden_env`: names of environment variables the workers must not see beyond those matching
    SECRET_NAME_RE (e.g. the engines' `api_key_env`). Not thread-safe: one `score` call at a time.
    Use as a context manager so the workers are stopped.
    """

    def __init__(self, cfg: RewardConfig, hidden_env: Collection[str] = ()) -> None:
        self.cfg = cfg
        self._env = worker_environment(hidden_env)
        self._ever_ready = False
        """Whether a worker of this pool ever started: until one has, a worker that exits while
        starting means a broken installation (raise), afterwards a transient failure (replace)."""
        self._workers: list[_Worker | None] = []
        self._restart_at: list[float] = []
        self._closed = False
        for _ in range(cfg.num_workers):
            self._workers.append(None)
            self._restart_at.append(0.0)
            self._start(len(self._workers) - 1)

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._workers:
            if worker is not None:
                worker.stop()
        self._workers, self._closed = [], True

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (started or starting)."""
        return [worker.pid for worker in self._workers if worker is not None]

    def score(self, items: Sequence[tuple[str, str, str]]) -> list[RewardResult]:
        """Results in item order.

        An item over the time limit gets its data source's wrong-answer score, acc False, pred "" and
        timed_out True; one whose scoring failed (see the module docstring), the same with failed
        True. Raises ValueError for an unknown data source (before scoring anything) and
        RuntimeError when the first workers of the pool exit while starting.
        """
        if self._closed:
            raise RuntimeError("RewardScorer is closed")
        wrong_scores = [wrong_answer_score(data_source) for data_source, _, _ in items]
        results: list[RewardResult | None] = [None] * len(items)
        todo = deque(range(len(items)))

        def fail(index: int) -> None:
            results[index] = RewardResult(score=wrong_scores[index], acc=False, pred="", failed=True)

        try:
            stalled_at = time.monotonic() + self.cfg.startup_timeout_s
            while todo or self._busy():
                self._restart_due()
                self._assign(todo, items)
                now = time.monotonic()
                if any(worker.ready for worker in self._live()):
                    stalled_at = now + self.cfg.startup_timeout_s
                elif todo and now >= stalled_at:
                    logger.warning(
                        "no reward worker started within %.0f s (reward.startup_timeout_s): %d responses "
                        "scored as wrong (failed); workers are started again",
                        self.cfg.startup_timeout_s,
                        len(todo),
                    )
                    while todo:
                        fail(todo.popleft())
                    continue
                waiting = [worker for worker in self._live() if not worker.ready or worker.index is not None]
                wake_at = [worker.deadline for worker in waiting] + [stalled_at] * bool(todo)
                wake_at += [
                    at for worker, at in zip(self._workers, self._restart_at, strict=True) if worker is None
                ]
                answered = wait(
                    [worker.conn for worker in waiting], max(0.0, min(wake_at) - time.monotonic())
                )
                for worker in waiting:
                    if worker.conn in answered:
                        self._receive(worker, items, results, fail)
                    elif time.monotonic() > worker.deadline:
                        self._expire(worker, items, results, wrong_scores)
        except BaseException:
            # Leave no worker busy with an item of this batch: the next batch would read its answer.
            self._replace(lambda worker: worker.index is not None)
            raise
        return cast(list[RewardResult], results)  # the loop ends once every item has a result

    def _live(self) -> list[_Worker]:
        return [worker for worker in self._workers if worker is not None]

    def _busy(self) -> bool:
        return any(worker.index is not None for worker in self._live())

    def _assign(self, todo: deque[int], items: Sequence[tuple[str, str, str]]) -> None:
        """Give waiting items to idle workers; replace any found dead (the item stays waiting)."""
        for worker in self._live():
            if not (todo and worker.ready and worker.index is None):
                continue
            index = todo.popleft()
            if not worker.assign(index, items[index], self.cfg.timeout_s):
                todo.appendleft(index)
                logger.warning("reward worker %d exited while idle: replaced", worker.pid)
                self._replace(lambda candidate, dead=worker: candidate is dead)

    def _receive(
        self,
        worker: _Worker,
        items: Sequence[tuple[str, str, str]],
        results: list[RewardResult | None],
        fail: Callable[[int], None],
    ) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            self._lost(worker, items, fail)
            return
        if message == READY:
            worker.ready = self._ever_ready = True
            return
        index, result, error = message
        worker.index = None
        if error is not None:
            logger.warning(
                "reward function failed on item %d (data source %r): scored as wrong (failed):\n%s",
                index,
                items[index][0],
                error[-_MAX_ERROR_CHARS:],
            )
            fail(index)
            return
        results[index] = RewardResult(
            score=float(result["score"]), acc=bool(result["acc"]), pred=str(result["pred"])
        )

    def _lost(
        self, worker: _Worker, items: Sequence[tuple[str, str, str]], fail: Callable[[int], None]
    ) -> None:
        """The worker's socket closed: it died, with its item (failed) or between items."""
        index = worker.index
        if index is not None:
            logger.warning(
                "reward worker %d died while scoring item %d (data source %r): scored as wrong (failed), "
                "worker replaced",
                worker.pid,
                index,
                items[index][0],
            )
            fail(index)
        elif not self._ever_ready:  # not item-specific (e.g. an import error): a fresh worker would too
            raise RuntimeError(f"reward worker (pid {worker.pid}) exited while starting; see its stderr")
        else:
            logger.warning("reward worker %d exited while idle or starting: replaced", worker.pid)
        self._replace(lambda candidate: candidate is worker)

    def _expire(
        self,
        worker: _Worker,
        items: Sequence[tuple[str, str, str]],
        results: list[RewardResult | None],
        wrong_scores: list[float],
    ) -> None:
        index = worker.index
        if index is None:
            logger.warning(
                "reward worker %d did not start within %.0f s (reward.startup_timeout_s): started again",
                worker.pid,
                self.cfg.startup_timeout_s,
            )
        else:
            logger.warning(
                "reward item %d (data source %r) ran past %.1f s: scored as wrong, worker %d killed",
                index,
                items[index][0],
                self.cfg.timeout_s,
                worker.pid,
            )
            results[index] = RewardResult(score=wrong_scores[index], acc=False, pred="", timed_out=True)
        self._replace(lambda candidate: candidate is worker)

    def _replace(self, should_replace: Callable[[_Worker], bool]) -> None:
        """Kill the workers `should_replace` picks and start fresh ones in their place."""
        for slot, worker in enumerate(self._workers):
            if worker is not None and should_replace(worker):
                worker.kill()
                self._workers[slot] = None
                self._start(slot)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            if worker is None and now >= self._restart_at[slot]:
                self._start(slot)

    def _start(self, slot: int) -> None:
        """Start a worker in `slot`; when the process cannot be created, try again a little later."""
        try:
            self._workers[slot] = _Worker(self.cfg.max_memory_mb, self._env, self.cfg.startup_timeout_s)
        except OSError as error:
            logger.warning(
                "could not start a reward worker (%s): trying again in %.0f s", error, _RESTART_DELAY_S
            )
            self._restart_at[slot] = time.monotonic() + _RESTART_DELAY_S
