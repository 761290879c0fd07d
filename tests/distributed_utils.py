"""Run a function on N gloo ranks (CPU processes) from a test, never hanging.

    from distributed_utils import run_ranks

    def _body(rank: int, world_size: int, x: float) -> float:   # module level: it is pickled
        t = torch.tensor([x + rank]); dist.all_reduce(t); return t.item()

    assert run_ranks(_body, 2, 1.0, timeout=60) == [3.0, 3.0]

Each rank runs `fn(rank, world_size, *args)` in a process of its own (forked from a forkserver)
with the default process group initialised (gloo, a free localhost port); `run_ranks` returns the
ranks' return values in rank order. A rank's exception is re-raised in the caller with the child's
traceback; ranks still running after `timeout` seconds are terminated and a TimeoutError raised.
"""

from __future__ import annotations

import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_s2l.net import find_free_port


def _rank_main(
    fn: Callable[..., Any], rank: int, world_size: int, port: int, args: tuple, results: mp.Queue
) -> None:
    try:
        # Two cores shared by many processes: one thread per rank avoids oversubscription stalls. (The
        # forkserver imported torch already, so the variable alone would not reach its thread pool.)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
        try:
            out = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        # Plain pickle copies tensors by value: the multiprocessing pickler would share their
        # storage through a file descriptor that dies with this process.
        results.put((rank, True, pickle.dumps(out)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def _forkserver():
    """Ranks forked from one server process per test worker that has imported torch and
    megatron-core already: each rank starts in a moment instead of re-importing them (several seconds
    each, several ranks per test). The server itself starts no threads and initialises nothing, so
    every rank still starts from a clean state, as under `spawn`."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["torch", "torch.distributed", "megatron.core", "megatron_s2l.learner.learner"]
    )
    return ctx


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0) -> list[Any]:
    """Run `fn(rank, world_size, *args)` on `world_size` gloo ranks; return the results by rank."""
    ctx = _forkserver()
    results: mp.Queue = ctx.Queue()
    port = find_free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(fn, rank, world_size, port, args, results), daemon=True)
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    outputs: dict[int, Any] = {}
    try:
        while len(outputs) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"ranks {sorted(set(range(world_size)) - outputs.keys())} still "
                    f"running after {timeout:.0f} s"
                )
            try:
                rank, ok, out = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead and results.empty():
                    raise RuntimeError(f"a rank died without a result (exit codes {dead})") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{out}")
            outputs[rank] = pickle.loads(out)
    finally:
        for proc in procs:
            proc.join(timeout=max(deadline - time.monotonic(), 5.0) if len(outputs) == world_size else 1.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
    return [outputs[rank] for rank in range(world_size)]
