"""`Learner`: the Megatron policy behind one SPMD facade.

Every learner rank calls the same methods with the same arguments (the driver broadcasts the
batch); results that are global (log-probs, metrics) come back on every rank.

    learner = Learner.from_hf(LearnerConfig(), "Qwen3-8B-Base")   # inside torchrun ranks
    batch.old_logprobs = learner.compute_logprobs(batch)
    metrics = learner.train_step(batch)
    for name, tensor in learner.iter_hf_weights(): ...             # weight sync
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from megatron_s2l.algo.loss import LossConfig
from megatron_s2l.archs import ModelArch
from megatron_s2l.learner import checkpoint, export, grpo_step
from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.learner.hf_config import build_transformer_config, read_qwen3_config
from megatron_s2l.learner.hf_loader import load_hf_weights
from megatron_s2l.learner.model import build_gpt_model, return_hidden_states
from megatron_s2l.learner.optimizer import OptimizerConfig, build_lr_scheduler, build_optimizer
from megatron_s2l.learner.parallel import ParallelConfig, ParallelLayout, init_distributed
from megatron_s2l.rollout.placement import core_list_errors

ParamsDtype = Literal["auto", "float32", "bfloat16"]


@dataclass(kw_only=True, slots=True)
class LearnerConfig:
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Parallel sizes, micro-batch size, distributed optimizer."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Adam, clipping, learning-rate schedule."""
    params_dtype: ParamsDtype = "auto"
    """Parameter dtype; auto: bfloat16 with CUDA, float32 on CPU."""
    vocab_pad_multiple: int = 128
    """The vocabulary is padded to a multiple of this times TP (padded logits are masked)."""
    recompute_activations: bool = False
    """Recompute each layer in backward instead of keeping its activations (saves memory)."""
    max_consecutive_skips: int = 5
    """Stop the run with an error once this many optimizer updates in a row were skipped for a
    non-finite loss or gradient norm (a diverged run); 0 never stops."""
    fused_output_layer: bool = False
    """Compute the log-probs from the last stage's hidden states and the output layer's weight, a
    chunk of tokens at a time (`kernels/fused_linear.py`): the [tokens, vocab / TP] logits are never
    held whole. Off: the model's logits go to the log-prob kernel."""
    reference_offload: bool = False
    """With the KL loss: keep the frozen reference weights in host memory and move them onto the GPU
    only for the once-per-step reference forward (what a 14B run needs)."""
    offload_during_rollout: bool = False
    """With `rollout.colocate`: free the fp32 gradient buffers and move the optimizer state (fp32
    master weights, Adam moments) to pinned host memory from the end of training until the next
    rollout is over, so the colocated engines get that memory (`s2l plan` shows both layouts). The
    bf16 weights stay on the GPU (the weight sync and the checkpoint read them). No effect without
    colocate."""

    cpu_cores: list[int] | None = None
    """The cores the learner ranks of each node run on, split evenly over the node's local ranks
    (the first ranks take the spare cores): each rank pins itself (and its threads) to its share
    first thing and runs that many torch threads. The engines then get the cores this list leaves
    (rollout.*.cpu_cores); the driver's reward workers run on rank 0's share. None: the ranks are
    not pinned (`s2l train` gives each cores / ranks torch threads) and the engines may use every
    core."""

    def __post_init__(self) -> None:
        errors = core_list_errors(self.cpu_cores)
        if errors:
            raise ValueError("; ".join(errors))
        if self.vocab_pad_multiple < 1:
            raise ValueError(f"vocab_pad_multiple must be >= 1, got {self.vocab_pad_multiple}")
        if self.max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {self.max_consecutive_skips}")

    def resolved_dtype(self) -> torch.dtype:
        if self.params_dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return getattr(torch, self.params_dtype)


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """This rank's stage of the policy, loaded from HF, before any training wrappers."""

    arch: ModelArch
    raw_hf_config: dict
    layout: ParallelLayout
    transformer_config: object
    model: torch.nn.Module


def load_hf_policy(cfg: LearnerConfig, hf_dir: str | Path) -> LoadedPolicy:
    """Start the parallel state and load this rank's stage of the HF checkpoint (no optimizer)."""
    arch, raw = read_qwen3_config(hf_dir)
    layout = init_distributed(
        cfg.parallel,
        num_layers=arch.num_hidden_layers,
        num_heads=arch.num_attention_heads,
        num_query_groups=arch.num_key_value_heads,
    )
    tf_config = build_transformer_config(
        arch, cfg.parallel, params_dtype=cfg.resolved_dtype(), recompute_activations=cfg.recompute_activations
    )
    model = build_gpt_model(arch, tf_config, vocab_pad_multiple=cfg.vocab_pad_multiple)
    load_hf_weights(model, hf_dir, arch)
    return LoadedPolicy(arch, raw, layout, tf_config, model)


class NonFiniteUpdatesError(RuntimeError):
    """Too many optimizer updates in a row had a non-finite loss or gradient norm."""


class ReferencePolicy:
    """The frozen initial policy the KL loss is measured against: this rank's stage of the base
    checkpoint, in the learner's TP/PP layout, forward only. With `offload` its weights wait in
    (pinned) host memory and visit the compute device only for `compute_logprobs`."""

    def __init__(self, cfg: LearnerConfig, arch: ModelArch, hf_dir: str | Path) -> None:
        from megatron.core.transformer.module import Float16Module

        dtype = cfg.resolved_dtype()
        tf_config = build_transformer_config(
            arch, cfg.parallel, params_dtype=dtype, recompute_activations=False
        )
        model = build_gpt_model(arch, tf_config, vocab_pad_multiple=cfg.vocab_pad_multiple)
        load_hf_weights(model, hf_dir, arch)
        if dtype != torch.float32:
            model = Float16Module(tf_config, model)
        self.model = model.eval().requires_grad_(False)
        self.arch, self.offload = arch, cfg.reference_offload
        self.parallel = cfg.parallel
        self.device = next(model.parameters()).device
        if self.offload:
            self._move(torch.device("cpu"))

    def _move(self, device: torch.device) -> None:
        pin = device.type == "cpu" and torch.cuda.is_available()
        for param in self.model.parameters():
            data = param.data.to(device, non_blocking=True)
            param.data = data.pin_memory() if pin else data

    def compute_logprobs(self, batch: TrainBatch, temperature: float) -> torch.Tensor:
        """Reference log-probs [B, L-1] (fp32, CPU) at `temperature` (collective)."""
        if self.offload:
            self._move(self.device)
        try:
            logp_1BT, _ = grpo_step.compute_logprobs(
                self.model,
                batch,
                vocab_size=self.arch.vocab_size,
                temperatures=[temperature],
                micro_batch_size=self.parallel.micro_batch_size,
                max_tokens=self.parallel.max_tokens_per_micro_batch,
            )
        finally:
            if self.offload:
                self._move(torch.device("cpu"))
        return logp_1BT[0]


def wrap_for_training(cfg: LearnerConfig, transformer_config, model: torch.nn.Module):
    """(DDP model, optimizer, LR scheduler) around a loaded GPTModel stage: Float16Module for bf16,
    Megatron DDP (fp32 gradient reduction), Megatron's (distributed) optimizer, and the hooks the
    pipeline schedule calls to reduce gradients and scale the loss."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.transformer.module import Float16Module

    dtype = cfg.resolved_dtype()
    if dtype != torch.float32:
        model = Float16Module(transformer_config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=cfg.parallel.distributed_optimizer
    )
    model = DistributedDataParallel(transformer_config, ddp_config, model)
    optimizer = build_optimizer(
        cfg.optimizer, model, params_dtype=dtype, distributed=cfg.parallel.distributed_optimizer
    )
    # The schedule reduces DP gradients (and tied-embedding gradients across stages) here.
    transformer_config.finalize_model_grads_func = finalize_model_grads
    transformer_config.grad_scale_func = optimizer.scale_loss
    return model, optimizer, build_lr_scheduler(cfg.optimizer, optimizer)


class Learner:
    """The policy model with its optimizer and scheduler on this rank (see the module docstring)."""

    def __init__(
        self,
        cfg: LearnerConfig,
        arch: ModelArch,
        raw_hf_config: dict,
        layout: ParallelLayout,
        model: torch.nn.Module,
        optimizer,
        lr_scheduler,
        *,
        loss: LossConfig,
        temperature: float,
        source_dir: Path | None = None,
        reference: ReferencePolicy | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.cfg, self.arch, self.raw_hf_config, self.layout = cfg, arch, raw_hf_config, layout
        self.loss, self.temperature = loss, temperature
        self.model, self.optimizer, self.lr_scheduler = model, optimizer, lr_scheduler
        self.source_dir = source_dir
        self.reference = reference
        """The frozen base policy of the KL loss (built only when loss.kl_coef > 0)."""
        self.step = 0
        """Optimizer updates made so far."""
        self.skips_in_a_row = 0
        """Updates skipped (non-finite loss or gradient norm) since the last applied one."""

    @classmethod
    def from_hf(
        cls,
        cfg: LearnerConfig,
        hf_dir: str | Path,
        *,
        loss: LossConfig | None = None,
        temperature: float = 1.0,
    ) -> Learner:
        """Start the parallel state, build this rank's stage and load the HF checkpoint into it.

        `loss` is the GRPO objective (default `LossConfig()`); `temperature` is the learner engines'
        sampling temperature: logits are divided by it before every log-prob, so that log-probs
        match the distribution the samples came from. With `loss.kl_coef` > 0 the frozen base
        policy is loaded beside it (`reference`)."""
        loss = loss or LossConfig()
        policy = load_hf_policy(cfg, hf_dir)
        if cfg.fused_output_layer:
            return_hidden_states(policy.model)
        model, optimizer, lr_scheduler = wrap_for_training(cfg, policy.transformer_config, policy.model)
        reference = ReferencePolicy(cfg, policy.arch, hf_dir) if loss.kl_coef > 0 else None
        return cls(
            cfg,
            policy.arch,
            policy.raw_hf_config,
            policy.layout,
            model,
            optimizer,
            lr_scheduler,
            loss=loss,
            temperature=temperature,
            source_dir=Path(hf_dir),
            reference=reference,
        )

    def compute_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """Forward-only per-token log-probs [B, L-1] (fp32, CPU) at the configured temperature."""
        return self.compute_logprobs_at(batch, [self.temperature])[0]

    def compute_logprobs_at(self, batch: TrainBatch, temperatures: list[float]) -> torch.Tensor:
        """Forward-only log-probs [K, B, L-1] at each of K temperatures, from one forward pass."""
        return grpo_step.compute_logprobs(
            self.model,
            batch,
            vocab_size=self.arch.vocab_size,
            temperatures=temperatures,
            micro_batch_size=self.cfg.parallel.micro_batch_size,
            max_tokens=self.cfg.parallel.max_tokens_per_micro_batch,
            fused_output=self.cfg.fused_output_layer,
        )[0]

    def compute_logprobs_and_entropy(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward-only log-probs and entropies of the next-token distributions, [B, L-1] each."""
        logp_1BT, entropy_BT = grpo_step.compute_logprobs(
            self.model,
            batch,
            vocab_size=self.arch.vocab_size,
            temperatures=[self.temperature],
            micro_batch_size=self.cfg.parallel.micro_batch_size,
            max_tokens=self.cfg.parallel.max_tokens_per_micro_batch,
            fused_output=self.cfg.fused_output_layer,
            with_entropy=True,
        )
        return logp_1BT[0], entropy_BT

    def compute_ref_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """Log-probs [B, L-1] of the frozen base policy (the KL loss's reference) at the configured
        temperature; collective, forward only."""
        if self.reference is None:
            raise RuntimeError("no reference policy: it is built only when loss.kl_coef > 0")
        return self.reference.compute_logprobs(batch, self.temperature)

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer update on `batch` (a step's batch or one PPO mini-batch of it); metrics: loss,
        pg_loss, clipfrac_*, approx_kl, kl / entropy when enabled, grad_norm, lr, skipped."""
        metrics = grpo_step.train_step(
            self.model,
            self.optimizer,
            self.lr_scheduler,
            batch,
            self.loss,
            vocab_size=self.arch.vocab_size,
            temperature=self.temperature,
            micro_batch_size=self.cfg.parallel.micro_batch_size,
            max_tokens=self.cfg.parallel.max_tokens_per_micro_batch,
            fused_output=self.cfg.fused_output_layer,
        )
        if not metrics["skipped"]:
            self.step += 1
            self.skips_in_a_row = 0
            return metrics
        self.skips_in_a_row += 1
        limit = self.cfg.max_consecutive_skips
        if limit and self.skips_in_a_row >= limit:
            raise NonFiniteUpdatesError(
                f"{self.skips_in_a_row} optimizer updates in a row were skipped for a non-finite loss "
                f"({metrics['loss']}) or gradient norm ({metrics['grad_norm']}) after update {self.step}: "
                "the run has diverged (learner.max_consecutive_skips); resume from an earlier checkpoint "
                "with a lower learning rate"
            )
        return metrics

    def iter_hf_weights(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """See `megatron_s2l.learner.export.iter_hf_weights` (collective; this rank's stage)."""
        return export.iter_hf_weights(self.model, self.arch, dtype=dtype)

    def export_hf(self, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write an HF checkpoint (collective); tokenizer files come from the source checkpoint."""
        return export.export_hf(
            self.model, self.arch, self.raw_hf_config, out_dir, source_dir=self.source_dir, dtype=dtype
        )

    def save(self, directory: str | Path) -> Path:
        """Atomically save model, optimizer, scheduler and step (collective)."""
        return checkpoint.save_checkpoint(directory, self.model, self.optimizer, self.lr_scheduler, self.step)

    def load(self, directory: str | Path) -> None:
        """Restore the state saved by `save` (same parallel layout; collective)."""
        self.step = checkpoint.load_checkpoint(directory, self.model, self.optimizer, self.lr_scheduler)
