"""`s2l plan`: will a run config fit in GPU memory? Per-GPU memory of the learner and each engine pool.

    s2l plan --config yaml/qwen3-8b-s2l.yaml [key.sub=value ...] [--gpu-mem-gib 80] [--json]
              [--calibration bench_rollout/rollout_calibration.json] [--mean-response-tokens N]
    s2l plan --config yaml/qwen3-14b-s2l.yaml learner.parallel.tensor_parallel=1   # exit status 3

Architectures come from each model path's config.json, or, where the path is absent on this
machine, from the bundled Qwen3 file its directory name names (`/models/Qwen3-8B-Base` -> qwen3-8b).
After the memory table comes a model of the rollout time per step by phase, for the config's engine
layout and the alternatives (`rollout_time.py`, throughputs in `throughput.py`; `--calibration`
replaces the table's throughputs by those `s2l bench rollout --measured` wrote).
Exit status: 0 when everything fits, 3 when something does not (the reasons are printed), 2 for a
config error (a bad calibration file included). The formulas are in `megatron_s2l/plan/memory.py`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_s2l.archs import ModelArch, load_arch
from megatron_s2l.plan.memory import (
    SGLANG_DEFAULT_RESERVE_GIB,
    ColocatedPlan,
    EnginePlan,
    LearnerPlan,
    RunPlan,
    SharedPlan,
    explorer_pool_is_live,
    plan_run,
    shared_settings_note,
)
from megatron_s2l.plan.rollout_time import RolloutTimePlan, plan_rollout_time
from megatron_s2l.plan.throughput import (
    REFERENCE_CONTEXT,
    REFERENCE_POOL_GIB,
    REFERENCE_TP,
    Calibration,
    read_calibration,
)

if TYPE_CHECKING:
    from megatron_s2l.config import S2LConfig

EXIT_DOES_NOT_FIT = 3

PLACEMENT_NOTE = (
    "engines the trainer starts take the node's GPUs after its learner ranks' (and are planned on GPUs "
    "of their own); with rollout.colocate the learner engines share the learner ranks' GPUs"
)
SHARED_NOTE = (
    "rollout.explorer.placement shared: the explorer engines are planned on the learner engines' GPUs "
    "(explorer TP divides learner TP, one explorer engine per GPU at most) and start after the learner "
    "engines: the explorer's mem_fraction_static is a fraction of the memory the learner engines leave; "
    "the learner engines take the node's GPUs after its learner ranks'"
)
MODEL_HEADING = (
    "rollout time per step: a MODEL (decode tokens / (GPUs x output tokens/s per GPU)), not a measurement "
    "(docs/rollout_compute.md)"
)
LAYOUT_NAMES = {"dedicated": "S2L-PO dedicated", "shared": "S2L-PO shared", "grpo": "GRPO"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="YAML run config (yaml/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of --config")
    parser.add_argument("--gpu-mem-gib", type=float, default=80.0, help="one GPU's memory (default 80)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--calibration",
        type=Path,
        help="rollout_calibration.json of `s2l bench rollout --measured`: measured throughputs for the model",
    )
    parser.add_argument(
        "--mean-response-tokens",
        type=int,
        help="mean response length of both pools in the rollout-time model (default: each max_new_tokens)",
    )


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
    notes.append(SHARED_NOTE if plan_is_shared(cfg) else PLACEMENT_NOTE)
    if args.mean_response_tokens is not None and args.mean_response_tokens < 1:
        raise ValueError(f"--mean-response-tokens must be >= 1, got {args.mean_response_tokens}")
    calibration = read_calibration(args.calibration) if args.calibration else None
    plan = plan_run(cfg, learner_arch, explorer_arch, args.gpu_mem_gib)
    times = plan_rollout_time(
        cfg,
        learner_arch,
        explorer_arch,
        args.gpu_mem_gib,
        calibration=calibration,
        mean_response_tokens=args.mean_response_tokens,
    )
    if args.json:
        rollout = {
            **times.to_dict(),
            "model": MODEL_HEADING,
            "calibration": calibration_note(args, calibration),
        }
        print(json.dumps({**plan.to_dict(), "rollout_time": rollout, "notes": notes}, indent=2))
    else:
        print(format_plan(plan, notes))
        print()
        print(format_rollout_time(times, calibration_note(args, calibration)))
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


def plan_is_shared(cfg: S2LConfig) -> bool:
    return explorer_pool_is_live(cfg) and cfg.rollout.explorer.placement == "shared"


def calibration_note(args: argparse.Namespace, calibration: Calibration | None) -> str | None:
    if calibration is None:
        return None
    return f"{args.calibration} (measured on {calibration.device}: {', '.join(calibration.models)})"


def format_plan(plan: RunPlan, notes: list[str]) -> str:
    gpus = plan.gpus
    lines = [
        *format_learner(plan.learner, plan.gpu_mem_gib),
        "",
        *format_engines(plan.engines, plan.gpu_mem_gib),
        "",
        *(format_colocated(plan.colocated, plan.gpu_mem_gib) if plan.colocated else []),
        *(format_shared(plan.shared) if plan.shared else []),
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


def format_shared(plan: SharedPlan) -> list[str]:
    total = sum(plan.fractions.values())
    taken = " + ".join(
        f"{name} {plan.fractions[name]:.3f} (needs >= {plan.needed[name]:.3f})" for name in plan.fractions
    )
    return [
        f"shared (rollout.explorer.placement): explorer engines on the learner engines' GPUs, "
        f"{shared_settings_note(plan)}; of GPU memory {taken} = {total:.3f} "
        f"{'<=' if total <= plan.free_fraction + 1e-9 else '>'} {plan.free_fraction:.3f} (SGLang keeps "
        f"{SGLANG_DEFAULT_RESERVE_GIB} GiB per engine): {'fits' if plan.fits else 'does NOT fit'}",
        "",
    ]


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


def _seconds(seconds: float) -> str:
    if math.isinf(seconds):
        return "n/a"
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds:,.1f} s"


def _steps(steps: list[int]) -> str:
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"


def format_rollout_time(plan: RolloutTimePlan, calibration: str | None) -> str:
    """The rollout-time model as a table: per layout and phase, the GPUs serving each pool at their
    tokens/s per GPU, the seconds per step, and each layout's total over the run."""
    pools = list(plan.arch)
    figures = "; ".join(
        f"{pool} {plan.arch[pool]} {plan.throughput[pool].tokens_per_s:,.0f} tok/s at TP "
        f"{plan.throughput[pool].tp} ({plan.throughput[pool].source})"
        for pool in pools
    )
    lengths = "max_new_tokens of each pool's sampling"
    if plan.response_from != "max_new_tokens":
        lengths = plan.response_from
    lines = [
        MODEL_HEADING,
        f"  throughput per GPU, H100 bf16 (table: TP {REFERENCE_TP}, {REFERENCE_POOL_GIB:.1f} GiB pool, "
        f"{REFERENCE_CONTEXT:,.1f}-key context): {figures}",
        f"  calibration: {calibration or 'none (the table)'}",
        "  each figure scaled to the layout's TP, pool (weights + KV cache per GPU) and decode "
        "context (max_prompt_tokens + half the response): "
        + ", ".join(f"{pool} {plan.context[pool]:,.1f} keys" for pool in pools),
        "  decode tokens per step: prompts_per_step x samples per prompt x mean response ("
        + ", ".join(f"{pool} {plan.response_tokens[pool]:,}" for pool in pools)
        + f" tokens: {lengths})",
        "  phases: "
        + "; ".join(
            f"{p.name} ({_steps(p.steps)}): G_w {p.g_explorer:.2f} + G_s {p.g_learner:.2f} per prompt"
            for p in plan.phases
        ),
        f"{'layout (* = the config)':<24}{'phase':<14}{'steps':>6}{'explorer GPUs x tok/s':>23}"
        f"{'learner GPUs x tok/s':>22}{'idle':>6}{'s/step':>10}",
    ]
    totals = {}
    for layout in plan.layouts:
        totals[layout.layout] = plan.total_seconds(layout)
        rows = [(p.name, len(p.steps), t) for p, t in zip(plan.phases, layout.phases, strict=True)]
        if layout.layout == "grpo":  # the same at every step
            rows = [("every step", sum(len(p.steps) for p in plan.phases), layout.phases[0])]
        name = LAYOUT_NAMES[layout.layout] + (" *" if layout.layout == plan.configured else "")
        for label, steps, time in rows:
            explorer = (
                f"{time.explorer_gpus} x {layout.rates['explorer']:,.0f}" if time.explorer_gpus else "-"
            )
            learner = f"{time.learner_gpus} x {layout.rates['learner']:,.0f}" if time.learner_gpus else "-"
            lines.append(
                f"{name:<24}{label:<14}{steps:>6}{explorer:>23}{learner:>22}{time.idle_gpus:>6}"
                f"{_seconds(time.seconds):>10}"
            )
            name = ""
        if layout.note:
            lines.append(f"  ({layout.note})")
    grpo = totals["grpo"]
    summary = [
        f"{LAYOUT_NAMES[name]} {_seconds(total)}"
        + (f" ({total / grpo - 1:+.1%} vs GRPO)" if name != "grpo" and math.isfinite(total) else "")
        for name, total in totals.items()
    ]
    return "\n".join([*lines, "rollout over the run: " + ", ".join(summary)])
