"""How one bucket of `(hf_name, tensor)` reaches the learner engines: disk, tensor or distributed.

- `disk`: each sender writes its buckets as safetensors files into one directory per version; the
  controller then asks every engine to `/update_weights_from_disk` from it. Needs a file system that
  the engines see; slowest, but has no other conditions.
- `tensor` (colocated engines only): the bucket is pickled with shared-memory storage
  (`torch.multiprocessing`, strategy `file_system`: the default strategy crashes SGLang's scheduler,
  DESIGN.md 3.2) and posted to `/update_weights_from_tensor`, one copy per engine TP rank.
- `distributed` (the default for disaggregated engines): the sender of a pipeline stage joins a
  process group with every engine rank (rank 0 = sender), declares the bucket's names, dtypes and
  shapes with `/update_weights_from_distributed`, then broadcasts the tensors in that order. NCCL for
  CUDA tensors, gloo for CPU ones.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from megatron_s2l.net import address_towards, find_free_port
from megatron_s2l.rollout.http import EngineEndpoint, EngineRequestError
from megatron_s2l.sync.buckets import Bucket


class Transport(ABC):
    """Moves buckets from one sender (the rank 0 of a pipeline stage) into the engines."""

    name: str
    needs_weight_update_window: bool = True
    """Whether the engine must be inside `/begin_weight_update` ... `/end_weight_update`."""

    @abstractmethod
    def send(self, bucket: Bucket, endpoints: list[EngineEndpoint], version: str) -> None:
        """Deliver `bucket` to every endpoint (blocking until each has loaded it)."""

    def apply(self, endpoints: list[EngineEndpoint], version: str) -> None:  # noqa: B027 (optional hook)
        """Controller only, after every sender's `send`: make the engines load what was sent."""

    def reset(self) -> None:  # noqa: B027 (optional hook)
        """Forget connection state (after a failure or a change of engines)."""

    def close(self) -> None:
        self.reset()


def _run_threads(calls: list[Callable[[], Any]]) -> list[BaseException | None]:
    """Run `calls` in threads and join them all; return each one's exception (or None)."""
    errors: list[BaseException | None] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            calls[index]()
        except BaseException as error:
            errors[index] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


class DiskTransport(Transport):
    name = "disk"
    needs_weight_update_window = False

    def __init__(self, directory: str | Path, stage: int, timeout_s: float) -> None:
        self.root, self.stage, self.timeout_s = Path(directory), stage, timeout_s

    def version_dir(self, version: str) -> Path:
        return self.root / f"weights-v{version}"

    def send(self, bucket: Bucket, endpoints: list[EngineEndpoint], version: str) -> None:
        from safetensors.torch import save_file

        target = self.version_dir(version)
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"stage{self.stage:02d}-bucket{bucket.index:05d}.safetensors"
        tensors = {name: tensor.cpu() for name, tensor in bucket.named_tensors}
        save_file(tensors, str(path.with_suffix(".tmp")))
        os.replace(path.with_suffix(".tmp"), path)  # the engine never sees a half-written file

    def apply(self, endpoints: list[EngineEndpoint], version: str) -> None:
        payload = {
            "model_path": str(self.version_dir(version)),
            "load_format": "safetensors",
            "flush_cache": True,
            "weight_version": version,
        }
        errors = _run_threads(
            [lambda e=e: e.post("/update_weights_from_disk", payload, self.timeout_s) for e in endpoints]
        )
        _raise_first(errors)
        for old in self.root.glob("weights-v*"):
            if old != self.version_dir(version):
                shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _isolated_from_daemons():
    """Spawn-safe moment for a daemon: fds 1 and 2 point at /dev/null and no other fd is inheritable.

    A daemon forked now inherits neither our stdout/stderr (which would keep a CI pipe or pytest's
    capture open) nor pipes such as multiprocessing's exit sentinel (which would make a parent's
    `Process.join()` wait for the daemon instead of for us). Marking fds non-inheritable only
    affects future exec'd children; this process keeps using them as before.
    """
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if int(name) > 2:
                os.set_inheritable(int(name), False)
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in [*saved, devnull]:
            os.close(fd)


class TensorTransport(Transport):
    name = "tensor"

    def __init__(self, timeout_s: float) -> None:
        import torch.multiprocessing as mp

        self.timeout_s = timeout_s
        mp.set_sharing_strategy("file_system")
        # NOTE: the first shared tensor starts torch's `torch_shm_manager` daemon, which inherits
        # every inheritable fd of this process and outlives it: start it here, isolated.
        with _isolated_from_daemons():
            torch.zeros(1).share_memory_()

    def send(self, bucket: Bucket, endpoints: list[EngineEndpoint], version: str) -> None:
        from sglang.srt.utils import MultiprocessingSerializer

        named_cpu = [(name, tensor.cpu()) for name, tensor in bucket.named_tensors]
        serialized = MultiprocessingSerializer.serialize(named_cpu, output_str=True)
        for endpoint in endpoints:
            payload = {
                "serialized_named_tensors": [serialized] * endpoint.tp,
                "flush_cache": False,
                "weight_version": version,
            }
            endpoint.post("/update_weights_from_tensor", payload, self.timeout_s)
        del named_cpu  # the engines have copied the shared storage by now


class DistributedTransport(Transport):
    name = "distributed"

    def __init__(self, *, stage: int, master_address: str, backend: str, timeout_s: float) -> None:
        self.stage, self.master_address, self.backend, self.timeout_s = (
            stage,
            master_address,
            backend,
            timeout_s,
        )
        self._group: dist.ProcessGroup | None = None
        self._group_name = ""
        self._members: tuple[str, ...] = ()
        self._endpoints: list[EngineEndpoint] = []

    def _backend_for(self, on_gpu: bool) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if on_gpu else "gloo"

    def connect(self, endpoints: list[EngineEndpoint]) -> None:
        """Create the broadcast group with `endpoints` now instead of at the first send (the learner's
        tensors are on the GPU when there is one)."""
        self._ensure_group(endpoints, self._backend_for(torch.cuda.is_available()))

    def _ensure_group(self, endpoints: list[EngineEndpoint], backend: str) -> None:
        members = tuple(e.url for e in endpoints)
        if self._group is not None and members == self._members:
            return
        self.reset()
        from sglang.srt.utils import init_custom_process_group

        # Unique per process and try: torch keeps the names of groups abandoned after a failure.
        group_name = f"s2l_weights_stage{self.stage}_{uuid.uuid4().hex[:12]}"
        master_address = self.master_address
        if master_address == "auto":  # every engine must reach it: the route to the first one
            master_address = address_towards(urlsplit(endpoints[0].url).hostname or "127.0.0.1")
        port = find_free_port(master_address)
        world_size = 1 + sum(e.tp for e in endpoints)
        offsets = [1 + sum(e.tp for e in endpoints[:i]) for i in range(len(endpoints))]
        group: list[dist.ProcessGroup] = []

        def join_as_sender() -> None:
            timeout = datetime.timedelta(seconds=self.timeout_s)
            # The sender serves the group's store itself: a `tcp://` init method would, under
            # torchrun (TORCHELASTIC_USE_AGENT_STORE), only connect to a store nobody serves. The
            # engines join with `tcp://` and prefix the keys with the group name, as here.
            store = dist.TCPStore(master_address, port, world_size, is_master=True, timeout=timeout)
            group.append(
                init_custom_process_group(
                    backend=backend,
                    store=dist.PrefixStore(group_name, store),
                    timeout=timeout,
                    world_size=world_size,
                    rank=0,
                    group_name=group_name,
                )
            )

        def init_engine(endpoint: EngineEndpoint, offset: int) -> None:
            payload = {
                "master_address": master_address,
                "master_port": port,
                "rank_offset": offset,
                "world_size": world_size,
                "group_name": group_name,
                "backend": backend,
            }
            endpoint.post("/init_weights_update_group", payload, self.timeout_s)

        calls: list[Callable[[], Any]] = [join_as_sender]
        calls += [lambda e=e, o=o: init_engine(e, o) for e, o in zip(endpoints, offsets, strict=True)]
        _raise_first(_run_threads(calls))
        self._group, self._group_name, self._members, self._endpoints = (
            group[0],
            group_name,
            members,
            endpoints,
        )

    def send(self, bucket: Bucket, endpoints: list[EngineEndpoint], version: str) -> None:
        tensors = [tensor for _, tensor in bucket.named_tensors]
        self._ensure_group(endpoints, self._backend_for(tensors[0].is_cuda))
        payload = {
            "names": bucket.names,
            "dtypes": [str(t.dtype).removeprefix("torch.") for t in tensors],
            "shapes": [list(t.shape) for t in tensors],
            "group_name": self._group_name,
            "flush_cache": False,
            "weight_version": version,
        }
        results: list[BaseException | None] = [None] * len(endpoints)
        finished = threading.Event()

        def declare_all() -> None:
            errors = _run_threads(
                [
                    lambda e=e: e.post("/update_weights_from_distributed", payload, self.timeout_s)
                    for e in endpoints
                ]
            )
            results[:] = errors
            finished.set()

        declarer = threading.Thread(target=declare_all, daemon=True)
        declarer.start()
        works = [dist.broadcast(t, src=0, group=self._group, async_op=True) for t in tensors]
        try:
            for work in works:
                # Poll so that an engine that rejects the declaration ends the wait at once instead of
                # leaving this rank blocked in the broadcast until the group time-out.
                while not work.is_completed():
                    if finished.is_set() and any(results):
                        raise _first(results)
                    finished.wait(0.01)
                work.wait()
            declarer.join(self.timeout_s)
            if declarer.is_alive():
                raise EngineRequestError(
                    f"engines did not confirm bucket {bucket.index} within {self.timeout_s} s"
                )
            _raise_first(results)
        except BaseException:
            self.reset(pending=True)
            raise

    def reset(self, *, pending: bool = False) -> None:
        """Tell the engines to drop the sync group, and drop ours. With a broadcast still `pending`
        (a failed bucket), our side must not wait for it: destroying a gloo group then blocks until
        the group time-out, so the group is only forgotten (its pending work ends at that time-out
        in gloo's thread); an NCCL communicator is aborted instead, which cancels its pending work
        (NOTE: the NCCL branch has not run on a GPU yet). The next bucket builds a fresh group."""
        if self._group is None:
            return
        for endpoint in self._endpoints:
            with contextlib.suppress(EngineRequestError):
                endpoint.post("/destroy_weights_update_group", {"group_name": self._group_name}, 10.0)
        group = self._group
        self._group, self._group_name, self._members, self._endpoints = None, "", (), []
        if pending and self.backend != "nccl":
            return
        with contextlib.suppress(Exception):
            if pending:
                dist.distributed_c10d._abort_process_group(group)
            else:
                dist.destroy_process_group(group)


def _first(errors: list[BaseException | None]) -> BaseException:
    return next(error for error in errors if error is not None)


def _raise_first(errors: list[BaseException | None]) -> None:
    if any(errors):
        raise _first(errors)
