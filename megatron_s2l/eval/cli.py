"""`s2l eval`: evaluate models on evaluation files the way the S2L-PO paper reports them.

    s2l eval --model HF_DIR [--model RUN_DIR@STEP ...] --data aime24.parquet [--data csqa.parquet ...] \
        [--n 16] [--template chat-no-think-suffix|chat|raw] [--output results.json] [--plot curves.png] \
        [--samples samples.jsonl] [--temperature 0.7 --top-p 0.8 --top-k 20 --presence-penalty 1.5] \
        [--max-new-tokens 38912] [--tp 1 --gpus 0,1,... --num-engines N] [--context-length L]

The defaults are the authors' no-think protocol (their eval/inference.py): the chat template with
" /no_think" ending the user message, temperature 0.7, top_p 0.8, top_k 20, presence penalty 1.5,
up to 38,912 new tokens (capped to the model's context less the longest prompt), n = 16 samples per
problem. Every model is served by SGLang engines started as training starts them (one model after
another): on GPUs each engine on its own `--tp` of `--gpus` (default: every visible GPU; as many
engines as fit unless `--num-engines` says), on CPU on its own cores. `RUN_DIR@STEP` exports that
run checkpoint to `RUN_DIR/export/step_NNNNNN` first (kept for the next evaluation; `s2l export`
does the same on its own). Output: unbiased pass@k for k = 1, 2, 4, ..., n, avg@n (= pass@1) and maj@n,
overall and per `data_source`, as a markdown table and `--output` JSON; `--plot` draws pass@k against
k for every model on shared axes; `--samples` writes every scored response as JSONL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from megatron_s2l.data.templates import PROMPT_TEMPLATES
from megatron_s2l.eval import protocol
from megatron_s2l.eval.score import ProblemResult, summarize
from megatron_s2l.rollout.placement import parse_gpus, plan_cpu_cores, plan_pool_gpus

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="HF checkpoint directory, or RUN_DIR@STEP (repeatable)",
    )
    parser.add_argument("--data", action="append", required=True, help="verl-format eval file (repeatable)")
    # The defaults are the protocol's (eval/protocol.py), which in-run evaluation starts from too.
    parser.add_argument(
        "--n",
        type=int,
        default=protocol.SAMPLES_PER_PROBLEM,
        help="samples per problem (avg@n, pass@k up to n)",
    )
    parser.add_argument("--template", choices=PROMPT_TEMPLATES, default=protocol.TEMPLATE)
    parser.add_argument("--temperature", type=float, default=protocol.TEMPERATURE)
    parser.add_argument("--top-p", type=float, default=protocol.TOP_P)
    parser.add_argument("--top-k", type=int, default=protocol.TOP_K)
    parser.add_argument("--presence-penalty", type=float, default=protocol.PRESENCE_PENALTY)
    parser.add_argument(
        "--max-new-tokens", type=int, default=protocol.MAX_NEW_TOKENS, help="capped to the context left"
    )
    parser.add_argument("--max-prompt-tokens", type=int, default=4096, help="longer prompts are dropped")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-sample sampling seeds")
    parser.add_argument(
        "--num-engines",
        type=int,
        help="SGLang servers per model (default: on GPUs as many as --gpus hold at --tp; on CPU 1)",
    )
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size of each server")
    parser.add_argument(
        "--gpus", help="comma-separated GPU ids for the servers, --tp each (default: all visible)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="engine device")
    parser.add_argument("--context-length", type=int, help="server context (default: the model's)")
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--plot", type=Path, help="write a pass@k-versus-k PNG here")
    parser.add_argument("--samples", type=Path, help="write every scored sample here (JSONL)")
    parser.add_argument("--log-dir", type=Path, default=Path("logs/eval"), help="engine logs")


def resolve_model(spec: str) -> tuple[str, Path]:
    """(display name, HF directory) of a `--model`: an HF directory, or RUN_DIR@STEP (exported)."""
    if "@" in spec and not Path(spec).exists():
        from megatron_s2l.run.export import export_run_step, parse_run_step

        run_dir, step = parse_run_step(spec)
        return f"{run_dir.name}@{step}", export_run_step(run_dir, step)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"--model {spec!r}: not an HF checkpoint directory (no config.json) nor RUN_DIR@STEP"
        )
    return path.name, path


@dataclass(frozen=True, slots=True)
class EnginePlacement:
    """Where the evaluation servers run: each its own `tp` GPUs, or on CPU its own cores."""

    num_engines: int
    gpus: list[list[str]] | None
    cores: list[frozenset[int]] | None


def place_engines(args: argparse.Namespace, device: str) -> EnginePlacement:
    """The servers of `s2l eval`, placed as `s2l serve` places them (rollout/placement.py): on GPUs
    `--num-engines` (default: as many as `--gpus` hold at `--tp`) on GPUs of their own, an error
    when they do not fit; on CPU `--num-engines` (default 1) on disjoint cores."""
    if args.num_engines is not None and args.num_engines < 1:
        raise ValueError(f"--num-engines must be >= 1, got {args.num_engines}")
    if device == "cpu":
        if args.gpus is not None:
            raise ValueError("--gpus: the engines run on CPU (--device cpu, or no GPU is visible)")
        num_engines = args.num_engines or 1
        return EnginePlacement(num_engines, None, plan_cpu_cores([num_engines])[0])
    try:
        gpus = plan_pool_gpus(args.tp, parse_gpus(args.gpus), args.num_engines)
    except ValueError as error:
        raise ValueError(f"--num-engines/--tp/--gpus: {error}") from error
    return EnginePlacement(len(gpus), gpus, None)


def model_report(name: str, n: int, results: list[ProblemResult]) -> dict:
    """One entry of the results JSON: the overall summary and one per data source."""
    by_source: dict[str, list[ProblemResult]] = defaultdict(list)
    for result in results:
        by_source[result.data_source].append(result)
    return {
        "model": name,
        "n": n,
        **summarize(results, n),
        "by_source": {source: summarize(rs, n) for source, rs in sorted(by_source.items())},
    }


def markdown_table(reports: list[dict]) -> str:
    """Rows: model x (all, each source); columns: problems, avg@n, pass@k..., maj@n."""
    ks = list(reports[0]["pass@k"])
    header = ["model", "source", "problems", "avg@n", *(f"pass@{k}" for k in ks), "maj@n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for report in reports:
        for source, row in [("all", report), *report["by_source"].items()]:
            cells = [row["avg@n"], *(row["pass@k"][k] for k in ks), row["maj@n"]]
            values = " | ".join(f"{v:.4f}" for v in cells)
            lines.append(f"| {report['model']} | {source} | {row['problems']} | {values} |")
    return "\n".join(lines)


def plot_pass_at_k(reports: list[dict], path: Path) -> Path:
    """pass@k against k (log-2 axis) for every model on shared axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for report in reports:
        ks = [int(k) for k in report["pass@k"]]
        ax.plot(ks, list(report["pass@k"].values()), marker="o", label=report["model"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (unbiased)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _evaluate_model(
    name: str, model_dir: Path, args: argparse.Namespace, place: EnginePlacement, samples_out
) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from megatron_s2l.data import DataConfig, load_prompt_dataset
    from megatron_s2l.eval.score import sample_and_score
    from megatron_s2l.reward import RewardConfig, RewardScorer, check_data_source
    from megatron_s2l.rollout.client import RolloutClient
    from megatron_s2l.rollout.config import ClientConfig, EngineConfig, EnginePoolConfig
    from megatron_s2l.rollout.pool import EnginePool
    from megatron_s2l.rollout.sampling_params import SamplingConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data_cfg = DataConfig(template=args.template, max_prompt_tokens=args.max_prompt_tokens, shuffle=False)
    dataset = load_prompt_dataset(args.data, tokenizer, data_cfg, check_source=check_data_source)
    context = args.context_length or AutoConfig.from_pretrained(model_dir).max_position_embeddings
    requested = SamplingConfig(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        presence_penalty=args.presence_penalty,
        max_new_tokens=args.max_new_tokens,
    )
    try:
        sampling = protocol.cap_to_context(requested, context, max(map(len, dataset.prompt_ids)))
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error
    if sampling.max_new_tokens < args.max_new_tokens:
        logger.info(
            "%s: max new tokens %d (context %d less the longest prompt)",
            name,
            sampling.max_new_tokens,
            context,
        )
    engine = EngineConfig(tp=args.tp, device=args.device, context_length=args.context_length)
    pool_cfg = EnginePoolConfig(num_engines=place.num_engines, engine=engine)
    pool = EnginePool("eval", model_dir, pool_cfg, args.log_dir, place.cores, place.gpus)
    client_cfg = ClientConfig(max_concurrency=8 * place.num_engines, request_timeout_s=24 * 3600.0)
    scorer = RewardScorer(RewardConfig(num_workers=max(1, min(4, (os.cpu_count() or 1) // 2))))
    logger.info("%s: %d problems x %d samples from %s", name, len(dataset), args.n, model_dir)
    try:
        with pool, asyncio.Runner() as loop:
            client = RolloutClient(pool, "learner", client_cfg)  # the policy under evaluation
            coroutine = sample_and_score(
                client, dataset, tokenizer, scorer, n=args.n, sampling=sampling, seed=args.seed
            )
            results = loop.run(coroutine)
    finally:
        scorer.close()
    if samples_out is not None:
        for result in results:
            record = dataset[result.index]
            for j, (text, pred, ok) in enumerate(
                zip(result.responses, result.predictions, result.correct, strict=True)
            ):
                row = {
                    "model": name,
                    "problem": result.index,
                    "data_source": result.data_source,
                    "ground_truth": record.ground_truth,
                    "sample": j,
                    "response": text,
                    "pred": pred,
                    "correct": ok,
                }
                samples_out.write(json.dumps(row) + "\n")
    return model_report(name, args.n, results)


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    from megatron_s2l.rollout.config import EngineConfig

    # Placement and every spec are checked before any export or engine starts.
    place = place_engines(args, EngineConfig(tp=args.tp, device=args.device).resolved_device())
    models = [resolve_model(spec) for spec in args.model]
    samples_out = open(args.samples, "w") if args.samples else None  # noqa: SIM115 (closed below)
    try:
        reports = [_evaluate_model(name, path, args, place, samples_out) for name, path in models]
    finally:
        if samples_out is not None:
            samples_out.close()
    print(markdown_table(reports))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"results": reports}, indent=2) + "\n")
    if args.plot:
        plot_pass_at_k(reports, args.plot)
    return 0
