"""Where each engine runs. On CPU: which cores each SGLang server may use.

Two CPU engines that generate at once, each with as many OpenMP threads as the machine has cores,
oversubscribe it: on the 2-core development machine the explorer and learner engines of the demo
took 14.6 s together for what each did alone in 0.3 and 0.6 s (OpenMP threads spin while waiting
for cores the other engine holds). Pinned to disjoint cores with one thread per core, the two
together took 0.6 s, no more than the slower one alone (tools/bench_cpu_engines.py, docs/rollout.md).
"""

from __future__ import annotations

import os


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
