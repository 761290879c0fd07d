"""The learner's optimizer: Megatron's (optionally distributed) Adam, gradient clipping, and the
learning-rate schedule (linear warmup, then constant / linear / cosine decay to min_lr)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LrSchedule = Literal["constant", "linear", "cosine"]


@dataclass(kw_only=True, slots=True)
class OptimizerConfig:
    lr: float = 1e-6
    """Peak learning rate (reached at the end of warmup)."""
    min_lr: float = 0.0
    """Learning rate at the end of decay (ignored by the constant schedule)."""
    lr_schedule: LrSchedule = "constant"
    """Shape after warmup: constant at lr, or linear / cosine decay to min_lr over decay_steps."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to lr."""
    decay_steps: int = 1000
    """Optimizer steps (warmup included) until the decay reaches min_lr."""
    weight_decay: float = 0.0
    """Decoupled (AdamW) weight decay; not applied to norms."""
    adam_beta1: float = 0.9
    """Adam first-moment decay."""
    adam_beta2: float = 0.999
    """Adam second-moment decay."""
    adam_eps: float = 1e-8
    """Adam denominator epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr], got {self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps <= self.warmup_steps and self.lr_schedule != "constant":
            raise ValueError(
                f"decay_steps ({self.decay_steps}) must exceed warmup_steps ({self.warmup_steps})"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.adam_eps <= 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}")


def build_optimizer(
    cfg: OptimizerConfig, ddp_model: torch.nn.Module, *, params_dtype: torch.dtype, distributed: bool
):
    """Megatron's optimizer over the DDP-wrapped model (fp32 main params and grads)."""
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    megatron_cfg = MegatronOptimizerConfig(
        optimizer="adam",
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.grad_clip,
        bf16=params_dtype == torch.bfloat16,
        params_dtype=params_dtype,
        use_distributed_optimizer=distributed,
    )
    return get_megatron_optimizer(megatron_cfg, [ddp_model])


def build_lr_scheduler(cfg: OptimizerConfig, optimizer):
    """Megatron's OptimizerParamScheduler; call `.step(1)` after each optimizer step."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.warmup_steps,
        lr_decay_steps=max(cfg.decay_steps, cfg.warmup_steps + 1),
        lr_decay_style=cfg.lr_schedule,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=1,
        wd_incr_style="constant",
    )
