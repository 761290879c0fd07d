"""torch.distributed and Megatron parallel state: TP x PP x DP from the config and the world size.

Backend: NCCL with CUDA, gloo without (then `megatron_s2l.compat` is activated). DP is derived:
world_size / (tp * pp). Sizes that cannot work raise ValueError naming the field before any process
group is created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from megatron_s2l.compat import activate_cpu_compat
from megatron_s2l.logs import configure_logging
from megatron_s2l.net import find_free_port
from megatron_s2l.rollout.placement import learner_rank_cores

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class ParallelConfig:
    tensor_parallel: int = 1
    """Tensor-parallel size (splits heads, query groups, FFN and vocabulary)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size (splits the layers into equal stages)."""
    micro_batch_size: int = 1
    """Sequences per micro-batch on each data-parallel rank (unless `max_tokens_per_micro_batch`)."""
    max_tokens_per_micro_batch: int | None = None
    """Form micro-batches by a token budget instead: rows x longest row <= this in training, twice
    this in the forward-only log-prob passes (no activations kept); None: `micro_batch_size` rows."""
    distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (Megatron's distributed optimizer)."""
    seed: int = 1234
    """Seed of the model-parallel RNG states (dropout, random init)."""
    timeout_minutes: int = 30
    """Time-out of every collective before the job fails instead of hanging."""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "micro_batch_size", "timeout_minutes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        budget = self.max_tokens_per_micro_batch
        if budget is not None and budget < 1:
            raise ValueError(f"max_tokens_per_micro_batch must be >= 1 or null, got {budget}")


@dataclass(frozen=True, slots=True)
class ParallelLayout:
    """This rank's place in the TP x PP x DP grid."""

    world_size: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def check_parallel_sizes(
    cfg: ParallelConfig, world_size: int, *, num_layers: int, num_heads: int, num_query_groups: int
) -> int:
    """Validate TP/PP against the world and the model; return the data-parallel size."""
    tp, pp = cfg.tensor_parallel, cfg.pipeline_parallel
    if world_size % (tp * pp) != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor_parallel * pipeline_parallel = {tp * pp}"
        )
    if num_layers % pp != 0:
        raise ValueError(f"pipeline_parallel={pp} does not divide the model's {num_layers} layers")
    if num_heads % tp != 0:
        raise ValueError(f"tensor_parallel={tp} does not divide the model's {num_heads} attention heads")
    if num_query_groups % tp != 0:
        raise ValueError(
            f"tensor_parallel={tp} does not divide the model's {num_query_groups} query groups (KV heads)"
        )
    return world_size // (tp * pp)


def init_distributed(
    cfg: ParallelConfig, *, num_layers: int, num_heads: int, num_query_groups: int
) -> ParallelLayout:
    """Initialise torch.distributed (if the launcher has not) and Megatron's parallel state.

    Reads RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from the environment (torchrun) when no default
    process group exists yet; a single process without them runs as a world of one.
    """
    from megatron.core import parallel_state, tensor_parallel

    use_cuda = torch.cuda.is_available()
    if not use_cuda:
        activate_cpu_compat()
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(find_free_port()))
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            # SGLang 0.5 sets NCCL_CUMEM_ENABLE=0 in its servers when unset; the weight-sync group
            # spans both sides and fails ("invalid argument") unless they agree. NCCL reads it once.
            os.environ.setdefault("NCCL_CUMEM_ENABLE", "0")
        _init_default_group("nccl" if use_cuda else "gloo", timedelta(minutes=cfg.timeout_minutes))
    world_size = dist.get_world_size()
    dp = check_parallel_sizes(
        cfg, world_size, num_layers=num_layers, num_heads=num_heads, num_query_groups=num_query_groups
    )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tensor_parallel,
        pipeline_model_parallel_size=cfg.pipeline_parallel,
        distributed_timeout_minutes=cfg.timeout_minutes,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
    if dist.get_rank() == 0:
        logger.info(
            "learner ranks: world %d = TP %d x PP %d x DP %d (%s)",
            world_size,
            cfg.tensor_parallel,
            cfg.pipeline_parallel,
            dp,
            dist.get_backend(),
        )
    return ParallelLayout(
        world_size=world_size,
        tp=cfg.tensor_parallel,
        pp=cfg.pipeline_parallel,
        dp=dp,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
    )


def _init_default_group(backend: str, timeout: timedelta) -> None:
    """The default process group from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT. Under torchrun the
    agent serves the rendezvous store (TORCHELASTIC_USE_AGENT_STORE; torchrun's own, see
    docs/deploy.md); otherwise rank 0 serves it bound to MASTER_ADDR only (127.0.0.1 on one node),
    where torch's `env://` store would listen on every interface."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        dist.init_process_group(backend, timeout=timeout)
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = bound_tcp_store(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, rank == 0, timeout
    )
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def bound_tcp_store(
    host: str, port: int, world_size: int, is_master: bool, timeout: timedelta
) -> dist.TCPStore:
    """A TCPStore whose server (on the master) listens on `host` alone. torch's TCPStore server
    listens on every interface (`*:port`) whatever host it is given; handing it a socket bound here
    (`master_listen_fd`) keeps an unauthenticated store off the other interfaces. `port` 0: the OS
    picks one (read it from `.port`), with no window for another process to take it."""
    if not is_master:
        return dist.TCPStore(host, port, world_size, False, timeout=timeout)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((socket.gethostbyname(host) if family == socket.AF_INET else host, port))
        listener.listen(512)
        store = dist.TCPStore(
            host,
            listener.getsockname()[1],
            world_size,
            True,
            timeout=timeout,
            # Not waiting in the constructor for the others to connect: the caller may only tell
            # them where to connect after this returns (the weight-sync group); init_process_group
            # has its own barrier.
            wait_for_workers=False,
            master_listen_fd=listener.fileno(),
        )
    except BaseException:
        listener.close()
        raise
    # NOTE: the store's server owns the listening fd from here on; this object must not close it.
    listener.detach()
    return store


def destroy_distributed() -> None:
    """Tear down Megatron's parallel state (the default process group is left to its owner)."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()


def spawn_local_ranks(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run `fn(*args)` as `world_size` ranks on this node: spawned processes that meet on a free
    localhost port (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set), with logging
    configured and, on CPU, the cores shared out. Returns when all ranks are done; raises (with the
    failed rank's traceback) if one fails. `fn` must be picklable (defined at module level)."""
    import torch.multiprocessing as mp

    port = find_free_port()
    mp.start_processes(
        _local_rank_main, args=(world_size, port, fn, args), nprocs=world_size, start_method="spawn"
    )


def _local_rank_main(rank: int, world_size: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    configure_logging(rank)
    if not torch.cuda.is_available():  # CPU ranks share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    fn(*args)


def pin_learner_rank(cores: list[int] | None) -> frozenset[int]:
    """Pin this learner rank to its share of `cores` (learner.cpu_cores over this node's LOCAL_RANK
    of LOCAL_WORLD_SIZE, `placement.learner_rank_cores`) and run that many torch threads; returns
    the cores the process could use before, over which the driver places its engines. Call it first
    thing in a rank: threads started later inherit the pin, and those already running (a tokenizer's
    pool from the pre-flight) are moved too. None: nothing is pinned."""
    before = frozenset(os.sched_getaffinity(0))
    if cores is None:
        return before
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    share = learner_rank_cores(cores, int(os.environ.get("LOCAL_RANK", "0")), local_ranks)
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(thread), share)
    torch.set_num_threads(len(share))
    return before


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank of the default group: a barrier that also agrees on a
    failure, so that no rank waits for one that gave up. Without torch.distributed: `flag`."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
