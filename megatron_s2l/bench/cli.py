"""`s2l bench rollout`: how much rollout compute S2L-PO spends against GRPO (docs/rollout_compute.md).

    # model mode: what a schedule implies, from the architectures and assumed lengths
    s2l bench rollout --learner qwen3-8b --explorer qwen3-1.7b --group-size 16 --steps 16 --t-mix 8
    # from-runs mode: what finished runs spent, relative to the first run given
    s2l bench rollout --runs runs/s2l runs/grpo [--learner qwen3-8b --explorer qwen3-1.7b]
    # measured mode: the rollout phase of S2L-PO, GRPO and high-temperature GRPO on real engines
    s2l bench rollout --measured --config yaml/demo-cpu.yaml [key.sub=value ...] [--steps N] [--out-dir DIR]

All print a Markdown table and a summary line, or JSON with --json; measured mode also writes a CSV
and a PNG per step, and runs every method on the same engine devices (its table's header says
which). Model mode imports neither Megatron nor SGLang.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_s2l.bench.rollout_flops import flops_unit

if TYPE_CHECKING:
    from megatron_s2l.bench.rollout_measured import BenchEngines, StepRecord
    from megatron_s2l.config import S2LConfig

# model-mode options that mean nothing for finished runs
_MODEL_ONLY = (
    "group_size",
    "steps",
    "t_mix",
    "prompts_per_step",
    "learner_len",
    "explorer_len",
    "hightemp_len",
)
_MEASURED_ONLY = ("config", "overrides", "out_dir", "hightemp")
# what measured mode takes from the config and the engines instead
_NOT_MEASURED = ("runs", "learner", "explorer", "prompt_len", *(n for n in _MODEL_ONLY if n != "steps"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser(
        "rollout", help="rollout FLOPs of S2L-PO vs GRPO: from a schedule, or from finished runs"
    )
    p.add_argument("--runs", nargs="+", type=Path, metavar="RUN_DIR", help="from-runs mode: run directories")
    p.add_argument(
        "--learner",
        help="bundled name (qwen3-8b) or HF dir; with --runs, only where the config's checkpoint is absent",
    )
    p.add_argument("--explorer", help="explorer, as --learner")
    p.add_argument("--group-size", type=int, help="samples per prompt G")
    p.add_argument("--steps", type=int, help="training steps T (--measured: the first N, default all)")
    p.add_argument("--t-mix", type=int, help="mixing steps T_mix (0: no explorer)")
    p.add_argument("--prompts-per-step", type=int, help="prompts per step (default 1024)")
    p.add_argument(
        "--prompt-len",
        type=int,
        help="mean prompt tokens (default: 512 in model mode, 0 = unknown in --runs)",
    )
    p.add_argument("--learner-len", type=int, help="mean response tokens of a learner sample (default 4096)")
    p.add_argument(
        "--explorer-len", type=int, help="mean response tokens of an explorer sample (= learner's)"
    )
    p.add_argument(
        "--hightemp-len", type=int, help="mean response tokens of high-temperature GRPO (= learner's)"
    )
    p.add_argument(
        "--measured", action="store_true", help="measured mode: run the rollout phases on real engines"
    )
    p.add_argument("--config", type=Path, help="measured mode: YAML run config (yaml/*.yaml)")
    p.add_argument("overrides", nargs="*", help="measured mode: key.sub=value overrides of --config")
    p.add_argument(
        "--hightemp",
        type=float,
        help="measured mode: learner temperature of high-temperature GRPO (default 1.2)",
    )
    p.add_argument(
        "--out-dir", type=Path, help="measured mode: CSV, PNG and engine logs (default bench_rollout/)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.measured:
        given = _given(args, _NOT_MEASURED)
        if given:
            raise ValueError(f"{', '.join(given)}: not options of --measured (the config gives them)")
        if args.config is None:
            raise ValueError("--measured needs --config YAML")
        return _run_measured(args)
    given = _given(args, _MEASURED_ONLY)
    if given:
        raise ValueError(f"{', '.join(given)}: options of --measured only")
    if args.runs:
        given = _given(args, _MODEL_ONLY)
        if given:
            raise ValueError(f"{', '.join(given)}: model-mode options; --runs reads them from the runs")
        return _run_from_runs(args)
    required = ("learner", "explorer", "group_size", "steps", "t_mix")
    missing = [_flag(name) for name in required if getattr(args, name) is None]
    if missing:
        raise ValueError(f"model mode needs {', '.join(missing)} (or give --runs RUN_DIR ...)")
    return _run_model(args)


def _flag(name: str) -> str:
    return "key=value overrides" if name == "overrides" else "--" + name.replace("_", "-")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [_flag(name) for name in names if getattr(args, name) not in (None, [])]


def _run_model(args: argparse.Namespace) -> int:
    from megatron_s2l.archs import load_arch
    from megatron_s2l.bench.rollout_model import METHODS, Lengths, compare_rollout_flops

    learner_len = 4096 if args.learner_len is None else args.learner_len
    lengths = Lengths(
        prompt=512 if args.prompt_len is None else args.prompt_len,
        learner=learner_len,
        explorer=learner_len if args.explorer_len is None else args.explorer_len,
        hightemp=learner_len if args.hightemp_len is None else args.hightemp_len,
    )
    result = compare_rollout_flops(
        load_arch(args.learner),
        load_arch(args.explorer),
        steps=args.steps,
        t_mix=args.t_mix,
        group_size=args.group_size,
        prompts_per_step=1024 if args.prompts_per_step is None else args.prompts_per_step,
        lengths=lengths,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    scale, unit = flops_unit(max(result.total(m) for m in METHODS))
    names = {"s2l": "S2L-PO", "grpo": "GRPO", "hightemp": "high-temp GRPO"}
    print(
        f"learner {result.learner.name} ({result.learner.param_count() / 1e9:.2f}B), explorer "
        f"{result.explorer.name} ({result.explorer.param_count() / 1e9:.2f}B); {result.prompts_per_step} "
        f"prompts x G={result.group_size} per step; mean tokens: prompt {lengths.prompt}, response "
        f"learner {lengths.learner}, explorer {lengths.explorer}, high-temp {lengths.hightemp}\n"
    )
    print("| step | alpha | G_w | G_s | " + " | ".join(f"{names[m]} ({unit})" for m in METHODS) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(METHODS))
    for r in result.rows:
        cells = " | ".join(f"{r.flops[m] / scale:,.3f}" for m in METHODS)
        print(f"| {r.step} | {r.alpha:.4f} | {r.g_explorer} | {r.g_learner} | {cells} |")
    totals = " | ".join(f"**{result.total(m) / scale:,.3f}**" for m in METHODS)
    print(f"| total | | | | {totals} |\n")
    print(
        f"S2L-PO rollout compute: {result.saved_vs('grpo'):.1%} less than GRPO, "
        f"{result.saved_vs('hightemp'):.1%} less than high-temperature GRPO "
        f"(explorer samples: {result.explorer_sample_share():.1%} of all; prefill, not counted: "
        f"{result.prefill['s2l'] / scale:,.3f} vs {result.prefill['grpo'] / scale:,.3f} {unit})"
    )
    return 0


def _run_from_runs(args: argparse.Namespace) -> int:
    from megatron_s2l.bench.rollout_runs import measure_run

    prompt_len = 0 if args.prompt_len is None else args.prompt_len
    runs = [
        measure_run(d, prompt_len=prompt_len, learner=args.learner, explorer=args.explorer) for d in args.runs
    ]
    first = runs[0]
    if args.json:
        rows = [
            {
                **r.to_dict(),
                "flops_vs_first": r.total_flops / first.total_flops,
                "seconds_vs_first": r.rollout_seconds / first.rollout_seconds
                if first.rollout_seconds
                else None,
            }
            for r in runs
        ]
        print(json.dumps({"mode": "runs", "prompt_len": prompt_len, "runs": rows}, indent=2))
        return 0
    scale, unit = flops_unit(max(r.total_flops for r in runs))
    print(
        "| run | learner | explorer | steps | tokens explorer | tokens learner | counted | rollout s | "
        f"rollout {unit} | vs first |"
    )
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r.run_dir} | {r.learner} | {r.explorer or '-'} | {r.steps} | {r.tokens['explorer']:,.0f} | "
            f"{r.tokens['learner']:,.0f} | {r.counted} | {r.rollout_seconds:,.1f} | "
            f"{r.total_flops / scale:,.3f} | {r.total_flops / first.total_flops:.3f} |"
        )
    context = f"prompts of {prompt_len} tokens" if prompt_len else "prompt length unknown (taken as 0)"
    print(f"\n{context}; 'counted': generated = every token generated, kept = the batch's tokens only")
    for other in runs[1:]:
        time_note = (
            f", {1 - first.rollout_seconds / other.rollout_seconds:.1%} less rollout time"
            if other.rollout_seconds
            else ""
        )
        print(
            f"{first.run_dir} spent {1 - first.total_flops / other.total_flops:.1%} less rollout compute "
            f"than {other.run_dir}{time_note}"
        )
    return 0


def _run_measured(args: argparse.Namespace) -> int:
    from megatron_s2l.bench import rollout_measured as measured
    from megatron_s2l.config import load_config

    cfg = load_config(args.config, args.overrides)
    sched = cfg.schedule
    steps = sched.steps if args.steps is None else args.steps
    hightemp = measured.HIGHTEMP_TEMPERATURE if args.hightemp is None else args.hightemp
    out_dir = Path("bench_rollout") if args.out_dir is None else args.out_dir
    engines = measured.bench_engines(cfg.rollout, with_explorer=sched.t_mix > 0)  # equal hardware
    records = measured.measure_rollouts(
        cfg, engines, steps=steps, hightemp=hightemp, log_dir=out_dir / "engine-logs"
    )
    csv_path = measured.write_csv(records, out_dir / "rollout_measured.csv")
    png_path = measured.plot_steps(records, out_dir / "rollout_measured.png")
    totals = measured.method_totals(records)
    calibration_path = _write_calibration(records, engines, cfg, out_dir / "rollout_calibration.json")
    context = {
        "config": str(args.config),
        "learner": cfg.model.learner,
        "explorer": cfg.model.explorer if sched.t_mix > 0 else None,
        "device": cfg.rollout.learner.engine.resolved_device(),
        "steps": steps,
        "t_mix": sched.t_mix,
        "group_size": sched.group_size,
        "prompts_per_step": sched.prompts_per_step,
        "prompt_len": sum(r.prompt_len for r in records) / len(records),
        "hightemp_temperature": hightemp,
        "engines": engines.describe(with_explorer=sched.t_mix > 0),
        "grpo_learner_engines": engines.grpo.learner.num_engines,
        "csv": str(csv_path),
        "png": str(png_path),
        "calibration": str(calibration_path) if calibration_path else None,
    }
    if args.json:
        methods = {m: t.to_dict(totals["grpo"]) for m, t in totals.items()}
        print(json.dumps({"mode": "measured", **context, "methods": methods}, indent=2))
        return 0
    c = context
    print(
        f"learner {c['learner']}, explorer {c['explorer'] or '-'} on {c['device']}; {steps} steps of "
        f"{c['prompts_per_step']} prompts x G={c['group_size']}, T_mix {c['t_mix']}; mean prompt "
        f"{c['prompt_len']:.1f} tokens; high-temp GRPO at temperature {hightemp}\n"
    )
    print(measured.format_table(totals, c["engines"]))
    print(f"\nper step: {csv_path}, {png_path}")
    if calibration_path:
        print(f"calibration of s2l plan's rollout-time model: {calibration_path} (s2l plan --calibration)")
    else:
        print("no calibration written: it needs the engines on GPUs (s2l plan models GPUs)")
    return 0


def _write_calibration(
    records: list[StepRecord], engines: BenchEngines, cfg: S2LConfig, path: Path
) -> Path | None:
    """The measured throughputs as `s2l plan --calibration` reads them (GPU runs only)."""
    import torch

    from megatron_s2l.bench.rollout_measured import calibration_of
    from megatron_s2l.plan.memory import GIB
    from megatron_s2l.plan.throughput import write_calibration

    if cfg.rollout.learner.engine.resolved_device() != "cuda" or not torch.cuda.is_available():
        return None
    device = torch.cuda.get_device_name(0)
    gpu_mem_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    calibration = calibration_of(records, engines, cfg, device, gpu_mem_gib)
    return write_calibration(path, calibration) if calibration.models else None
