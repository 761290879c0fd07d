"""The GRPO train step and the forward-only log-prob pass through Megatron's pipeline schedule.

Every rank receives the same global batch (SPMD) and computes the same micro-batch plan
(`micro_batches.plan_micro_batches`: fixed-size, or by a token budget); each micro-batch is trimmed
to its longest row before the forward pass, or, with transformer-engine, packed into one row with no
padding at all (THD, `learner/packing.py`).

The logits reach the log-prob op as the model returns them: in the model's dtype (bf16 on GPU:
`fp32_output=False` on Megatron's Float16Module), full length with the targets shifted by one (the
last position and every position outside the loss mask get the ignore index, so the kernels skip
them), and in training their storage takes the gradient (`inplace_backward`). No fp32 or sliced
copy of the [tokens, vocab / TP] logits is made.

Loss normalisation: each micro-batch's GRPO loss is computed with the token (or sequence) count of
the whole global batch, so the sum over micro-batches and DP ranks is exactly the global-batch loss.
Megatron's schedule divides every micro-batch loss by the number of micro-batches and DDP averages
gradients over DP ranks, so the loss handed to the schedule is pre-multiplied by
num_microbatches * dp: the resulting gradient equals that of one big batch. The one exception is
`algo.loss.agg: token-mean-micro-batch` (verl's per-micro-batch token mean, as the S2L-PO authors'
released runs trained): each micro-batch's own token mean is divided by num_microbatches * dp instead,
so the same scaling gives the mean of the micro-batches' token means (micro-batches.py keeps the
micro-batch count equal on every DP rank, so that mean weighs every micro-batch alike).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.distributed as dist

from megatron_s2l.algo.loss import LossConfig, grpo_loss
from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.learner.logprobs import shifted_targets, token_logprobs_from_logits
from megatron_s2l.learner.micro_batches import plan_micro_batches
from megatron_s2l.learner.model import output_weight, transformer_engine_available, unwrap_model
from megatron_s2l.learner.packing import PackedMicroBatch, pack

# Metrics aggregated with the global-batch normalisation add up over micro-batches and DP ranks;
# the others (fractions, approximate KL) are local means, averaged.
_ADDITIVE_METRICS = ("loss", "pg_loss", "kl", "entropy")

LossFn = Callable[
    [TrainBatch, PackedMicroBatch | None, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]
]


def current_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


@dataclasses.dataclass(frozen=True, slots=True)
class MicroBatch:
    """One micro-batch of this DP rank: the rows of the global batch it holds, trimmed."""

    rows: list[int]
    batch: TrainBatch


def micro_batches_for_this_rank(
    batch: TrainBatch, *, micro_batch_size: int, max_tokens: int | None
) -> list[MicroBatch]:
    """This DP rank's micro-batches (on the compute device), each cut to its longest needed row."""
    from megatron.core import parallel_state

    lengths_B = batch.needed_lengths().clamp(min=2)
    plan = plan_micro_batches(
        lengths_B,
        parallel_state.get_data_parallel_world_size(),
        micro_batch_size=micro_batch_size,
        max_tokens=max_tokens,
        packed=transformer_engine_available(),
    )[parallel_state.get_data_parallel_rank()]
    device = current_device()
    out = []
    for rows in plan:
        index = torch.tensor(rows)
        rows_batch = batch.select(index).trim(int(lengths_B[index].max()))
        out.append(MicroBatch(rows, rows_batch.to(device)))
    return out


def _forward_step(loss_fn: LossFn, kwargs: dict, data_iterator, model):
    micro_batch = next(data_iterator)
    if transformer_engine_available():  # TE attention takes the rows packed end to end (THD)
        packing = pack(micro_batch)
        output = model(
            packing.input_ids_1T,
            packing.position_ids_1T,
            attention_mask=None,
            packed_seq_params=packing.packed_seq_params(),
            **kwargs,
        )
        return output, partial(loss_fn, micro_batch, packing)
    input_ids_BL = micro_batch.input_ids
    position_ids_BL = torch.arange(input_ids_BL.shape[1], device=input_ids_BL.device).expand_as(input_ids_BL)
    output = model(input_ids_BL, position_ids_BL, attention_mask=None, **kwargs)
    return output, partial(loss_fn, micro_batch, None)


def _micro_batch_logprobs(
    logits: torch.Tensor, micro_batch: TrainBatch, packing: PackedMicroBatch | None, **kwargs
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) [b, l-1] of a micro-batch from its padded [b, l, V/TP] or packed
    [1, T, V/TP] logits; `kwargs` go to `token_logprobs_from_logits`."""
    if packing is None:
        targets = shifted_targets(micro_batch.input_ids, micro_batch.loss_mask)
        logp, entropy = token_logprobs_from_logits(logits, targets, **kwargs)
    else:
        logp, entropy = token_logprobs_from_logits(logits, packing.targets_1T, **kwargs)
        logp, entropy = packing.unpack(logp), None if entropy is None else packing.unpack(entropy)
    return logp[:, :-1], None if entropy is None else entropy[:, :-1]


def _output_weight(model: torch.nn.Module, fused_output: bool) -> torch.Tensor | None:
    """The output layer's weight for the fused op (last stage, `fused_output`), else None."""
    from megatron.core import parallel_state

    if not (fused_output and parallel_state.is_pipeline_last_stage()):
        return None
    return output_weight(unwrap_model(model))


def _has_float16_wrapper(model: torch.nn.Module) -> bool:
    from megatron.core.transformer.module import Float16Module

    while not isinstance(model, Float16Module):
        if not hasattr(model, "module"):
            return False
        model = model.module
    return True


def run_schedule(
    model: torch.nn.Module, micro_batches: list[TrainBatch], loss_fn: LossFn, *, forward_only: bool
) -> list[dict[str, torch.Tensor]]:
    """Run all micro-batches through Megatron's (pipelined) forward-backward schedule; returns the
    per-micro-batch outputs of `loss_fn` (non-empty on the last pipeline stage only). Micro-batches
    may differ in rows and length (with PP > 1 the config sets `variable_seq_lengths`)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    # Logits in the model's dtype: Float16Module would otherwise cast them to a full fp32 copy.
    forward_kwargs = {"fp32_output": False} if _has_float16_wrapper(model) else {}
    return get_forward_backward_func()(
        forward_step_func=partial(_forward_step, loss_fn, forward_kwargs),
        data_iterator=iter(micro_batches),
        model=[model],
        num_microbatches=len(micro_batches),
        seq_length=max(mb.input_ids.shape[1] for mb in micro_batches),
        micro_batch_size=max(mb.num_seqs for mb in micro_batches),
        forward_only=forward_only,
    )


def _broadcast_from_last_stage(obj):
    """Send a Python object from the last pipeline stage to every stage of this pipeline."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(
        holder,
        src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return holder[0]


@torch.no_grad()
def compute_logprobs(
    model: torch.nn.Module,
    batch: TrainBatch,
    *,
    vocab_size: int,
    temperatures: Sequence[float],
    micro_batch_size: int,
    max_tokens: int | None = None,
    fused_output: bool = False,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward-only log-probs [K, B, L-1] at each of the K `temperatures` (one model forward for all
    of them) and, when `with_entropy`, the entropies [B, L-1] at the first temperature; fp32 on the
    CPU, returned on every rank. Only positions in `batch.loss_mask` are computed (0 elsewhere).
    `max_tokens`: the training token budget; forward-only passes keep no activations and take twice it.
    `fused_output`: the model returns hidden states (`model.return_hidden_states`)."""
    from megatron.core import parallel_state

    weight = _output_weight(model, fused_output)

    micro_batches = micro_batches_for_this_rank(
        batch, micro_batch_size=micro_batch_size, max_tokens=max_tokens and 2 * max_tokens
    )

    def logprobs_fn(micro_batch: TrainBatch, packing: PackedMicroBatch | None, logits_BLV: torch.Tensor):
        stats = []
        for i, temperature in enumerate(temperatures):
            logp_BT, entropy_BT = _micro_batch_logprobs(
                logits_BLV,
                micro_batch,
                packing,
                vocab_size=vocab_size,
                temperature=temperature,
                compute_entropy=with_entropy and i == 0,
                output_weight=weight,
            )
            stats.append(logp_BT)
            if entropy_BT is not None:
                stats.append(entropy_BT)
        return logits_BLV.new_zeros(()), {"stats": torch.stack(stats)}

    outputs = run_schedule(model, [mb.batch for mb in micro_batches], logprobs_fn, forward_only=True)
    stats_SBT = None
    if parallel_state.is_pipeline_last_stage():
        # Back into global row order and full width; rows of other DP ranks stay 0 until the sum.
        num_stats = len(temperatures) + with_entropy
        stats_SBT = torch.zeros(num_stats, batch.num_seqs, batch.loss_mask.shape[1], device=current_device())
        for mb, out in zip(micro_batches, outputs, strict=True):
            stats = out["stats"]
            stats_SBT[:, torch.tensor(mb.rows, device=stats.device), : stats.shape[-1]] = stats
        if parallel_state.get_data_parallel_world_size() > 1:
            dist.all_reduce(stats_SBT, group=parallel_state.get_data_parallel_group())
        stats_SBT = stats_SBT.cpu()
    stats_SBT = _broadcast_from_last_stage(stats_SBT)
    if with_entropy:  # rows: logp(T0), entropy(T0), logp(T1), ...
        return torch.cat([stats_SBT[:1], stats_SBT[2:]]), stats_SBT[1]
    return stats_SBT, None


def _reduce_metrics(outputs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Global-batch metrics from this rank's micro-batch outputs (last stage only): additive metrics
    summed, the others averaged, over micro-batches and DP ranks."""
    from megatron.core import parallel_state

    names = sorted(outputs[0])
    dp = parallel_state.get_data_parallel_world_size()
    values = torch.stack([torch.stack([out[n].float() for out in outputs]).sum() for n in names])
    dist.all_reduce(values, group=parallel_state.get_data_parallel_group())
    divisors = [1.0 if n in _ADDITIVE_METRICS else len(outputs) * dp for n in names]
    return {n: v.item() / d for n, v, d in zip(names, values.cpu(), divisors, strict=True)}


def train_step(
    model: torch.nn.Module,
    optimizer,
    lr_scheduler,
    batch: TrainBatch,
    loss_cfg: LossConfig,
    *,
    vocab_size: int,
    temperature: float,
    micro_batch_size: int,
    max_tokens: int | None = None,
    fused_output: bool = False,
) -> dict[str, float]:
    """One optimizer step on the global batch; returns the global metrics on every rank.

    A non-finite global loss, or a non-finite gradient norm with a finite loss (e.g. an overflow in
    backward), skips the update on every rank (metrics report `skipped` = 1; the learning-rate
    schedule does not advance); the gradients are discarded by the next step's zeroing.
    """
    from megatron.core import parallel_state

    if batch.old_logprobs is None:
        raise ValueError("train_step needs batch.old_logprobs (see Learner.compute_logprobs)")
    if loss_cfg.kl_coef > 0 and batch.ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs batch.ref_logprobs")
    micro_batches = [
        mb.batch
        for mb in micro_batches_for_this_rank(batch, micro_batch_size=micro_batch_size, max_tokens=max_tokens)
    ]
    dp = parallel_state.get_data_parallel_world_size()
    scale = len(micro_batches) * dp
    # The global batch's counts (and padded response length) normalise every micro-batch's loss.
    tokens_B = batch.loss_mask.bool().sum(dim=-1)
    global_tokens, global_seqs = int(tokens_B.sum()), int((tokens_B > 0).sum())
    loss_cfg = dataclasses.replace(loss_cfg, norm_len=loss_cfg.norm_len or max(int(tokens_B.max()), 1))

    def loss_fn(micro_batch: TrainBatch, packing: PackedMicroBatch | None, logits_BLV: torch.Tensor):
        logp_BT, entropy_BT = _micro_batch_logprobs(
            logits_BLV,
            micro_batch,
            packing,
            vocab_size=vocab_size,
            temperature=temperature,
            compute_entropy=loss_cfg.entropy_coef > 0,
            inplace_backward=weight is None,  # nothing reads the logits after this op
            output_weight=weight,
        )
        loss, metrics = grpo_loss(
            loss_cfg,
            logp_BT,
            micro_batch.old_logprobs,
            micro_batch.advantages,
            micro_batch.loss_mask,
            ref_logprobs=micro_batch.ref_logprobs,
            entropy=entropy_BT,
            global_tokens=global_tokens,
            global_seqs=global_seqs,
            micro_batches=scale,
        )
        return loss * scale, {"loss": loss.detach(), **metrics}

    model.zero_grad_buffer()
    optimizer.zero_grad()
    weight = _output_weight(model, fused_output)
    outputs = run_schedule(model, micro_batches, loss_fn, forward_only=False)
    metrics = _reduce_metrics(outputs) if parallel_state.is_pipeline_last_stage() else None
    metrics = {**_broadcast_from_last_stage(metrics), "micro_batches": float(len(micro_batches))}
    if not math.isfinite(metrics["loss"]):
        return {**metrics, "grad_norm": float("nan"), "lr": optimizer.param_groups[0]["lr"], "skipped": 1.0}
    # Megatron's fp32 and bf16 optimizers apply whatever gradient they get: look at its norm first
    # (the same collective norm `step` clips with). NOTE: `prepare_grads` only copies the model's
    # gradients into the main ones here (no loss scaler with fp32/bf16), so `step` repeating it is
    # harmless.
    found_inf = optimizer.prepare_grads()
    grad_norm = float(optimizer.get_grad_norm())
    if found_inf or not math.isfinite(grad_norm):
        return {**metrics, "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"], "skipped": 1.0}
    # NOTE: the scheduler steps first, so optimizer step k (1-based) uses lr(k): warmup reaches the
    # peak lr at step warmup_steps instead of spending step 1 at lr 0.
    lr_scheduler.step(1)
    _, clipped_norm, _ = optimizer.step()
    grad_norm = grad_norm if clipped_norm is None else float(clipped_norm)
    return {**metrics, "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"], "skipped": 0.0}
