"""DAPO extras as pure tensor functions: dynamic-sampling group filter and overlong shaping."""

from __future__ import annotations

import torch


def groups_with_signal(rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """Bool [N]: True for samples whose group's rewards are not all equal (DAPO dynamic sampling
    keeps only those: an all-equal group has zero advantage and so no gradient)."""
    _, group_N = torch.unique(group_index, return_inverse=True)
    num_groups = int(group_N.max()) + 1 if group_N.numel() else 0
    rewards = rewards.to(torch.float64)
    hi_G = torch.full((num_groups,), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, group_N, rewards, "amax"
    )
    lo_G = torch.full((num_groups,), torch.inf, dtype=torch.float64).scatter_reduce(
        0, group_N, rewards, "amin"
    )
    return (hi_G > lo_G)[group_N]


def overlong_penalty(
    response_lengths: torch.Tensor, max_response_length: int, buffer: int, factor: float = 1.0
) -> torch.Tensor:
    """DAPO soft overlong punishment, added to the reward:
    min(-(L - (L_max - buffer)) / buffer * factor, 0); zero up to L_max - buffer, -factor at L_max."""
    if not 0 < buffer <= max_response_length:
        raise ValueError(f"overlong buffer must be in (0, {max_response_length}], got {buffer}")
    excess = response_lengths.to(torch.float32) - (max_response_length - buffer)
    return torch.clamp(-excess / buffer * factor, max=0.0)
