"""How one bucket of `(hf_name, tensor)` reaches the learner engines: disk, tensor or distributed.

- `disk`: each sender writes its buckets as safetensors files into one directory per version; the
  controller then asks every engine to `/update_weights_from_disk` from it. Needs a file system that
  the engines see; slowest, but has no other conditions.
- `tensor` (colocated engines only): the bucket is flattened into one byte tensor (SGLang's
  `FlattenedTensorBucket`, `load_format: flattened_bucket`) where it lies and serialized once per
  engine TP rank (`MultiprocessingSerializer`): a CUDA tensor travels as a CUDA IPC handle, a CPU one
  through shared memory (`torch.multiprocessing`, strategy `file_system`: the default strategy
  crashes SGLang's scheduler). One payload per rank: SGLang's `TpModelWorker.deserialize_own_rank`
  opens only its own, and CUDA IPC reference counting needs one serialization per consumer.
- `distributed` (the default for disaggregated engines): the sender of a pipeline stage joins a
  process group with every engine rank (rank 0 = sender), declares the bucket's names, dtypes and
  shapes with `/update_weights_from_distributed`, then broadcasts the tensors in that order. NCCL for
  CUDA tensors, gloo for CPU ones. The group is rebuilt when an engine restarted (its
  `/server_info` start-up record changed); a failed NCCL broadcast is not retried (see
  `BrokenSyncGroupError`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from megatron_s2l.learner.parallel import bound_tcp_store
from megatron_s2l.net import address_towards
from megatron_s2l.rollout.http import EngineEndpoint, EngineRequestError, http_get_json
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

    def begin(self, endpoints: list[EngineEndpoint]) -> None:  # noqa: B027 (optional hook)
        """Sender only, before the first bucket of an update (before the engines are paused)."""

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
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

        # Flattened where the tensors lie (no GPU -> host copy); a fresh buffer per bucket, never
        # refilled while an engine may still copy from it (slime `_build_flattened_tensor_data`).
        flat = FlattenedTensorBucket(named_tensors=bucket.named_tensors)
        data = {"flattened_tensor": flat.get_flattened_tensor(), "metadata": flat.get_metadata()}
        for endpoint in endpoints:
            payload = {
                # One serialization per engine TP rank: each CUDA IPC handle is reference-counted for
                # the one consumer that opens it (SGLang `TpModelWorker.deserialize_own_rank`).
                "serialized_named_tensors": [
                    MultiprocessingSerializer.serialize(data, output_str=True) for _ in range(endpoint.tp)
                ],
                "load_format": "flattened_bucket",
                "flush_cache": False,
                "weight_version": version,
            }
            endpoint.post("/update_weights_from_tensor", payload, self.timeout_s)
        del data, flat  # the engines have copied the bucket by now
        if torch.cuda.is_available():  # release IPC blocks the engines closed (slime `update_weights`)
            torch.cuda.ipc_collect()


class BrokenSyncGroupError(RuntimeError):
    """An NCCL broadcast of the weight-sync group failed. Not retried: engines that were receiving
    may sit inside the broadcast until their NCCL time-out (SGLang's group has torch's default, 30
    minutes), and a fresh group would wait for them. The run stops; restart the learner engines and
    resume."""


def server_fingerprint(endpoint: EngineEndpoint, timeout_s: float = 10.0) -> str | None:
    """What changes when the server behind `endpoint` restarts, even on the same port: SGLang
    0.5.23's `GET /server_info` reports `startup_time` (the measured durations of its start-up
    phases, floats that a new process does not reproduce) and no PID. None when it does not answer
    (then the group is rebuilt: a server seen down may come back as a new process)."""
    try:
        info = http_get_json(endpoint.url + "/server_info", endpoint.api_key, timeout_s)
    except EngineRequestError:
        return None
    startup = info.get("startup_time")
    return None if startup is None else json.dumps(startup, sort_keys=True)


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
        self._group_backend = ""
        """The resolved backend of the current group (`nccl` or `gloo`, never `auto`)."""
        self._members: tuple[tuple[str, str | None], ...] = ()
        """(url, server fingerprint) of each engine in the group: a restarted server is a new member."""
        self._fingerprints: dict[str, str | None] = {}
        self._endpoints: list[EngineEndpoint] = []
        self._store: dist.TCPStore | None = None

    def _backend_for(self, on_gpu: bool) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if on_gpu else "gloo"

    def begin(self, endpoints: list[EngineEndpoint]) -> None:
        """Read each engine's fingerprint once per update (before the first bucket), so that a server
        restarted on the same port since the last update gets a new group before any broadcast
        (SGLang would answer "Group ... not in ..." to the old one; with NCCL the sender would wait
        in the communicator set-up for a rank that never comes)."""
        fingerprints = _run_threads_returning([lambda e=e: server_fingerprint(e) for e in endpoints])
        self._fingerprints = {e.url: f for e, f in zip(endpoints, fingerprints, strict=True)}

    def _ensure_group(self, endpoints: list[EngineEndpoint], backend: str) -> None:
        # "unchecked": `begin` did not run (a caller sending single buckets); None: the server did
        # not answer it, so it may be a new process by now.
        members = tuple((e.url, self._fingerprints.get(e.url, "unchecked")) for e in endpoints)
        unknown = any(fingerprint is None for _, fingerprint in members)
        if self._group is not None and members == self._members and not unknown:
            return
        self.reset()
        from sglang.srt.utils import init_custom_process_group

        # Unique per process and try: torch keeps the names of groups abandoned after a failure.
        group_name = f"s2l_weights_stage{self.stage}_{uuid.uuid4().hex[:12]}"
        master_address = self.master_address
        if master_address == "auto":  # every engine must reach it: the route to the first one
            master_address = address_towards(urlsplit(endpoints[0].url).hostname or "127.0.0.1")
        timeout = datetime.timedelta(seconds=self.timeout_s)
        world_size = 1 + sum(e.tp for e in endpoints)
        # The sender serves the group's store itself, bound to the address the engines reach it by
        # (never `*`): a `tcp://` init method would, under torchrun (TORCHELASTIC_USE_AGENT_STORE),
        # only connect to a store nobody serves. The engines join with `tcp://` and prefix the keys
        # with the group name, as here.
        store = bound_tcp_store(master_address, 0, world_size, True, timeout)
        offsets = [1 + sum(e.tp for e in endpoints[:i]) for i in range(len(endpoints))]
        group: list[dist.ProcessGroup] = []

        def join_as_sender() -> None:
            # NOTE: no `device_id`: with it torch creates the NCCL communicator now (a collective),
            # but SGLang 0.5.23's engines join lazily (`WeightUpdater.init_weights_update_group`
            # passes none), so the sender would wait here for ranks that only come at the first
            # broadcast. slime (`connect_rollout_engines_from_distributed`) passes none either.
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
                "master_port": store.port,
                "rank_offset": offset,
                "world_size": world_size,
                "group_name": group_name,
                "backend": backend,
            }
            endpoint.post("/init_weights_update_group", payload, self.timeout_s)

        calls: list[Callable[[], Any]] = [join_as_sender]
        calls += [lambda e=e, o=o: init_engine(e, o) for e, o in zip(endpoints, offsets, strict=True)]
        _raise_first(_run_threads(calls))
        self._group, self._group_name, self._group_backend = group[0], group_name, backend
        self._members, self._endpoints, self._store = members, endpoints, store

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
        # Broadcasts are issued from a thread: NCCL creates its communicator at the first one, which
        # blocks the calling thread until every engine rank has joined; this thread keeps watching
        # the declarations meanwhile, so an engine that refuses ends the wait at once.
        works: list[dist.Work] = []
        launch_error: list[BaseException] = []

        def launch() -> None:
            try:
                works.extend(dist.broadcast(t, src=0, group=self._group, async_op=True) for t in tensors)
            except BaseException as error:
                launch_error.append(error)

        launcher = threading.Thread(target=launch, daemon=True)
        launcher.start()
        deadline = time.monotonic() + self.timeout_s
        try:
            while launcher.is_alive() or not all(work.is_completed() for work in works):
                if launch_error:
                    raise launch_error[0]
                if finished.is_set() and any(results):
                    raise _first(results)
                if time.monotonic() > deadline:
                    raise EngineRequestError(
                        f"broadcast of bucket {bucket.index} took over {self.timeout_s} s"
                    )
                time.sleep(0.005)
            if launch_error:
                raise launch_error[0]
            for work in works:
                work.wait()
            declarer.join(self.timeout_s)
            if declarer.is_alive():
                raise EngineRequestError(
                    f"engines did not confirm bucket {bucket.index} within {self.timeout_s} s"
                )
            _raise_first(results)
        except BaseException as error:
            backend = self._group_backend
            self.reset(pending=True)
            if backend == "nccl":
                raise BrokenSyncGroupError(
                    f"NCCL weight-sync broadcast of bucket {bucket.index} to {[e.url for e in endpoints]} "
                    f"failed ({error}); the engines that were receiving may be stuck until their NCCL "
                    "time-out: restart the learner engines, then resume the run (--resume)"
                ) from error
            raise

    def reset(self, *, pending: bool = False) -> None:
        """Tell the engines to drop the sync group, and drop ours. With a broadcast still `pending`
        (a failed bucket), our side must not wait for it: destroying a gloo group then blocks until
        the group time-out, so a gloo group is only forgotten (its pending work ends at that
        time-out in gloo's thread); an NCCL communicator is aborted from a daemon thread (aborting
        one still in its set-up may itself block), which cancels its pending work. The next bucket
        builds a fresh group. NOTE: the NCCL branch has not run on a GPU yet."""
        if self._group is None:
            return
        _run_threads(
            [
                lambda e=e: e.post("/destroy_weights_update_group", {"group_name": self._group_name}, 10.0)
                for e in self._endpoints
            ]
        )  # best effort: a restarted engine lacks the group, a stuck one does not answer
        group, backend = self._group, self._group_backend
        self._group, self._group_name, self._group_backend = None, "", ""
        self._members, self._endpoints, self._store = (), [], None
        if pending and backend == "nccl":
            abort = dist.distributed_c10d._abort_process_group
            threading.Thread(target=lambda: _suppressed(abort, group), daemon=True).start()
        elif not pending:
            _suppressed(dist.destroy_process_group, group)


def _suppressed(action: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(Exception):
        action(*args)


def _run_threads_returning(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run `calls` in threads; return their results in order (raise the first failure)."""
    values: list[Any] = [None] * len(calls)

    def store(index: int) -> None:
        values[index] = calls[index]()

    _raise_first(_run_threads([lambda i=i: store(i) for i in range(len(calls))]))
    return values


def _first(errors: list[BaseException | None]) -> BaseException:
    return next(error for error in errors if error is not None)


def _raise_first(errors: list[BaseException | None]) -> None:
    if any(errors):
        raise _first(errors)
