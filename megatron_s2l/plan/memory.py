"""Per-GPU memory of the learner and of each SGLang engine pool, from architectures and the run config.

Everything is counted from the architecture's fields (no weights, no GPU). Formulas:

Learner parameters per rank (stage p of PP, TP ranks):
    layers/PP x (layer matmuls / TP + layer norms)          every stage
  + padded_vocab / TP x hidden                              the embedding, first stage
  + padded_vocab / TP x hidden + hidden                     output layer and final norm, last stage
The vocabulary is padded as the learner pads it (`padded_vocab_size`: a multiple of
`vocab_pad_multiple` x TP). Norm weights are replicated over TP, not split. A tied model (Qwen3 up
to 4B) has no output layer of its own, but with PP > 1 Megatron keeps a copy of the embedding on the
last stage, so the output-layer term is there for tied models too when PP > 1. The stage with the
most parameters is `params_per_gpu`; tests/integration/test_plan_params.py checks every stage
against a meta-device Megatron GPTModel at TP 2 x PP 2.

Learner bytes per parameter (Megatron's formula, docs/design.md 5: 18 bytes without the
distributed optimizer, 6 + 12/DP with it): bf16 weights 2 + fp32 main gradients 4 (the DDP buffer,
`grad_reduce_in_fp32`) + optimizer 12 (fp32 master copy 4, Adam m 4, v 4), the optimizer's share
divided by DP with the distributed optimizer. fp32 parameters (`params_dtype: float32`) have no
master copy: 4 + 4 + 8.

Activations per micro-batch and layer (Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models", tensor parallelism without sequence parallelism, as the learner runs):
s x b x h x (10 + 24/TP) bytes at 16-bit, s = max_prompt_tokens + the longest max_new_tokens
sampled, b = micro_batch_size; with `max_tokens_per_micro_batch` s x b is that budget (or one
longest sequence, if longer). The paper's attention-score term 5as/(h TP) is left out: TE's fused
(flash) attention of the GPU image keeps no s x s scores. With full recompute (the learner's
`recompute_activations`) a layer keeps only its bf16 input, 2 x s x b x h, plus, in backward, the
activations of the one layer being recomputed. Under 1F1B, stage p holds min(PP - p, micro-batches)
micro-batches in flight.

Logits (last stage, one micro-batch at a time): b x s x padded_vocab/TP x the parameter bytes: one
copy in the model's dtype, which the log-prob op keeps for backward and overwrites with the gradient
(`learner/grpo_step.py`: no fp32 copy, no slice, `inplace_backward`). With
`learner.fused_output_layer`: one chunk of logits (`kernels.default_chunk_size`) plus the fp32
accumulator of the output weight's gradient, vocab/TP x hidden x 4 bytes.

Reference policy (KL loss on): its weights at the parameter dtype on every rank, in the learner's
layout. With `reference_offload` they live in host memory and visit the GPU for the reference
forward only, when no training activations are held: that moment is planned as its own peak.

Not counted: the CUDA context, NCCL and pipeline buffers, allocator fragmentation: keep headroom.

SGLang engines (per GPU of a server at TP t, dtype bf16 unless set):
    weights            = parameters x 2 / t
    KV bytes per token = 2 (K, V) x layers x max(1, kv_heads / t) x head_dim x 2
    KV tokens          = (mem_fraction_static x GPU memory - weights) / KV bytes per token
    sequences at once  = KV tokens // (max_prompt_tokens + max_new_tokens)
capped by the engine's max_total_tokens, context_length and max_running_requests when set. An unset
mem_fraction_static is planned as SGLang 0.5's default on GPUs above 60 GB: (memory - 10 GiB) / memory.

Colocated (`rollout.colocate`: each learner engine on learner ranks' GPUs). SGLang 0.5.23 sizes its
pool once, at start-up, from the memory free *then* (`KVCacheConfigurator._profile_available_bytes`:
KV budget = free after its weights - free before them x (1 - mem_fraction_static)), so with R GiB of
learner state resident when the engine starts:
    engine pool (weights + KV) = mem_fraction_static x (GPU memory - R)
    per GPU during rollouts    = R + engine pool       (the rest is SGLang's runtime headroom)
    per GPU during training    = the learner's peak    (the engines have released weights, KV cache
                                                        and CUDA graphs)
R is the learner's weights, gradients and optimizer state (all of it: the trainer creates the Adam
state before the engines start), plus the KL reference when it lives on the GPU; with
`learner.offload_during_rollout` the gradients and optimizer state are on the host then, so R is the
weights (+ reference), and the host needs the difference in pinned memory per GPU.

Shared placement (`rollout.explorer.placement: shared`, `plan_shared`): each explorer engine runs on
GPUs of one learner engine (rule: the explorer's TP divides the learner's, and explorer engines x TP
<= the learner engines' GPUs, so a GPU holds one learner engine and at most one explorer engine). The
learner engine starts first, on an empty GPU, and the explorer's once it is healthy; SGLang sizes a
pool from the memory free at its start (above), so with r = SGLANG_DEFAULT_RESERVE_GIB / GPU memory
(the learner engine's memory outside its pool) the pools take, as fractions of GPU memory:
    learner  f_L = its mem_fraction_static
    explorer f_E = its mem_fraction_static x (1 - f_L - r)        (`_explorer_base`)
and must fit side by side beside SGLang's runtime overhead, r per engine:
    f_L + f_E <= 1 - 2r
    each f >= (its weights per GPU + one sequence's KV cache) / GPU memory               ("needed")
An unset mem_fraction_static is computed: one unset takes what the other leaves (f_L + f_E = 1 - 2r,
solved for it); both unset, the learner gets its need plus its share of what both needs leave, in
proportion to the KV cache each pool fills over the run (its samples over the schedule x
max_new_tokens x KV bytes per token), and the explorer what the learner leaves. Values are rounded
down to 0.001.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Literal

from megatron_s2l.algo.schedule import ScheduleConfig, s2l_schedule
from megatron_s2l.archs import ModelArch
from megatron_s2l.kernels import default_chunk_size
from megatron_s2l.learner.hf_config import padded_vocab_size
from megatron_s2l.learner.micro_batches import micro_batch_rows
from megatron_s2l.learner.parallel import check_parallel_sizes
from megatron_s2l.rollout.placement import shared_gpu_fit_errors

if TYPE_CHECKING:
    from megatron_s2l.config import S2LConfig
    from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig

GIB = 2**30
MAIN_GRAD_BYTES = 4
"""Megatron DDP's gradient buffer is fp32 (`grad_reduce_in_fp32=True` in `wrap_for_training`)."""
ADAM_STATE_BYTES = 8
"""Adam's fp32 first and second moments."""
SGLANG_DEFAULT_RESERVE_GIB = 10
"""What SGLang 0.5 leaves outside its static pool at least, on GPUs above 60 GB, when
mem_fraction_static is unset (`_handle_gpu_memory_settings`)."""
_DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}

Reference = Literal["none", "gpu", "host"]


@dataclass(frozen=True, slots=True)
class LearnerSetup:
    """What the learner's memory depends on, read from the run config."""

    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    tokens_per_micro_batch: int
    """Padded tokens of the largest micro-batch: micro_batch_size x seq_len, or the token budget."""
    micro_batches: int
    """Micro-batches per DP rank in one optimizer update (caps the 1F1B micro-batches in flight)."""
    seq_len: int
    """Longest sequence: max_prompt_tokens + the longest max_new_tokens of the sources trained on."""
    param_bytes: int
    """2 for bf16 (`params_dtype` auto or bfloat16: the plan is for GPUs), 4 for float32."""
    distributed_optimizer: bool
    recompute: bool
    vocab_pad_multiple: int
    fused_output: bool
    """`learner.fused_output_layer`: log-probs from hidden states a chunk of tokens at a time."""
    reference: Reference
    """Where the KL loss's reference weights live; `none` without the KL loss."""


@dataclass(frozen=True, slots=True)
class LearnerPlan:
    """Parameters and bytes of one learner rank per pipeline stage, the worst stage in detail."""

    arch: str
    setup: LearnerSetup
    padded_vocab: int
    params_per_stage: list[int]
    worst_stage: int
    """The pipeline stage with the largest total (its components are `gib`)."""
    gib: dict[str, float]
    """Components of the worst stage: weights, grads, optimizer, reference, activations, logits."""
    total_gib: float
    """The worst stage's peak: the training peak, or the offloaded reference's forward if larger."""
    fits: bool

    @property
    def params_per_gpu(self) -> int:
        return max(self.params_per_stage)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["params_per_gpu"] = self.params_per_gpu
        return out


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """One GPU of a server of an engine pool (the pool's servers are alike)."""

    pool: str
    arch: str
    num_engines: int
    tp: int
    mem_fraction_static: float
    weights_gib: float
    """Per GPU of one server."""
    kv_cache_gib: float
    kv_tokens: int
    seq_tokens: int
    """Prompt + max_new_tokens of this pool's sampling (capped by the engine's context_length)."""
    sequences_at_once: int
    fits: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ColocatedLayout:
    """One GPU shared by a learner rank and a learner engine, for one choice of what stays resident."""

    offload: bool
    """Whether gradients and optimizer state are on the host during rollouts."""
    learner_resident_gib: float
    """Learner state on the GPU while the engine starts and generates."""
    host_gib: float
    """Pinned host memory this GPU's learner rank needs for what it offloads."""
    engine: EnginePlan
    """The engine's pool, sized against the memory the resident learner leaves."""
    rollout_gib: float
    """Per GPU during rollouts: learner resident + engine pool."""
    training_gib: float
    """Per GPU during log-probs and training: the learner's peak (engines released)."""
    fits: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ColocatedPlan:
    """Both choices, and the one the config makes (`learner.offload_during_rollout`)."""

    offload_configured: bool
    resident: ColocatedLayout
    offloaded: ColocatedLayout

    @property
    def chosen(self) -> ColocatedLayout:
        return self.offloaded if self.offload_configured else self.resident

    def to_dict(self) -> dict:
        return {
            "offload_configured": self.offload_configured,
            "without_offload": self.resident.to_dict(),
            "with_offload": self.offloaded.to_dict(),
        }


_SETTING_KEYS = {name: f"rollout.{name}.engine.mem_fraction_static" for name in ("learner", "explorer")}


@dataclass(frozen=True, slots=True)
class SharedPlan:
    """Explorer and learner engines on the same GPUs (`rollout.explorer.placement: shared`): each
    pool's mem_fraction_static and the memory it gives (module doc)."""

    free_fraction: float
    """What both pools may take together: GPU memory less SGLang's overhead per engine, as a fraction."""
    needed: dict[str, float]
    """Per pool, the smallest fraction of GPU memory that holds its weights per GPU and one sequence's
    KV cache."""
    settings: dict[str, float]
    """Per pool, the mem_fraction_static to configure: the configured one, else computed (`computed`).
    The explorer's is a fraction of `explorer_base`, not of the GPU."""
    fractions: dict[str, float]
    """Per pool, the GPU memory its weights + KV cache take with `settings`, as a fraction."""
    explorer_base: float
    """The memory a learner engine leaves free when the explorer's starts, as a fraction of the GPU."""
    computed: dict[str, bool]
    reasons: list[str]
    """Why the placement does not work (empty when it does)."""

    @property
    def fits(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits}


@dataclass(frozen=True, slots=True)
class RunPlan:
    """The learner and every engine pool a run starts, against one GPU's memory."""

    gpu_mem_gib: float
    learner: LearnerPlan
    engines: list[EnginePlan]
    reasons: list[str]
    """Why the plan does not fit (empty when it does)."""
    colocated: ColocatedPlan | None = None
    """The learner engines on the learner's GPUs (`rollout.colocate`); None otherwise."""
    shared: SharedPlan | None = None
    """The explorer engines on the learner engines' GPUs (`rollout.explorer.placement`); None otherwise."""

    @property
    def fits(self) -> bool:
        return not self.reasons

    @property
    def gpus(self) -> dict[str, int]:
        learner = self.learner.setup
        guests = {"learner"} if self.colocated else set()
        guests |= {"explorer"} if self.shared else set()
        own = [e for e in self.engines if e.pool not in guests]
        engines = sum(e.num_engines * e.tp for e in own)  # guests take no GPU of their own
        total = learner.tp * learner.pp * learner.dp + engines
        return {"learner": total - engines, "engines": engines, "total": total}

    def to_dict(self) -> dict:
        return {
            "gpu_mem_gib": self.gpu_mem_gib,
            "fits": self.fits,
            "reasons": self.reasons,
            "gpus": self.gpus,
            "learner": self.learner.to_dict(),
            "engines": [e.to_dict() for e in self.engines],
            "colocated": self.colocated.to_dict() if self.colocated else None,
            "shared": self.shared.to_dict() if self.shared else None,
        }


def learner_setup(cfg: S2LConfig, arch: ModelArch) -> LearnerSetup:
    """The learner's sizes from the run config; raises ValueError for a TP/PP the model cannot take."""
    parallel = cfg.learner.parallel
    dp = check_parallel_sizes(
        parallel,
        cfg.ranks,
        num_layers=arch.num_hidden_layers,
        num_heads=arch.num_attention_heads,
        num_query_groups=arch.num_key_value_heads,
    )
    rows = (cfg.algo.ppo_mini_batch_prompts or cfg.schedule.prompts_per_step) * cfg.schedule.group_size
    max_new = cfg.rollout.learner_sampling.max_new_tokens
    if cfg.schedule.t_mix > 0:  # explorer samples are trained on too
        max_new = max(max_new, cfg.rollout.explorer_sampling.max_new_tokens)
    seq_len = cfg.data.max_prompt_tokens + max_new
    budget = parallel.max_tokens_per_micro_batch
    micro_rows = micro_batch_rows(rows // dp, parallel.micro_batch_size)
    reference: Reference = "none"
    if cfg.algo.loss.kl_coef > 0:
        reference = "host" if cfg.learner.reference_offload else "gpu"
    return LearnerSetup(
        tp=parallel.tensor_parallel,
        pp=parallel.pipeline_parallel,
        dp=dp,
        micro_batch_size=micro_rows,
        tokens_per_micro_batch=micro_rows * seq_len if budget is None else max(budget, seq_len),
        # With a budget the count depends on the lengths: at most one sequence per micro-batch.
        micro_batches=rows // dp if budget is not None else rows // dp // micro_rows,
        seq_len=seq_len,
        param_bytes=4 if cfg.learner.params_dtype == "float32" else 2,
        distributed_optimizer=parallel.distributed_optimizer,
        recompute=cfg.learner.recompute_activations,
        vocab_pad_multiple=cfg.learner.vocab_pad_multiple,
        fused_output=cfg.learner.fused_output_layer,
        reference=reference,
    )


def stage_params(arch: ModelArch, tp: int, pp: int, vocab_pad_multiple: int) -> list[int]:
    """Parameters on one rank of each pipeline stage, as Megatron's GPTModel holds them."""
    matmuls = arch.attention_matmul_params() + arch.mlp_params()
    norms = arch.layer_params() - matmuls  # replicated over TP
    layers = arch.num_hidden_layers // pp * (matmuls // tp + norms)
    vocab_shard = padded_vocab_size(arch.vocab_size, vocab_pad_multiple, tp) // tp * arch.hidden_size
    # A tied last stage needs its own copy of the embedding once the embedding is on another stage.
    output_layer = vocab_shard if not arch.tie_word_embeddings or pp > 1 else 0
    counts = []
    for stage in range(pp):
        count = layers
        if stage == 0:
            count += vocab_shard
        if stage == pp - 1:
            count += output_layer + arch.hidden_size  # final norm
        counts.append(count)
    return counts


def layer_activation_bytes(arch: ModelArch, setup: LearnerSetup) -> float:
    """One layer's stored activations for one micro-batch without recompute (Korthikanti et al.)."""
    sbh = setup.tokens_per_micro_batch * arch.hidden_size
    return sbh * (10 + 24 / setup.tp) * setup.param_bytes / 2


def stage_activation_bytes(arch: ModelArch, setup: LearnerSetup, stage: int) -> float:
    in_flight = min(setup.pp - stage, setup.micro_batches)
    layers = arch.num_hidden_layers // setup.pp
    full_layer = layer_activation_bytes(arch, setup)
    if not setup.recompute:
        return in_flight * layers * full_layer
    layer_input = setup.tokens_per_micro_batch * arch.hidden_size * setup.param_bytes
    return in_flight * layers * layer_input + full_layer  # + the layer being recomputed


def stage_components(arch: ModelArch, setup: LearnerSetup, params: int, stage: int) -> dict[str, float]:
    """Bytes of one rank of `stage`, by component."""
    master = 4 if setup.param_bytes == 2 else 0
    optimizer_shards = setup.dp if setup.distributed_optimizer else 1
    logits = 0.0
    if stage == setup.pp - 1:
        vocab_shard = padded_vocab_size(arch.vocab_size, setup.vocab_pad_multiple, setup.tp) // setup.tp
        logits = setup.tokens_per_micro_batch * vocab_shard * setup.param_bytes
        if setup.fused_output:  # one chunk of logits, and the weight gradient's fp32 accumulator
            chunk = default_chunk_size(setup.tokens_per_micro_batch, arch.hidden_size, vocab_shard)
            logits = chunk * vocab_shard * setup.param_bytes + vocab_shard * arch.hidden_size * 4
    return {
        "weights": params * setup.param_bytes,
        "grads": params * MAIN_GRAD_BYTES,
        "optimizer": params * (master + ADAM_STATE_BYTES) / optimizer_shards,
        "reference": params * setup.param_bytes if setup.reference == "gpu" else 0,
        "activations": stage_activation_bytes(arch, setup, stage),
        "logits": logits,
    }


def peak_bytes(components: dict[str, float], reference_weights: float) -> float:
    """The training peak, or the offloaded reference's forward (its weights instead of the
    training activations; logits again) when that is larger."""
    training = sum(components.values())
    return max(training, training - components["activations"] + reference_weights)


def plan_learner(arch: ModelArch, setup: LearnerSetup, gpu_mem_gib: float) -> LearnerPlan:
    params = stage_params(arch, setup.tp, setup.pp, setup.vocab_pad_multiple)
    peaks, components = [], []
    for stage, count in enumerate(params):
        parts = stage_components(arch, setup, count, stage)
        offloaded = count * setup.param_bytes if setup.reference == "host" else 0
        components.append(parts)
        peaks.append(peak_bytes(parts, offloaded))
    worst = max(range(setup.pp), key=peaks.__getitem__)
    total_gib = peaks[worst] / GIB
    return LearnerPlan(
        arch=arch.name,
        setup=setup,
        padded_vocab=padded_vocab_size(arch.vocab_size, setup.vocab_pad_multiple, setup.tp),
        params_per_stage=params,
        worst_stage=worst,
        gib={name: value / GIB for name, value in components[worst].items()},
        total_gib=total_gib,
        fits=total_gib <= gpu_mem_gib,
    )


def dtype_bytes(dtype: str) -> int:
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"engine dtype {dtype!r}: the planner knows {', '.join(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[dtype]


def engine_weights_bytes(arch: ModelArch, engine: EngineConfig) -> float:
    """One GPU's share of a server's weights."""
    return arch.param_count() * dtype_bytes(engine.dtype) / engine.tp


def kv_bytes_per_token(arch: ModelArch, tp: int, width: int = 2) -> int:
    """One GPU's share of a token's K and V cache in a server of TP `tp` (`width` bytes a value)."""
    kv_heads = max(1, arch.num_key_value_heads // tp)  # TP > KV heads: SGLang replicates them
    return 2 * arch.num_hidden_layers * kv_heads * arch.head_dim * width


def default_mem_fraction(gpu_mem_gib: float) -> float:
    """SGLang's mem_fraction_static when unset: it depends on the device's capacity, not on what is free."""
    return max(gpu_mem_gib - SGLANG_DEFAULT_RESERVE_GIB, 0) / gpu_mem_gib


def plan_engine_pool(
    pool: str,
    arch: ModelArch,
    cfg: EnginePoolConfig,
    seq_tokens: int,
    gpu_mem_gib: float,
    free_at_start_gib: float | None = None,
    fraction: float | None = None,
) -> EnginePlan:
    """`seq_tokens`: prompt + max_new_tokens of the pool's sampling; `free_at_start_gib`: GPU memory
    free when the engine starts (colocated: less what the learner holds; a shared explorer: what the
    learner engine leaves), default all of it;
    `fraction`: the mem_fraction_static to plan with instead of the configured one (shared placement)."""
    engine = cfg.engine
    width = dtype_bytes(engine.dtype)
    if fraction is None:
        fraction = engine.mem_fraction_static or default_mem_fraction(gpu_mem_gib)
    free = gpu_mem_gib if free_at_start_gib is None else free_at_start_gib
    weights = engine_weights_bytes(arch, engine)
    kv_per_token = kv_bytes_per_token(arch, engine.tp, width)
    kv_bytes = max(fraction * free * GIB - weights, 0.0)
    kv_tokens = int(kv_bytes // kv_per_token)
    if engine.max_total_tokens is not None:
        kv_tokens = min(kv_tokens, engine.max_total_tokens)
    if engine.context_length is not None:
        seq_tokens = min(seq_tokens, engine.context_length)
    sequences = kv_tokens // seq_tokens
    if engine.max_running_requests is not None:
        sequences = min(sequences, engine.max_running_requests)
    return EnginePlan(
        pool=pool,
        arch=arch.name,
        num_engines=cfg.num_engines,
        tp=engine.tp,
        mem_fraction_static=fraction,
        weights_gib=weights / GIB,
        kv_cache_gib=kv_bytes / GIB,
        kv_tokens=kv_tokens,
        seq_tokens=seq_tokens,
        sequences_at_once=sequences,
        fits=sequences >= 1,
    )


def learner_reasons(plan: LearnerPlan, gpu_mem_gib: float) -> list[str]:
    if plan.fits:
        return []
    s = plan.setup
    parts = ", ".join(f"{name} {gib:.1f}" for name, gib in plan.gib.items() if gib)
    params = plan.params_per_stage[plan.worst_stage]
    return [
        f"learner ({plan.arch}, TP {s.tp} x PP {s.pp} x DP {s.dp}): stage {plan.worst_stage} needs "
        f"{plan.total_gib:.1f} GiB per GPU > {gpu_mem_gib:g} GiB ({params:,} parameters per GPU; "
        f"GiB: {parts})"
    ]


def engine_reasons(plan: EnginePlan, gpu_mem_gib: float) -> list[str]:
    if plan.fits:
        return []
    budget = plan.mem_fraction_static * gpu_mem_gib
    where = f"{plan.pool} engines ({plan.arch}, TP {plan.tp})"
    if plan.weights_gib >= budget:
        return [
            f"{where}: weights {plan.weights_gib:.1f} GiB per GPU exceed mem_fraction_static "
            f"{plan.mem_fraction_static:g} x {gpu_mem_gib:g} GiB = {budget:.1f} GiB"
        ]
    return [
        f"{where}: KV cache holds {plan.kv_tokens:,} tokens, less than one sequence of "
        f"{plan.seq_tokens:,} tokens"
    ]


def plan_run(
    cfg: S2LConfig, learner_arch: ModelArch, explorer_arch: ModelArch | None, gpu_mem_gib: float
) -> RunPlan:
    """The learner and every engine pool the run starts (the explorer's only when it samples live:
    t_mix > 0 and no explorer cache); `explorer_arch` is needed only then."""
    learner = plan_learner(learner_arch, learner_setup(cfg, learner_arch), gpu_mem_gib)
    prompt = cfg.data.max_prompt_tokens
    rollout = cfg.rollout
    live = explorer_pool_is_live(cfg)
    if live and explorer_arch is None:
        raise ValueError("the explorer pool samples live (schedule.t_mix > 0): give its architecture")
    shared = None
    if live and rollout.explorer.placement == "shared":
        assert explorer_arch is not None
        shared = plan_shared(cfg, learner_arch, explorer_arch, gpu_mem_gib)
    settings = shared.settings if shared else {}
    seq = prompt + rollout.learner_sampling.max_new_tokens
    engines = [
        plan_engine_pool(
            "learner", learner_arch, rollout.learner, seq, gpu_mem_gib, fraction=settings.get("learner")
        )
    ]
    if live:
        assert explorer_arch is not None
        seq = prompt + rollout.explorer_sampling.max_new_tokens
        # shared: SGLang gives the explorer its mem_fraction_static of what the learner engine leaves
        free_at_start = shared.explorer_base * gpu_mem_gib if shared else None
        explorer = plan_engine_pool(
            "explorer",
            explorer_arch,
            rollout.explorer,
            seq,
            gpu_mem_gib,
            free_at_start_gib=free_at_start,
            fraction=settings.get("explorer"),
        )
        engines.append(explorer)
    reasons = learner_reasons(learner, gpu_mem_gib)
    if shared and not shared.fits:  # its reasons name the fractions: the engines' would repeat them
        reasons += shared.reasons
        engines_to_check = [e for e in engines if e.pool not in settings]
    else:
        engines_to_check = engines
    colocated = None
    if rollout.colocate:
        seq = prompt + rollout.learner_sampling.max_new_tokens
        colocated = plan_colocated(learner, learner_arch, rollout.learner, seq, gpu_mem_gib, cfg)
        engines[0] = colocated.chosen.engine
        reasons += colocated_reasons(colocated, gpu_mem_gib)
        engines_to_check = [e for e in engines_to_check if e.pool != "learner"]
    for engine in engines_to_check:
        reasons += engine_reasons(engine, gpu_mem_gib)
    return RunPlan(
        gpu_mem_gib=gpu_mem_gib,
        learner=learner,
        engines=engines,
        reasons=reasons,
        colocated=colocated,
        shared=shared,
    )


def plan_colocated(
    learner: LearnerPlan,
    arch: ModelArch,
    pool: EnginePoolConfig,
    seq_tokens: int,
    gpu_mem_gib: float,
    cfg: S2LConfig,
) -> ColocatedPlan:
    """The learner engines on the learner's GPUs, with and without offloading (module doc)."""
    parts = learner.gib
    always = parts["weights"] + parts["reference"]  # what offload_during_rollout keeps on the GPU
    offloadable = parts["grads"] + parts["optimizer"]

    def layout(offload: bool) -> ColocatedLayout:
        resident = always + (0.0 if offload else offloadable)
        engine = plan_engine_pool("learner", arch, pool, seq_tokens, gpu_mem_gib, gpu_mem_gib - resident)
        pool_gib = engine.mem_fraction_static * max(gpu_mem_gib - resident, 0.0)
        return ColocatedLayout(
            offload=offload,
            learner_resident_gib=resident,
            host_gib=offloadable if offload else 0.0,
            engine=engine,
            rollout_gib=resident + pool_gib,
            training_gib=learner.total_gib,
            fits=engine.fits and learner.fits,
        )

    return ColocatedPlan(
        offload_configured=cfg.learner.offload_during_rollout, resident=layout(False), offloaded=layout(True)
    )


def colocated_reasons(plan: ColocatedPlan, gpu_mem_gib: float) -> list[str]:
    """Why the colocated layout the config chooses does not fit, and what offloading would change."""
    chosen = plan.chosen
    if chosen.engine.fits:
        return []
    reasons = [
        f"colocated learner engine: {chosen.learner_resident_gib:.1f} GiB of learner state resident at "
        f"its start leaves a pool of {chosen.engine.mem_fraction_static:g} x "
        f"{gpu_mem_gib - chosen.learner_resident_gib:.1f} GiB: "
        + engine_reasons(chosen.engine, gpu_mem_gib)[0]
    ]
    if not plan.offload_configured and plan.offloaded.engine.fits:
        reasons.append(
            f"set learner.offload_during_rollout=true: gradients and optimizer state "
            f"({plan.offloaded.host_gib:.1f} GiB per GPU) then wait in host memory during rollouts and "
            f"the engine holds {plan.offloaded.engine.kv_tokens:,} KV tokens"
        )
    return reasons


def run_samples(schedule: ScheduleConfig) -> dict[str, int]:
    """Samples per prompt each pool generates over the whole run (`s2l_schedule`)."""
    rows = s2l_schedule(schedule.steps, schedule.t_mix, schedule.group_size, schedule.rounding)
    return {"explorer": sum(r.g_explorer for r in rows), "learner": sum(r.g_learner for r in rows)}


def plan_shared(
    cfg: S2LConfig,
    learner_arch: ModelArch,
    explorer_arch: ModelArch,
    gpu_mem_gib: float,
    use_configured: bool = True,
) -> SharedPlan:
    """The explorer engines on the learner engines' GPUs (module doc): each pool's mem_fraction_static,
    configured or computed, and why it does not work. `use_configured` False computes both fractions
    (what `s2l plan` compares a dedicated config against)."""
    rollout, mem = cfg.rollout, gpu_mem_gib * GIB
    pools = {
        "learner": (learner_arch, rollout.learner, rollout.learner_sampling),
        "explorer": (explorer_arch, rollout.explorer, rollout.explorer_sampling),
    }
    samples = run_samples(cfg.schedule)
    needed, demand, configured = {}, {}, {}
    for name, (arch, pool, sampling) in pools.items():
        engine = pool.engine
        kv = kv_bytes_per_token(arch, engine.tp, dtype_bytes(engine.dtype))
        seq = cfg.data.max_prompt_tokens + sampling.max_new_tokens
        if engine.context_length is not None:
            seq = min(seq, engine.context_length)
        needed[name] = (engine_weights_bytes(arch, engine) + seq * kv) / mem
        demand[name] = samples[name] * sampling.max_new_tokens * engine.tp * kv  # KV bytes over all GPUs
        configured[name] = engine.mem_fraction_static if use_configured else None
    free = max(gpu_mem_gib - 2 * SGLANG_DEFAULT_RESERVE_GIB, 0) / gpu_mem_gib
    reserve = SGLANG_DEFAULT_RESERVE_GIB / gpu_mem_gib
    settings = _shared_settings(free, reserve, needed, demand, configured)
    base = _explorer_base(settings["learner"], reserve)
    plan = SharedPlan(
        free_fraction=free,
        needed=needed,
        settings=settings,
        fractions={"learner": settings["learner"], "explorer": settings["explorer"] * base},
        explorer_base=base,
        computed={name: configured[name] is None for name in pools},
        reasons=[],
    )
    suggested = _shared_settings(free, reserve, needed, demand, dict.fromkeys(pools))
    return replace(plan, reasons=_shared_reasons(cfg, plan, suggested, gpu_mem_gib))


def _floor3(x: float) -> float:
    return math.floor(x * 1000) / 1000


def _explorer_base(learner: float, reserve: float) -> float:
    """What a learner engine that takes `learner` of its GPU for its pool, and `reserve` beside it,
    leaves free when the explorer's engine starts: SGLang gives the explorer its mem_fraction_static
    of this (fractions of GPU memory)."""
    return max(1 - learner - reserve, 0.0)


def _explorer_setting(fraction: float, learner: float, reserve: float) -> float:
    """The explorer's mem_fraction_static that gives it `fraction` of GPU memory beside a learner
    engine of mem_fraction_static `learner` (rounded down to 0.001; 0 when nothing is left)."""
    base = _explorer_base(learner, reserve)
    return _floor3(fraction / base) if fraction > 0 and base > 0 else 0.0


def _shared_settings(
    free: float,
    reserve: float,
    needed: dict[str, float],
    demand: dict[str, float],
    configured: dict[str, float | None],
) -> dict[str, float]:
    """Each pool's mem_fraction_static: configured ones as they are; one unset takes what the other
    leaves of `free`; both unset, the learner its need plus its share of what both needs leave, in
    proportion to its KV demand (rounded down to 0.001, leaving the explorer a step above its need),
    and the explorer what is left."""
    learner, explorer = configured["learner"], configured["explorer"]
    if learner is None and explorer is None:
        spare = max(free - sum(needed.values()), 0.0)
        share = needed["learner"] + spare * demand["learner"] / (sum(demand.values()) or 1.0)
        learner = max(_floor3(min(share, free - needed["explorer"] - 0.001)), needed["learner"])
    if learner is not None:
        if explorer is None:
            explorer = _explorer_setting(free - learner, learner, reserve)
        return {"learner": learner, "explorer": explorer}
    # f_L + explorer x (1 - f_L - reserve) = free, for f_L; none left when the explorer alone would
    # take it all (this also keeps 1 - explorer > 0).
    left = free - explorer * (1 - reserve)
    return {"learner": _floor3(left / (1 - explorer)) if left > 0 else 0.0, "explorer": explorer}


def _shared_reasons(
    cfg: S2LConfig, plan: SharedPlan, suggested: dict[str, float], gpu_mem_gib: float
) -> list[str]:
    rollout = cfg.rollout
    learner, explorer = rollout.learner, rollout.explorer
    where = "rollout.explorer.placement shared"
    reasons = shared_gpu_fit_errors(learner, explorer)
    free, needed, fractions = plan.free_fraction, plan.needed, plan.fractions
    budget = (
        f"{free:.3f} of {gpu_mem_gib:g} GiB is left for both after SGLang's "
        f"{SGLANG_DEFAULT_RESERVE_GIB} GiB per engine"
    )
    if sum(needed.values()) > free:
        needs = " and ".join(f"the {name} engine's {needed[name]:.3f}" for name in needed)
        reasons.append(
            f"{where}: the two engines do not fit on one GPU: their weights and one sequence's KV cache "
            f"need {needs} of its memory; {budget} (use placement dedicated, a larger TP or shorter "
            "sequences)"
        )
        return reasons
    if sum(fractions.values()) > free + 1e-9:
        given = " and ".join(_setting(plan, name) for name in fractions if not plan.computed[name])
        taken = " + ".join(f"{fractions[name]:.3f}" for name in fractions)
        reasons.append(
            f"{where}: with {given} the two pools take {taken} = {sum(fractions.values()):.3f} of GPU "
            f"memory, more than fits: {budget} (unset both and s2l plan computes "
            f"{' and '.join(f'{_SETTING_KEYS[name]}={suggested[name]:g}' for name in suggested)})"
        )
    for name, fraction in fractions.items():
        if fraction < needed[name]:
            reasons.append(
                f"{where}: {_setting(plan, name)} gives the {name} engine {fraction:.3f} of GPU memory, less "
                f"than the {needed[name]:.3f} its weights and one sequence's KV cache need"
            )
    return reasons


def shared_settings_note(plan: SharedPlan) -> str:
    """The two mem_fraction_static values as `s2l plan` prints them."""
    how = {name: "computed" if plan.computed[name] else "configured" for name in plan.settings}
    return (
        f"mem_fraction_static learner {plan.settings['learner']:g} ({how['learner']}), explorer "
        f"{plan.settings['explorer']:g} ({how['explorer']}; {_explorer_setting_note(plan)})"
    )


def _explorer_setting_note(plan: SharedPlan) -> str:
    """What the explorer's mem_fraction_static is a fraction of, for messages that name it."""
    return f"of the memory the learner engines leave, {plan.explorer_base:.3f} of the GPU's"


def _setting(plan: SharedPlan, name: str) -> str:
    """`name`'s config key and value, as a message names it."""
    notes = ["computed"] if plan.computed[name] else []
    notes += [_explorer_setting_note(plan)] if name == "explorer" else []
    return f"{_SETTING_KEYS[name]} {plan.settings[name]:g}" + (f" ({'; '.join(notes)})" if notes else "")


def shared_placement_reasons(
    cfg: S2LConfig, learner_arch: ModelArch, explorer_arch: ModelArch | None, gpu_mem_gib: float
) -> list[str]:
    """Why the run's shared placement (`rollout.explorer.placement: shared`) cannot work on GPUs of
    `gpu_mem_gib`: for a pre-flight check before any server starts (empty when the explorer pool is
    dedicated or not live). `s2l train`'s pre-flight gets these through `plan_run`."""
    if not explorer_pool_is_live(cfg) or cfg.rollout.explorer.placement != "shared":
        return []
    if explorer_arch is None:
        raise ValueError("the explorer pool samples live (schedule.t_mix > 0): give its architecture")
    return plan_shared(cfg, learner_arch, explorer_arch, gpu_mem_gib).reasons


def explorer_pool_is_live(cfg: S2LConfig) -> bool:
    """Whether the run starts explorer engines (as `run.driver` and `RolloutEngines` decide)."""
    return cfg.schedule.t_mix > 0 and cfg.rollout.explorer_cache_path is None
