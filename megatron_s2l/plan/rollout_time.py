"""A model of the rollout time per step, by phase, for three layouts of one run's engine GPUs
(`s2l plan`'s rollout table; docs/rollout_compute.md). A model, not a measurement:

    seconds per step = decode tokens per step / (GPUs x output tokens/s per GPU)

- Phases: `mixing`, the steps with explorer samples (G_w > 0: steps 1 .. T_mix - 1), at the mean
  G_w and G_s over them (`s2l_schedule`), and `after T_mix`, learner samples only.
- Decode tokens per step and pool: prompts_per_step x samples per prompt x mean response tokens
  (each pool's max_new_tokens, or one override). Prefill, rewards, dynamic sampling's extra rounds
  and the tail of a rollout (its last long responses decode at a small batch) are not counted.
- Tokens/s per GPU: throughput.py's figure (or a calibration's), moved to the engine's TP, its
  pool (weights + KV cache: mem_fraction_static x GPU memory; for a shared explorer, of what the
  learner engines leave) and its decode context (max_prompt_tokens + half the mean response).
- Engine GPUs: the learner's and the explorer's engines (`dedicated`), or the learner's (`shared`).
  On these GPUs:
  - `dedicated`: explorer engines on GPUs of their own, learner engines on the rest; a combined
    step takes the slower pool's time (they run side by side), an alternating one both in turn.
    After T_mix the explorer's GPUs serve as many learner engines as they hold
    (`rollout.explorer_hand_over`), or idle.
  - `shared`: both pools on the learner engines' GPUs (memory.plan_shared's fractions): a step takes
    the work of both pools over all of them, or the explorer's work over its GPUs if that is longer.
    After T_mix the learner engines keep the pool they started with (SGLang sizes it once).
  - `grpo`: learner engines on every engine GPU, G learner samples per prompt every step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from megatron_s2l.algo.schedule import s2l_schedule
from megatron_s2l.archs import ModelArch
from megatron_s2l.bench.rollout_flops import mean_keys
from megatron_s2l.plan.memory import (
    SharedPlan,
    default_mem_fraction,
    explorer_pool_is_live,
    plan_shared,
    shared_settings_note,
)
from megatron_s2l.plan.throughput import Calibration, Throughput, throughput_of

if TYPE_CHECKING:
    from megatron_s2l.config import S2LConfig
    from megatron_s2l.rollout.config import EnginePoolConfig


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    steps: list[int]
    g_explorer: float
    """Mean explorer samples per prompt over the phase's steps."""
    g_learner: float
    explorer_tokens: float
    """Decode tokens per step (prompts x samples x mean response)."""
    learner_tokens: float


@dataclass(frozen=True, slots=True)
class PhaseTime:
    """One layout in one phase: the GPUs serving each pool and the seconds per step (inf: a pool
    with work has no GPU or no throughput)."""

    explorer_gpus: int
    learner_gpus: int
    seconds: float
    idle_gpus: int = 0


@dataclass(frozen=True, slots=True)
class LayoutTime:
    layout: str
    rates: dict[str, float]
    """Output tokens/s per GPU of each pool's engines in this layout."""
    phases: list[PhaseTime]
    """Aligned with RolloutTimePlan.phases."""
    fractions: dict[str, float]
    """Each pool's weights + KV cache in this layout, as a fraction of GPU memory (its
    mem_fraction_static, but for a shared explorer: memory.SharedPlan)."""
    note: str = ""


@dataclass(frozen=True, slots=True)
class RolloutTimePlan:
    engine_gpus: int
    configured: str
    """The config's layout: `dedicated`, `shared` or (no live explorer) `grpo`."""
    hand_over: bool
    response_tokens: dict[str, int]
    response_from: str
    """Where the response lengths come from: max_new_tokens, or the override."""
    context: dict[str, float]
    """Mean keys a decode step of each pool attends over."""
    throughput: dict[str, Throughput]
    """The figure each pool's model starts from (table or calibration)."""
    arch: dict[str, str]
    phases: list[Phase]
    layouts: list[LayoutTime]

    def total_seconds(self, layout: LayoutTime) -> float:
        return sum(len(p.steps) * t.seconds for p, t in zip(self.phases, layout.phases, strict=True))

    def to_dict(self) -> dict:
        """JSON-ready: a layout that cannot run has null seconds."""

        def finite(seconds: float) -> float | None:
            return seconds if math.isfinite(seconds) else None

        layouts = []
        for layout in self.layouts:
            out = asdict(layout)
            for phase in out["phases"]:
                phase["seconds"] = finite(phase["seconds"])
            layouts.append({**out, "total_seconds": finite(self.total_seconds(layout))})
        return {**asdict(self), "layouts": layouts}


def pool_seconds(tokens: float, gpus: int, rate: float) -> float:
    """Seconds for `gpus` GPUs at `rate` tokens/s each to decode `tokens` (0 without tokens)."""
    if tokens <= 0:
        return 0.0
    return tokens / (gpus * rate) if gpus > 0 and rate > 0 else math.inf


def dedicated_time(
    phase: Phase, explorer_gpus: int, learner_gpus: int, rates: dict[str, float], concurrent: bool
) -> float:
    """The pools on disjoint GPUs: side by side (the slower one's time) or one after the other."""
    explorer = pool_seconds(phase.explorer_tokens, explorer_gpus, rates["explorer"])
    learner = pool_seconds(phase.learner_tokens, learner_gpus, rates["learner"])
    return max(explorer, learner) if concurrent else explorer + learner


def shared_time(phase: Phase, explorer_gpus: int, gpus: int, rates: dict[str, float]) -> float:
    """Both pools' work over all `gpus` (the learner engines'), but the explorer's no faster than its
    own `explorer_gpus` allow."""
    work = pool_seconds(phase.explorer_tokens, 1, rates["explorer"]) + pool_seconds(
        phase.learner_tokens, 1, rates["learner"]
    )
    together = work / gpus if gpus > 0 else (math.inf if work else 0.0)
    return max(together, pool_seconds(phase.explorer_tokens, explorer_gpus, rates["explorer"]))


def phases_of(cfg: S2LConfig, response: dict[str, int], live_explorer: bool) -> list[Phase]:
    """The run's mixing phase and the one after it (either may be absent), with their decode tokens;
    explorer samples from a cache (`live_explorer` False) cost no decoding here."""
    s = cfg.schedule
    rows = s2l_schedule(s.steps, s.t_mix, s.group_size, s.rounding)
    phases = []
    for name, part in (
        ("mixing", [r for r in rows if r.g_explorer > 0]),
        ("after T_mix" if s.t_mix else "every step", [r for r in rows if r.g_explorer == 0]),
    ):
        if not part:
            continue
        g_explorer = sum(r.g_explorer for r in part) / len(part)
        g_learner = sum(r.g_learner for r in part) / len(part)
        explorer_tokens = s.prompts_per_step * g_explorer * response["explorer"]
        phases.append(
            Phase(
                name=name,
                steps=[r.step for r in part],
                g_explorer=g_explorer,
                g_learner=g_learner,
                explorer_tokens=explorer_tokens if live_explorer else 0.0,
                learner_tokens=s.prompts_per_step * g_learner * response["learner"],
            )
        )
    return phases


def whole_engines(gpus: int, tp: int) -> int:
    """GPUs of `gpus` that engines of TP `tp` use (the rest idle)."""
    return gpus // tp * tp


def plan_rollout_time(
    cfg: S2LConfig,
    learner_arch: ModelArch,
    explorer_arch: ModelArch | None,
    gpu_mem_gib: float,
    *,
    calibration: Calibration | None = None,
    mean_response_tokens: int | None = None,
) -> RolloutTimePlan:
    """The model of the module doc for `cfg` on GPUs of `gpu_mem_gib`."""
    rollout, live = cfg.rollout, explorer_pool_is_live(cfg)
    if live and explorer_arch is None:
        raise ValueError("the explorer pool samples live (schedule.t_mix > 0): give its architecture")
    pools: dict[str, EnginePoolConfig] = {"learner": rollout.learner, "explorer": rollout.explorer}
    archs = {"learner": learner_arch, "explorer": explorer_arch or learner_arch}
    sampled = {"learner": rollout.learner_sampling, "explorer": rollout.explorer_sampling}
    response = {
        name: mean_response_tokens or sampled[name].max_new_tokens for name in ("explorer", "learner")
    }
    context = {name: mean_keys(cfg.data.max_prompt_tokens, response[name]) for name in response}
    figures = {name: throughput_of(archs[name], calibration) for name in archs}

    def rate(name: str, fraction: float) -> float:
        return figures[name].at(archs[name], pools[name].engine.tp, fraction * gpu_mem_gib, context[name])

    learner_gpus = rollout.learner.num_engines * rollout.learner.engine.tp
    explorer_gpus = rollout.explorer.num_engines * rollout.explorer.engine.tp if live else 0
    shared_config = live and rollout.explorer.placement == "shared"
    engine_gpus = learner_gpus if shared_config else learner_gpus + explorer_gpus
    phases = phases_of(cfg, response, live)
    # The dedicated layout's fractions: the configured ones, unless they were set for sharing.
    default = default_mem_fraction(gpu_mem_gib)
    dedicated = {
        name: (None if shared_config else pools[name].engine.mem_fraction_static) or default for name in pools
    }
    dedicated_rates = {name: rate(name, dedicated[name]) for name in pools}
    layouts = [_grpo(cfg, phases, engine_gpus, response["learner"], dedicated_rates, dedicated)]
    configured = "grpo"
    if live:
        assert explorer_arch is not None
        configured = "shared" if shared_config else "dedicated"
        dedicated_layout = _dedicated(cfg, phases, engine_gpus, explorer_gpus, dedicated_rates, dedicated)
        if rollout.colocate:  # the explorer never shares colocated engines' GPUs (rollout/config.py)
            layouts = [dedicated_layout, *layouts]
        else:
            shared_plan = plan_shared(
                cfg if shared_config else _shared_everywhere(cfg, engine_gpus),
                learner_arch,
                explorer_arch,
                gpu_mem_gib,
                use_configured=shared_config,
            )
            shared_rates = {name: rate(name, shared_plan.fractions[name]) for name in pools}
            shared_layout = _shared(cfg, phases, engine_gpus, shared_config, shared_plan, shared_rates)
            layouts = [dedicated_layout, shared_layout, *layouts]
    elif cfg.schedule.t_mix > 0:  # explorer samples from the cache: the learner's engines only
        configured = "dedicated"
        cached = _dedicated(cfg, phases, engine_gpus, 0, dedicated_rates, dedicated)
        layouts = [
            replace(cached, note="explorer samples from rollout.explorer_cache_path: not decoded"),
            *layouts,
        ]
    return RolloutTimePlan(
        engine_gpus=engine_gpus,
        configured=configured,
        hand_over=rollout.explorer_hand_over,
        response_tokens=response,
        response_from="--mean-response-tokens" if mean_response_tokens else "max_new_tokens",
        context=context,
        throughput=figures if live else {"learner": figures["learner"]},
        arch={name: archs[name].name for name in (pools if live else ["learner"])},
        phases=phases,
        layouts=layouts,
    )


def _grpo(
    cfg: S2LConfig,
    phases: list[Phase],
    engine_gpus: int,
    response: int,
    rates: dict[str, float],
    fractions: dict[str, float],
) -> LayoutTime:
    """Learner engines on every engine GPU, G learner samples per prompt at every step."""
    gpus = whole_engines(engine_gpus, cfg.rollout.learner.engine.tp)
    tokens = cfg.schedule.prompts_per_step * cfg.schedule.group_size * response
    step = PhaseTime(0, gpus, pool_seconds(tokens, gpus, rates["learner"]), engine_gpus - gpus)
    learner = {"learner": rates["learner"]}
    return LayoutTime("grpo", learner, [step for _ in phases], {"learner": fractions["learner"]})


def _dedicated(
    cfg: S2LConfig,
    phases: list[Phase],
    engine_gpus: int,
    explorer_gpus: int,
    rates: dict[str, float],
    fractions: dict[str, float],
) -> LayoutTime:
    rollout = cfg.rollout
    tp = rollout.learner.engine.tp
    learner_gpus = whole_engines(engine_gpus - explorer_gpus, tp)
    successors = whole_engines(explorer_gpus, tp) if rollout.explorer_hand_over else 0
    concurrent = cfg.schedule.mode == "combined"
    if learner_gpus == 0:
        note = f"the explorer's {explorer_gpus} GPUs leave none of the {engine_gpus} to the learner engines"
        times = [PhaseTime(explorer_gpus, 0, math.inf) for _ in phases]
        return LayoutTime("dedicated", rates, times, fractions, note)
    times = []
    for phase in phases:
        if phase.explorer_tokens > 0:
            seconds = dedicated_time(phase, explorer_gpus, learner_gpus, rates, concurrent)
            times.append(
                PhaseTime(explorer_gpus, learner_gpus, seconds, engine_gpus - explorer_gpus - learner_gpus)
            )
        else:
            gpus = learner_gpus + successors
            times.append(
                PhaseTime(
                    0, gpus, pool_seconds(phase.learner_tokens, gpus, rates["learner"]), engine_gpus - gpus
                )
            )
    note = f"explorer_hand_over {'on' if rollout.explorer_hand_over else 'off'}"
    return LayoutTime("dedicated", rates, times, fractions, note)


def _shared_everywhere(cfg: S2LConfig, engine_gpus: int) -> S2LConfig:
    """`cfg` with its explorer engines shared on every learner engine GPU (the layout a dedicated
    config is compared with)."""
    rollout = cfg.rollout
    tp = rollout.learner.engine.tp
    learner = replace(rollout.learner, num_engines=max(engine_gpus // tp, 1), external_urls=[])
    per_gpu = whole_engines(engine_gpus, tp) // rollout.explorer.engine.tp
    explorer = replace(rollout.explorer, placement="shared", num_engines=max(per_gpu, 1), external_urls=[])
    return replace(cfg, rollout=replace(rollout, learner=learner, explorer=explorer))


def _shared(
    cfg: S2LConfig,
    phases: list[Phase],
    engine_gpus: int,
    configured: bool,
    plan: SharedPlan,
    rates: dict[str, float],
) -> LayoutTime:
    rollout = cfg.rollout
    gpus = whole_engines(engine_gpus, rollout.learner.engine.tp)
    explorer_gpus = rollout.explorer.num_engines * rollout.explorer.engine.tp if configured else gpus
    if not plan.fits:
        times = [PhaseTime(0, 0, math.inf) for _ in phases]
        return LayoutTime("shared", rates, times, plan.fractions, plan.reasons[0])
    times = [
        PhaseTime(explorer_gpus, gpus, shared_time(phase, explorer_gpus, gpus, rates), engine_gpus - gpus)
        if phase.explorer_tokens > 0
        else PhaseTime(
            0, gpus, pool_seconds(phase.learner_tokens, gpus, rates["learner"]), engine_gpus - gpus
        )
        for phase in phases
    ]
    return LayoutTime("shared", rates, times, plan.fractions, shared_settings_note(plan))
