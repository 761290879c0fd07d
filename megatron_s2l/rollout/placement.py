"""Where each engine and learner rank runs: the cores of each CPU SGLang server and learner rank, the
GPUs of each GPU server.

Two CPU engines that generate at once, each with as many OpenMP threads as the machine has cores,
oversubscribe it: on the 2-core development machine the explorer and learner engines of the demo
took 14.6 s together for what each did alone in 0.3 and 0.6 s (OpenMP threads spin while waiting
for cores the other engine holds). Pinned to disjoint cores with one thread per core, the two
together took 0.6 s, no more than the slower one alone (tools/bench_cpu_engines.py, docs/rollout.md).

The config sets the layout (docs/rollout.md, "Layout: cores and GPUs"): `learner.cpu_cores` (the
learner ranks of each node), `rollout.<pool>.cpu_cores` (that pool's CPU engines; unset pools share
the cores the lists leave) and `rollout.explorer.placement` (`shared`: the explorer's engines run on
the learner engines' cores or GPUs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatron_s2l.rollout.config import EnginePoolConfig, RolloutConfig


def plan_cpu_cores(engines_per_pool: list[int], cores: list[int] | None = None) -> list[list[frozenset[int]]]:
    """Disjoint, near-equal core sets for every engine of every pool, in pool order (the first
    engines get the spare cores). With more engines than cores, engines share cores round-robin.
    `cores`: the cores this process may use (default: its affinity mask)."""
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if not cores:
        raise ValueError("no CPU cores to place engines on")
    total = sum(engines_per_pool)
    if total == 0:
        return [[] for _ in engines_per_pool]
    sets: list[frozenset[int]] = []
    if total >= len(cores):
        sets = [frozenset([cores[i % len(cores)]]) for i in range(total)]
    else:
        size, spare = divmod(len(cores), total)
        start = 0
        for i in range(total):
            end = start + size + (i < spare)
            sets.append(frozenset(cores[start:end]))
            start = end
    plan, first = [], 0
    for count in engines_per_pool:
        plan.append(sets[first : first + count])
        first += count
    return plan


def core_list_errors(cores: list[int] | None) -> list[str]:
    """What is wrong with a `cpu_cores` list by itself, before the machine is known: empty, a negative
    core, a core listed twice."""
    if cores is None:
        return []
    if not cores:
        return ["cpu_cores is empty (null: the cores the other lists leave)"]
    errors = [f"cpu_cores: {core} is not a core number" for core in cores if core < 0]
    repeated = sorted({core for core in cores if cores.count(core) > 1})
    if repeated:
        errors.append(f"cpu_cores lists core(s) {repeated} more than once")
    return errors


def cores_outside(key: str, cores: Iterable[int], available: Iterable[int]) -> list[str]:
    """An error naming `key` and the cores of `cores` that this process may not use (not in
    `available`, its affinity mask); none when all are usable."""
    allowed = frozenset(available)
    outside = sorted(set(cores) - allowed)
    if not outside:
        return []
    return [
        f"{key}: core(s) {outside} not in this process's CPU affinity (os.sched_getaffinity: cores "
        f"{sorted(allowed)})"
    ]


def learner_rank_cores(cores: list[int], local_rank: int, local_ranks: int) -> frozenset[int]:
    """The share of `cores` (learner.cpu_cores) of local rank `local_rank` out of `local_ranks` on
    this node: near-equal disjoint shares, the first ranks taking the spare cores; ranks share cores
    round-robin when they outnumber them (`plan_cpu_cores`)."""
    return plan_cpu_cores([local_ranks], cores=cores)[0][local_rank]


def plan_engine_cores(
    pools: dict[str, EnginePoolConfig], available: Iterable[int], reserved: Iterable[int] = ()
) -> dict[str, list[frozenset[int]]]:
    """The cores of every engine of `pools` (those started here, by name: "learner", "explorer"), out
    of `available` (this process's affinity mask) less `reserved` (the learner ranks' list). A CPU
    pool with a `cpu_cores` list runs on it; a CPU explorer with `placement: shared` on the learner
    engines' cores (its list, when it has one, must lie within them); the other CPU pools together on
    the cores that no list takes. Each CPU pool's cores are split over its engines by
    `plan_cpu_cores`. GPU pools' servers (their work is on the GPU) each run on all the cores that no
    list takes. Raises ValueError naming the key: a listed core outside `available`, no core left,
    a shared explorer's core that no learner engine has."""
    available = frozenset(available)
    devices = {name: pool.engine.resolved_device() for name, pool in pools.items()}
    shared = devices.get("explorer") == "cpu" and pools["explorer"].placement == "shared"
    on_lists = {
        name: pool.cpu_cores
        for name, pool in pools.items()
        if pool.cpu_cores is not None and devices[name] == "cpu"
    }
    errors = [
        error
        for name, cores in on_lists.items()
        for error in cores_outside(f"rollout.{name}.cpu_cores", cores, available)
    ]
    if errors:
        raise ValueError("; ".join(errors))
    listed = {name: cores for name, cores in on_lists.items() if not (shared and name == "explorer")}
    rest = [name for name in pools if name not in on_lists and not (shared and name == "explorer")]
    left = sorted(available.difference(reserved, *listed.values()))
    if rest and not left:
        key = f"rollout.{rest[0]}.cpu_cores" if devices[rest[0]] == "cpu" else "learner.cpu_cores"
        raise ValueError(
            f"{key}: no core is left for the {rest[0]} engines: this process may use cores "
            f"{sorted(available)}, and learner.cpu_cores {sorted(reserved)} and rollout.*.cpu_cores "
            f"{sorted(set().union(*listed.values()))} take them all"
        )
    plan = {name: plan_cpu_cores([pools[name].num_engines], cores=cores)[0] for name, cores in listed.items()}
    split = [name for name in rest if devices[name] == "cpu"]
    if split:
        counts = [pools[name].num_engines for name in split]
        plan |= dict(zip(split, plan_cpu_cores(counts, cores=left), strict=True))
    plan |= {name: [frozenset(left)] * pools[name].num_engines for name in rest if devices[name] == "cuda"}
    if shared:
        plan["explorer"] = _shared_explorer_cores(pools["explorer"], plan["learner"])
    return {name: plan[name] for name in pools}


def _shared_explorer_cores(explorer: EnginePoolConfig, learner: list[frozenset[int]]) -> list[frozenset[int]]:
    """The cores of the shared explorer's engines: its list, or every learner engine's cores, split
    over its engines. A listed core that no learner engine has is an error (after the hand-over it
    would idle: the explorer's engines get no successors with shared placement)."""
    learner_cores = sorted(frozenset().union(*learner))
    cores = learner_cores if explorer.cpu_cores is None else explorer.cpu_cores
    strangers = sorted(set(cores) - set(learner_cores))
    if strangers:
        raise ValueError(
            f"rollout.explorer.cpu_cores: with rollout.explorer.placement shared the explorer's engines "
            f"run on the learner engines' cores ({learner_cores}); core(s) {strangers} are not theirs"
        )
    return plan_cpu_cores([explorer.num_engines], cores=cores)[0]


def placement_errors(config: RolloutConfig, *, live_explorer: bool) -> list[str]:
    """What the layout keys get wrong once each pool's device is known (`engine.device: auto`
    resolves here): `cpu_cores` on a GPU pool (it places CPU engines only); with the explorer's
    placement shared, pools on different devices and, on GPU, `shared_gpu_errors`."""
    pools = {"learner": config.learner, **({"explorer": config.explorer} if live_explorer else {})}
    devices = {name: pool.engine.resolved_device() for name, pool in pools.items()}
    errors = [
        f"rollout.{name}.cpu_cores: the {name} engines run on GPUs, and cpu_cores places CPU engines "
        "(GPU engines' servers run on the cores learner.cpu_cores leaves): remove it"
        for name, pool in pools.items()
        if pool.cpu_cores is not None and devices[name] == "cuda"
    ]
    if not live_explorer or config.explorer.placement != "shared":
        return errors
    if devices["explorer"] != devices["learner"]:
        return [
            *errors,
            f"rollout.explorer.placement: shared runs the explorer's engines on the learner engines' "
            f"devices, but the explorer's run on {devices['explorer']} and the learner's on "
            f"{devices['learner']} (rollout.*.engine.device)",
        ]
    return errors + (
        shared_gpu_errors(config.learner, config.explorer) if devices["learner"] == "cuda" else []
    )


def shared_gpu_errors(learner: EnginePoolConfig, explorer: EnginePoolConfig) -> list[str]:
    """Why the explorer's engines cannot share the learner engines' GPUs (`share_gpus`): those of
    `shared_gpu_fit_errors`, or a `mem_fraction_static` left to SGLang's default (which lets one server
    take nearly all of a GPU: with two on it, each must be told its share)."""
    errors = shared_gpu_fit_errors(learner, explorer)
    unset = [
        f"rollout.{name}.engine.mem_fraction_static"
        for name, pool in (("learner", learner), ("explorer", explorer))
        if pool.engine.mem_fraction_static is None
    ]
    if unset:
        errors.append(
            f"{' and '.join(unset)}: must be set with rollout.explorer.placement shared on GPU (two servers "
            "share each GPU; SGLang's default would let the first take nearly all of it): `s2l plan` "
            "suggests values"
        )
    return errors


def shared_gpu_fit_errors(learner: EnginePoolConfig, explorer: EnginePoolConfig) -> list[str]:
    """Whether the shared explorer's engines fit on the learner engines' GPUs at all (also checked by
    `s2l plan`, whose fractions may be unset): an explorer TP that does not divide the learner's, or
    more explorer engines than the learner engines' GPUs hold."""
    learner_tp, tp = learner.engine.tp, explorer.engine.tp
    if learner_tp % tp:
        return [
            f"rollout.explorer.engine.tp ({tp}) must divide rollout.learner.engine.tp ({learner_tp}) "
            "with rollout.explorer.placement shared: each explorer engine runs on GPUs of one learner engine"
        ]
    fit = learner.num_engines * (learner_tp // tp)
    if explorer.num_engines > fit:
        gpus = learner.num_engines * learner_tp
        return [
            f"rollout.explorer.num_engines ({explorer.num_engines}): with rollout.explorer.placement "
            f"shared the explorer engines ({explorer.num_engines} x TP {tp}) need "
            f"{explorer.num_engines * tp} GPUs, the learner engines have {gpus}: the learner engines' "
            f"{gpus} GPUs hold {fit} explorer engines of TP {tp}, one per {tp} GPUs"
        ]
    return []


def share_gpus(learner_blocks: list[list[str]], tp: int, num_engines: int) -> list[list[str]]:
    """The GPUs of `num_engines` shared explorer engines of TP `tp` (`placement: shared`, checked by
    `shared_gpu_errors`): engine i on learner engine i mod L's GPUs (L = len(learner_blocks)), the
    next `tp` of them not yet given to an explorer engine, so that the explorer's engines spread over
    the learner engines before two share one."""
    engines = len(learner_blocks)
    return [
        learner_blocks[i % engines][(i // engines) * tp : (i // engines + 1) * tp] for i in range(num_engines)
    ]


def visible_gpus() -> list[str]:
    """This process's GPUs by the ids a child's CUDA_VISIBLE_DEVICES takes (indices or UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def plan_engine_gpus(engine_tps: list[list[int]], gpus: list[str]) -> list[list[list[str]]]:
    """GPUs of every engine of every pool (`engine_tps[pool][engine]` = its TP size): consecutive
    blocks of `gpus`, in pool order, none shared. Raises ValueError when they do not fit."""
    needed = sum(sum(pool) for pool in engine_tps)
    if needed > len(gpus):
        raise ValueError(f"the engines need {needed} GPUs, {len(gpus)} are free for them ({gpus})")
    plan, first = [], 0
    for pool in engine_tps:
        blocks = []
        for tp in pool:
            blocks.append(gpus[first : first + tp])
            first += tp
        plan.append(blocks)
    return plan


def regroup_gpus(blocks: list[list[str]], tp: int) -> list[list[str]]:
    """The GPUs of stopped engines (`blocks`, one per engine) as blocks of `tp` for new engines: as
    many as fit, in order; the GPUs left over (fewer than `tp`) stay idle."""
    gpus = [gpu for block in blocks for gpu in block]
    return [gpus[first : first + tp] for first in range(0, len(gpus) - tp + 1, tp)]


def parse_gpus(flag: str | None) -> list[str]:
    """The GPU ids of a `--gpus 0,1,2` flag, or every visible GPU (`visible_gpus`) when it is unset."""
    if flag is None:
        return visible_gpus()
    gpus = [gpu.strip() for gpu in flag.split(",") if gpu.strip()]
    if not gpus or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus {flag!r}: expected distinct comma-separated GPU ids")
    return gpus


def plan_pool_gpus(tp: int, gpus: list[str], num_engines: int | None = None) -> list[list[str]]:
    """GPUs of each engine of one pool at TP `tp`: `num_engines` engines, or as many as `gpus` hold
    (len // tp; the rest stay idle) when None. Raises ValueError when not even one fits."""
    if num_engines is None:
        num_engines = len(gpus) // tp
        if num_engines == 0:
            raise ValueError(f"one engine at TP {tp} needs {tp} GPUs, {len(gpus)} are given ({gpus})")
    return plan_engine_gpus([[tp] * num_engines], gpus)[0]
