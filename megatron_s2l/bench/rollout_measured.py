"""Measured mode of `s2l bench rollout`: the rollout phase of S2L-PO, GRPO and high-temperature GRPO
on real SGLang engines, on the same prompts, in one run (docs/rollout_compute.md).

    s2l bench rollout --measured --config yaml/demo-cpu.yaml [key.sub=value ...] [--steps N] [--hightemp 1.2]

Only the rollout phase runs: no learner, no reward, no weight sync. Every method runs on the same
hardware: GRPO's learner engines take the devices S2L-PO gives its explorer too (`bench_engines`).
The learner engines keep the base weights, which changes what is generated but not what generating
a token costs. Per method and step:
samples and tokens by source, wall seconds, and generation FLOPs (rollout_flops.py) from the
measured counts. Engines, tokenizer and data are imported inside `measure_rollouts` only. On GPUs
the measured tokens/s per engine GPU also become a calibration of `s2l plan`'s rollout-time model
(`calibration_of`).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_s2l.archs import ModelArch, load_arch
from megatron_s2l.bench.rollout_flops import flops_unit, generation_flops, mean_keys
from megatron_s2l.plan.memory import default_mem_fraction
from megatron_s2l.plan.throughput import Calibration, Throughput, model_key
from megatron_s2l.rollout.config import EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.records import Prompt, RolloutBatch

if TYPE_CHECKING:
    from megatron_s2l.config import S2LConfig
    from megatron_s2l.data import PromptDataset
    from megatron_s2l.rollout.engines import RolloutEngines
    from megatron_s2l.rollout.sampler import S2LGroupSampler

logger = logging.getLogger(__name__)

METHODS = ("s2l", "grpo", "hightemp")
METHOD_NAMES = {"s2l": "S2L-PO", "grpo": "GRPO", "hightemp": "high-temp GRPO"}
SOURCES = ("explorer", "learner")
HIGHTEMP_TEMPERATURE = 1.2
"""Learner temperature of high-temperature GRPO unless --hightemp says otherwise."""


class _SourceCounts:
    """What StepRecord and MethodTotals derive from their per-source counts."""

    __slots__ = ()
    samples: dict[str, int]
    tokens: dict[str, int]
    flops: dict[str, float]

    def mean_len(self, source: str) -> float:
        """Mean response tokens of the source's samples (0 without samples)."""
        return self.tokens[source] / self.samples[source] if self.samples[source] else 0.0

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())


CSV_FIELDS = (
    "method",
    "step",
    "g_explorer",
    "g_learner",
    "prompts",
    "prompt_len",
    *(f"{name}_{s}" for s in SOURCES for name in ("samples", "tokens", "mean_len", "flops")),
    "seconds",
    "tokens_per_s",
    "seconds_per_token",
    "flops",
)


@dataclass(frozen=True, slots=True)
class StepRecord(_SourceCounts):
    """The rollout phase of one method at one step."""

    method: str
    step: int
    g_explorer: int
    g_learner: int
    prompts: int
    prompt_len: float
    """Mean prompt tokens of the step's samples (the context their responses attend to)."""
    samples: dict[str, int]
    tokens: dict[str, int]
    """Response tokens generated, per source."""
    seconds: float
    """Wall seconds of the rollout phase (the sampler's call, from request to last response)."""
    flops: dict[str, float]
    """Generation FLOPs per source."""

    def to_row(self) -> dict[str, Any]:
        """One CSV row (CSV_FIELDS)."""
        per_source: dict[str, Any] = {}
        for s in SOURCES:
            per_source |= {
                f"samples_{s}": self.samples[s],
                f"tokens_{s}": self.tokens[s],
                f"mean_len_{s}": self.mean_len(s),
                f"flops_{s}": self.flops[s],
            }
        return {
            "method": self.method,
            "step": self.step,
            "g_explorer": self.g_explorer,
            "g_learner": self.g_learner,
            "prompts": self.prompts,
            "prompt_len": self.prompt_len,
            **per_source,
            "seconds": self.seconds,
            "tokens_per_s": self.total_tokens / self.seconds,
            "seconds_per_token": self.seconds / self.total_tokens if self.total_tokens else 0.0,
            "flops": self.total_flops,
        }


def step_record(
    method: str, batch: RolloutBatch, seconds: float, archs: Mapping[str, ModelArch]
) -> StepRecord:
    """What one rollout batch generated and cost; `archs` has the architecture of each source that
    sampled (the explorer's may be absent when it did not)."""
    records = [r for group in batch.groups for r in group.records]
    samples = {s: sum(r.source == s for r in records) for s in SOURCES}
    tokens = {s: sum(len(r.response_ids) for r in records if r.source == s) for s in SOURCES}
    # Every prompt has the same samples per source, so this is also each source's mean prompt length.
    prompt_len = sum(len(r.prompt_ids) for r in records) / len(records)
    flops = {
        s: generation_flops(archs[s], tokens[s], tokens[s] / samples[s], prompt_len) if samples[s] else 0.0
        for s in SOURCES
    }
    return StepRecord(
        method=method,
        step=batch.step,
        g_explorer=batch.g_explorer,
        g_learner=batch.g_learner,
        prompts=len(batch.groups),
        prompt_len=prompt_len,
        samples=samples,
        tokens=tokens,
        seconds=seconds,
        flops=flops,
    )


@dataclass(frozen=True, slots=True)
class MethodTotals(_SourceCounts):
    """One method's steps summed."""

    method: str
    steps: int
    samples: dict[str, int]
    tokens: dict[str, int]
    seconds: float
    flops: dict[str, float]

    def to_dict(self, baseline: MethodTotals) -> dict[str, Any]:
        """The totals, and FLOPs and seconds relative to `baseline` (GRPO)."""
        return {
            "steps": self.steps,
            **{f"samples_{s}": self.samples[s] for s in SOURCES},
            **{f"tokens_{s}": self.tokens[s] for s in SOURCES},
            **{f"mean_len_{s}": self.mean_len(s) for s in SOURCES},
            "seconds": self.seconds,
            "tokens_per_s": self.total_tokens / self.seconds,
            "seconds_per_token": self.seconds / self.total_tokens,
            **{f"flops_{s}": self.flops[s] for s in SOURCES},
            "flops": self.total_flops,
            "flops_vs_grpo": self.total_flops / baseline.total_flops,
            "seconds_vs_grpo": self.seconds / baseline.seconds,
        }


def method_totals(records: list[StepRecord]) -> dict[str, MethodTotals]:
    """Per method (in METHODS order), its steps summed."""
    totals = {}
    for method in METHODS:
        rows = [r for r in records if r.method == method]
        if rows:
            totals[method] = MethodTotals(
                method=method,
                steps=len(rows),
                samples={s: sum(r.samples[s] for r in rows) for s in SOURCES},
                tokens={s: sum(r.tokens[s] for r in rows) for s in SOURCES},
                seconds=sum(r.seconds for r in rows),
                flops={s: sum(r.flops[s] for r in rows) for s in SOURCES},
            )
    return totals


def _less(ratio: float) -> str:
    return f"{1 - ratio:.1%} less" if ratio <= 1 else f"{ratio - 1:.1%} more"


def format_table(totals: dict[str, MethodTotals], engines: str | None = None) -> str:
    """A Markdown table of the totals, ratios against GRPO, and a summary line for S2L-PO; headed by
    `engines` (BenchEngines.describe: what hardware each method ran on) when given."""
    grpo = totals["grpo"]
    scale, unit = flops_unit(max(t.total_flops for t in totals.values()))
    lines = [f"engines: {engines}", ""] if engines else []
    lines += [
        "| method | tokens explorer | tokens learner | mean len explorer | mean len learner | rollout s | "
        f"tokens/s | ms/token | rollout {unit} | FLOPs vs GRPO | time vs GRPO |",
        "|---|" + "---:|" * 10,
    ]
    for t in totals.values():
        tokens = " | ".join(f"{t.tokens[s]:,}" for s in SOURCES)
        mean_lens = " | ".join(f"{t.mean_len(s):.1f}" if t.samples[s] else "-" for s in SOURCES)
        lines.append(
            f"| {METHOD_NAMES[t.method]} | {tokens} | {mean_lens} | "
            f"{t.seconds:.2f} | {t.total_tokens / t.seconds:,.0f} | {1e3 * t.seconds / t.total_tokens:.3f} | "
            f"{t.total_flops / scale:,.3f} | {t.total_flops / grpo.total_flops:.3f} | "
            f"{t.seconds / grpo.seconds:.3f} |"
        )
    s2l = totals["s2l"]
    summary = [
        f"{_less(s2l.total_flops / t.total_flops)} rollout FLOPs and {_less(s2l.seconds / t.seconds)} "
        f"rollout time than {METHOD_NAMES[t.method]}"
        for t in totals.values()
        if t.method != "s2l"
    ]
    return "\n".join([*lines, "", "S2L-PO: " + "; ".join(summary)])


def write_csv(records: list[StepRecord], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(r.to_row() for r in records)
    return path


def plot_steps(records: list[StepRecord], path: Path) -> Path:
    """Rollout seconds and FLOPs per step, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = {"rollout seconds": lambda r: r.seconds, "rollout FLOPs": lambda r: r.total_flops}
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 4))
    for ax, (title, value) in zip(axes, panels.items(), strict=True):
        for method in METHODS:
            rows = [r for r in records if r.method == method]
            ax.plot([r.step for r in rows], [value(r) for r in rows], marker="o", label=METHOD_NAMES[method])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- calibration of `s2l plan`'s rollout-time model ---------------------------------------------------


def calibration_of(
    records: list[StepRecord], engines: BenchEngines, cfg: S2LConfig, device: str, gpu_mem_gib: float
) -> Calibration:
    """Measured output tokens/s per engine GPU of each model, for `s2l plan --calibration`: the
    learner's from the GRPO steps (its engines alone), the explorer's from the S2L-PO steps whose
    samples are all the explorer's (step 1 of a mixing schedule). A model without such steps is left
    out. Each figure keeps the setting it was measured at (TP, pool, mean decode context), which
    the planner scales from (plan/throughput.py)."""
    sources = {
        "learner": ("grpo", engines.grpo.learner, lambda r: True, cfg.model.learner),
        "explorer": ("s2l", engines.s2l.explorer, lambda r: r.g_learner == 0, cfg.model.explorer),
    }
    models = {}
    for source, (method, pool, keep, model) in sources.items():
        rows = [r for r in records if r.method == method and r.samples[source] and keep(r)]
        if not rows:
            continue
        samples = sum(r.samples[source] for r in rows)
        tokens = sum(r.tokens[source] for r in rows)
        prompt = sum(r.prompt_len * r.samples[source] for r in rows) / samples
        gpus = pool.num_engines * pool.engine.tp
        fraction = pool.engine.mem_fraction_static or default_mem_fraction(gpu_mem_gib)
        models[model_key(load_arch(model))] = Throughput(
            tokens_per_s=tokens / sum(r.seconds for r in rows) / gpus,
            tp=pool.engine.tp,
            pool_gib=fraction * gpu_mem_gib,
            context=mean_keys(prompt, tokens / samples),
            source=(
                f"s2l bench rollout --measured: {METHOD_NAMES[method]} steps "
                f"{', '.join(str(r.step) for r in rows)}, {source} {pool.num_engines} x TP {pool.engine.tp}"
            ),
        )
    return Calibration(device=device, gpu_mem_gib=gpu_mem_gib, models=models)


# --- equal hardware ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchEngines:
    """The engine pools each method's rollout runs on. GRPO (and high-temperature GRPO) get as many
    engine devices as S2L-PO's explorer and learner pools together, all as learner engines: the
    GPUs (on CPU the cores: placement.plan_cpu_cores splits them evenly over the engines) S2L-PO
    gives its explorer serve GRPO's learner, so "time vs GRPO" compares equal hardware."""

    s2l: RolloutConfig
    grpo: RolloutConfig
    equal: bool
    """False only where a pool attaches to engines started elsewhere (external_urls)."""

    def describe(self, with_explorer: bool) -> str:
        """One line for the output table's header."""
        device = self.s2l.learner.engine.resolved_device()
        unit = "GPUs" if device == "cuda" else "engine slots (the same cores, split evenly)"

        def pool(name: str, p: EnginePoolConfig) -> tuple[str, int]:
            return f"{name} {p.num_engines} x TP {p.engine.tp}", p.num_engines * p.engine.tp

        s2l = [
            pool("learner", self.s2l.learner),
            *([pool("explorer", self.s2l.explorer)] if with_explorer else []),
        ]
        grpo = pool("learner", self.grpo.learner)
        line = (
            f"S2L-PO: {' + '.join(text for text, _ in s2l)} = {sum(n for _, n in s2l)} {unit}; "
            f"GRPO and high-temp GRPO: {grpo[0]} = {grpo[1]} {unit}"
        )
        if not self.equal:
            line += (
                " (engines attached through external_urls: not placed by the bench, hardware not equalised)"
            )
        return line


def bench_engines(rollout: RolloutConfig, with_explorer: bool) -> BenchEngines:
    """S2L-PO's pools as configured; GRPO's learner pool with num_engines raised so that its engine
    devices (num_engines x tp) equal S2L-PO's explorer's and learner's together. Raises ValueError
    when the explorer's devices are not a multiple of the learner's TP (no equal split exists) or
    the pools are on different devices. Attached pools (external_urls) are used as given."""
    learner, explorer = rollout.learner, rollout.explorer
    if not with_explorer:
        return BenchEngines(s2l=rollout, grpo=rollout, equal=True)
    if learner.external_urls or explorer.external_urls:
        return BenchEngines(s2l=rollout, grpo=rollout, equal=False)
    if learner.engine.resolved_device() != explorer.engine.resolved_device():
        raise ValueError(
            "measured mode: rollout.learner and rollout.explorer engines must be on one device type"
        )
    explorer_devices = explorer.num_engines * explorer.engine.tp
    if explorer_devices % learner.engine.tp:
        raise ValueError(
            f"measured mode gives GRPO the explorer's {explorer_devices} devices (rollout.explorer: "
            f"{explorer.num_engines} x TP {explorer.engine.tp}) as learner engines of TP "
            f"{learner.engine.tp}: make them a multiple of rollout.learner.engine.tp"
        )
    grpo_learner = replace(learner, num_engines=learner.num_engines + explorer_devices // learner.engine.tp)
    return BenchEngines(s2l=rollout, grpo=replace(rollout, learner=grpo_learner), equal=True)


# --- running the engines --------------------------------------------------------------------------


def measure_rollouts(
    cfg: S2LConfig, engines_of: BenchEngines, *, steps: int, hightemp: float, log_dir: Path
) -> list[StepRecord]:
    """The rollout phase of every method at steps 1..`steps`, one record per method and step.

    Two engine sets on the same hardware (`bench_engines`), one after the other: S2L-PO's (explorer
    and learner, when t_mix > 0) and GRPO's (learner only, on the explorer's devices too), which
    both GRPO variants share. No learner ranks run here, so the engines take every GPU this
    process sees (learner_ranks=0), never skipping GPUs for a learner."""
    if not 1 <= steps <= cfg.schedule.steps:
        raise ValueError(f"--steps must be in [1, schedule.steps = {cfg.schedule.steps}], got {steps}")
    if cfg.rollout.explorer_cache_path is not None:
        raise ValueError("rollout.explorer_cache_path: measured mode samples the explorer live; unset it")

    with_explorer = cfg.schedule.t_mix > 0
    archs = {"learner": load_arch(cfg.model.learner)}
    if with_explorer:
        archs["explorer"] = load_arch(cfg.model.explorer)
    dataset = _train_prompts(cfg)
    logger.info(
        "measuring %d steps x %d prompts x G %d (T_mix %d); high-temp GRPO at temperature %s",
        steps,
        cfg.schedule.prompts_per_step,
        cfg.schedule.group_size,
        cfg.schedule.t_mix,
        hightemp,
    )
    records = []
    for name, explorer in (("s2l", with_explorer), ("grpo", False)):
        engines = method_engines(cfg, engines_of, name, log_dir).start()
        try:
            if name == "s2l":
                samplers = _s2l_samplers(engines, cfg)
            else:
                samplers = _grpo_samplers(engines, cfg, hightemp)
            _warm_up(engines, Prompt("warm-up", dataset.prompt_ids[0]), explorer)
            records += _measure_steps(engines, samplers, dataset, cfg, steps, archs)
        finally:
            engines.stop()
    return sorted(records, key=lambda r: (METHODS.index(r.method), r.step))


def method_engines(cfg: S2LConfig, engines_of: BenchEngines, method: str, log_dir: Path) -> RolloutEngines:
    """The (not yet started) engines of `method` ("s2l" or "grpo"), placed on every GPU this process
    sees: no learner rank runs here, so none is skipped (learner_ranks=0, whatever WORLD_SIZE says)."""
    from megatron_s2l.rollout.engines import RolloutEngines

    s2l = method == "s2l"
    return RolloutEngines(
        replace(engines_of.s2l if s2l else engines_of.grpo, log_dir=str(log_dir / method)),
        explorer_model=cfg.model.explorer if s2l and cfg.schedule.t_mix > 0 else None,
        learner_model=cfg.model.learner,
        learner_ranks=0,
    )


def _train_prompts(cfg: S2LConfig) -> PromptDataset:
    """The training prompts, loaded as the trainer loads them."""
    from transformers import AutoTokenizer

    from megatron_s2l.data import load_prompt_dataset
    from megatron_s2l.reward import check_data_source

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.learner)
    return load_prompt_dataset(cfg.data.train_files, tokenizer, cfg.data, check_source=check_data_source)


def _s2l_samplers(engines: RolloutEngines, cfg: S2LConfig) -> dict[str, S2LGroupSampler]:
    sched = cfg.schedule
    return {"s2l": engines.build_sampler(t_mix=sched.t_mix, group_size=sched.group_size, seed=cfg.seed)}


def _grpo_samplers(engines: RolloutEngines, cfg: S2LConfig, hightemp: float) -> dict[str, S2LGroupSampler]:
    from megatron_s2l.rollout.sampler import S2LGroupSampler

    group_size = cfg.schedule.group_size
    grpo = engines.build_sampler(t_mix=0, group_size=group_size, seed=cfg.seed)
    # build_sampler samples with the engines' rollout config; the hot sampler takes its own config
    # and shares GRPO's learner client (so, its engines).
    hot = replace(cfg.rollout, learner_sampling=replace(cfg.rollout.learner_sampling, temperature=hightemp))
    hot_sampler = S2LGroupSampler(None, grpo.learner, hot, t_mix=0, group_size=group_size, seed=cfg.seed)
    return {"grpo": grpo, "hightemp": hot_sampler}


def _warm_up(engines: RolloutEngines, prompt: Prompt, explorer: bool) -> None:
    """One untimed sample from each engine: a fresh server's first request pays one-off costs that
    would otherwise land on whichever method happens to ask first."""
    for t_mix in (1, 0) if explorer else (0,):  # step 1 of t_mix 1: the explorer; of t_mix 0: the learner
        engines.run(engines.build_sampler(t_mix=t_mix, group_size=1).sample([prompt], 1))


def _measure_steps(
    engines: RolloutEngines,
    samplers: dict[str, S2LGroupSampler],
    dataset: PromptDataset,
    cfg: S2LConfig,
    steps: int,
    archs: Mapping[str, ModelArch],
) -> list[StepRecord]:
    """Every sampler at every step, on the prompts the trainer would draw at that step."""
    from megatron_s2l.data import PromptSampler, prompt_id

    batches = PromptSampler(range(len(dataset)), shuffle=cfg.data.shuffle, seed=cfg.seed).batches(
        cfg.schedule.prompts_per_step
    )
    records = []
    for step in range(1, steps + 1):
        prompts = [Prompt(prompt_id("train", i), dataset.prompt_ids[i]) for i in next(batches)]
        for method, sampler in samplers.items():
            started = time.perf_counter()
            batch = engines.run(sampler.sample(prompts, step))
            record = step_record(method, batch, time.perf_counter() - started, archs)
            logger.info(
                "step %d/%d %s: %d explorer + %d learner tokens in %.2f s",
                step,
                steps,
                METHOD_NAMES[method],
                record.tokens["explorer"],
                record.tokens["learner"],
                record.seconds,
            )
            records.append(record)
    return records
