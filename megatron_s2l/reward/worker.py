"""One reward worker process: scores the items its parent sends over a socket, fenced in so that
hostile model output can hurt nothing but this process.

    python -P megatron_s2l/reward/worker.py SOCKET_FD PARENT_PID MAX_MEMORY_MB

`RewardScorer` (scorer.py) starts it, as a script, with an environment without secrets. Before it
imports anything of ours (sympy and math-verify with it) it
1. asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so a worker stuck on `9^{9^{9^9}}`
   never outlives a killed trainer;
2. sets its own `oom_score_adj` to 1000, so under memory pressure the OOM killer takes a reward
   worker, never a learner rank or an engine;
3. caps its address space at MAX_MEMORY_MB (RLIMIT_AS): a 42-character answer such as
   `\\operatorname{zeros}(20000,20000)` reaches sympy, which would otherwise allocate gigabytes.
   Past the cap an allocation raises MemoryError (math-verify then finds no answer: wrong) or, in
   native code, kills the worker (its item then counts as a failure and a fresh worker starts).

Protocol: the worker sends READY, then answers each `(index, (data_source, solution, truth))` with
`(index, result, None)` or `(index, None, traceback)`; None or a closed socket ends it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import sys
import traceback
from multiprocessing.connection import Connection

READY = "ready"
OOM_SCORE_ADJ = 1000
"""The largest value: this process is the OOM killer's first choice."""

_PR_SET_PDEATHSIG = 1
# NOTE: resolved once here, not between fork and exec (a preexec_fn), where dlopen may deadlock on a
# lock another thread of the parent held at the fork.
_LIBC = ctypes.CDLL(None, use_errno=True)


def apply_limits(parent_pid: int, max_memory_mb: int) -> None:
    """Die with the parent, volunteer for the OOM killer, cap the address space."""
    if _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent_pid:  # the parent died before the prctl: no signal will come
        sys.exit(0)
    try:
        with open("/proc/self/oom_score_adj", "w") as oom_score_adj:  # raising it needs no privilege
            oom_score_adj.write(str(OOM_SCORE_ADJ))
    except OSError as error:  # a sandbox without it: the memory limit still holds
        print(f"reward worker {os.getpid()}: cannot set oom_score_adj: {error}", file=sys.stderr)
    limit = max_memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def serve(conn: Connection) -> None:
    """Score items until None arrives or the parent goes away; exit after a MemoryError, whose
    aftermath (a fragmented heap, half-built caches) a fresh process does not inherit."""
    # NOTE: imported here, once the limits are in place, so that they cover sympy's import too.
    from megatron_s2l.reward.sources import compute_score

    # The parent enforces the time limit; math-verify would otherwise warn that its own one is off.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send(READY)
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
        except MemoryError:
            conn.send((index, None, "MemoryError: past reward.max_memory_mb"))
            return
        except Exception:
            conn.send((index, None, traceback.format_exc()))


def main(argv: list[str]) -> None:
    socket_fd, parent_pid, max_memory_mb = (int(arg) for arg in argv)
    apply_limits(parent_pid, max_memory_mb)
    serve(Connection(socket_fd))


if __name__ == "__main__":
    main(sys.argv[1:])
