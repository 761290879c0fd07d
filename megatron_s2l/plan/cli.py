"""`s2l plan`: will a run config fit in GPU memory? Per-GPU memory of the learner and each engine pool.

    s2l plan --config yaml/qwen3-8b-s2l.yaml [key.sub=value ...] [--gpu-mem-gib 80] [--json]
    s2l plan --config yaml/qwen3-14b-s2l.yaml learner.parallel.tensor_parallel=1   # exit status 3

Architectures come from each model path's config.json, or, where the path is absent on this
machine, from the bundled Qwen3 file its directory name names (`/models/Qwen3-8B-Base` -> qwen3-8b).
Exit status: 0 when everything fits, 3 when something does not (the reasons are printed), 2 for a
config error. The formulas are in `megatron_s2l/plan/memory.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megatron_s2l.archs import ModelArch, load_arch
from megatron_s2l.plan.memory import (
    ColocatedPlan,
    EnginePlan,
    LearnerPlan,
    RunPlan,
    explorer_pool_is_live,
    plan_run,
)

EXIT_DOES_NOT_FIT = 3

PLACEMENT_NOTE = (
    "engines the trainer starts take the node's GPUs after its learner ranks' (and are planned on GPUs "
    "of their own); with rollout.colocate the learner engines share the learner ranks' GPUs"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="YAML run config (yaml/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of --config")
    parser.add_argument("--gpu-mem-gib", type=float, default=80.0, help="one GPU's memory (default 80)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def resolve_arch(role: str, path: str) -> tuple[ModelArch, str | None]:
    """The architecture of model.<role>, and a note when a bundled one stands in for an absent checkpoint."""
    if (Path(path) / "config.json").is_file():
        return load_arch(path), None
    name = Path(path).name
    try:
        arch = load_arch(name)
    except ValueError as e:
        raise ValueError(
            f"model.{role} {path!r} has no config.json on this machine and {name!r} names no bundled "
            f"architecture: override model.{role} with a checkpoint directory or a bundled name (qwen3-8b)"
        ) from e
    return arch, f"model.{role}: no config.json at {path}; planned with the bundled {arch.name}"


def run(args: argparse.Namespace) -> int:
    from megatron_s2l.config import load_config

    cfg = load_config(args.config, args.overrides)
    learner_arch, note = resolve_arch("learner", cfg.model.learner)
    notes = [note] if note else []
    explorer_arch = None
    if explorer_pool_is_live(cfg):
        explorer_arch, note = resolve_arch("explorer", cfg.model.explorer)
        notes += [note] if note else []
    notes.append(PLACEMENT_NOTE)
    plan = plan_run(cfg, learner_arch, explorer_arch, args.gpu_mem_gib)
    if args.json:
        print(json.dumps({**plan.to_dict(), "notes": notes}, indent=2))
    else:
        print(format_plan(plan, notes))
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


def format_plan(plan: RunPlan, notes: list[str]) -> str:
    gpus = plan.gpus
    lines = [
        *format_learner(plan.learner, plan.gpu_mem_gib),
        "",
        *format_engines(plan.engines, plan.gpu_mem_gib),
        "",
        *(format_colocated(plan.colocated, plan.gpu_mem_gib) if plan.colocated else []),
        f"GPUs: learner {gpus['learner']} + engines {gpus['engines']} = {gpus['total']}",
        *(f"note: {note}" for note in notes),
    ]
    if plan.fits:
        lines.append("fits")
    else:
        lines += ["does NOT fit:", *(f"  - {reason}" for reason in plan.reasons)]
    return "\n".join(lines)


def format_learner(plan: LearnerPlan, gpu_mem_gib: float) -> list[str]:
    s = plan.setup
    bf16 = s.param_bytes == 2
    sharding = f"sharded over DP {s.dp}" if s.distributed_optimizer else "no distributed optimizer"
    reference = {"none": "no KL loss", "gpu": "KL reference on the GPU", "host": "KL reference offloaded"}
    explain = {
        "weights": "bf16" if bf16 else "fp32",
        "grads": "fp32 main gradients",
        "optimizer": f"{'fp32 master + ' if bf16 else ''}Adam m, v; {sharding}",
        "reference": reference[s.reference],
        "activations": "full recompute" if s.recompute else "no recompute",
        "logits": (
            "not on this stage"
            if plan.worst_stage != s.pp - 1
            else "one chunk + fp32 weight grad (fused)"
            if s.fused_output
            else "one copy, model dtype"
        ),
    }
    lines = [
        f"learner {plan.arch}: TP {s.tp} x PP {s.pp} x DP {s.dp}, micro-batches of up to "
        f"{s.tokens_per_micro_batch:,} tokens (longest sequence {s.seq_len:,}), "
        f"up to {s.micro_batches:,} micro-batches per DP rank and update, "
        f"vocab padded to {plan.padded_vocab:,}",
        f"  parameters per GPU: {plan.params_per_gpu:,} "
        f"(by stage: {', '.join(f'{p:,}' for p in plan.params_per_stage)})",
        f"  per GPU of stage {plan.worst_stage}:",
    ]
    lines += [f"    {name:<12}{gib:>8.2f} GiB  {explain[name]}" for name, gib in plan.gib.items()]
    if s.reference == "host":
        lines.append("    (the peak covers the reference's forward: its weights instead of the activations)")
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"    {'total':<12}{plan.total_gib:>8.2f} GiB  of {gpu_mem_gib:g} GiB: {verdict}")
    return lines


def format_engines(engines: list[EnginePlan], gpu_mem_gib: float) -> list[str]:
    header = (
        f"{'engines':<10}{'model':<12}{'servers x TP':>13}{'mem frac':>9}{'weights':>10}{'KV cache':>10}"
        f"{'KV tokens':>11}{'seq tokens':>11}{'seqs at once':>13}  per GPU of {gpu_mem_gib:g} GiB"
    )
    rows = [
        f"{e.pool:<10}{e.arch:<12}{f'{e.num_engines} x {e.tp}':>13}{e.mem_fraction_static:>9.3g}"
        f"{e.weights_gib:>6.1f} GiB{e.kv_cache_gib:>6.1f} GiB{e.kv_tokens:>11,}{e.seq_tokens:>11,}"
        f"{e.sequences_at_once:>13,}  {'fits' if e.fits else 'does NOT fit'}"
        for e in engines
    ]
    return [header, *rows]


def format_colocated(plan: ColocatedPlan, gpu_mem_gib: float) -> list[str]:
    lines = [
        f"colocated (rollout.colocate): a learner rank and a learner engine per GPU of {gpu_mem_gib:g} GiB"
    ]
    for layout in (plan.resident, plan.offloaded):
        chosen = " <- configured" if layout is plan.chosen else ""
        what = "gradients + optimizer offloaded" if layout.offload else "learner state resident"
        learner, engine = layout.learner_resident_gib, layout.rollout_gib - layout.learner_resident_gib
        lines.append(
            f"  {what:<33} rollout {layout.rollout_gib:6.1f} GiB (learner {learner:.1f} + engine "
            f"{engine:.1f}, {layout.engine.kv_tokens:,} KV tokens, {layout.engine.sequences_at_once:,} "
            f"sequences), training {layout.training_gib:.1f} GiB, host {layout.host_gib:.1f} GiB: "
            f"{'fits' if layout.fits else 'does NOT fit'}{chosen}"
        )
    return [*lines, ""]
