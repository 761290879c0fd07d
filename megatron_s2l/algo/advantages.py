"""Group-relative (GRPO) advantages over the combined explorer + learner group."""

from __future__ import annotations

import torch


def grpo_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """One advantage per sample: (r - mean_g) / (std_g + eps), std unbiased (n - 1), as in verl.

    `rewards` is a float tensor [N] (the sequence score), `group_index` an integer tensor [N] naming
    each sample's group (any values, any order, any group sizes). With `norm_by_std=False` the std
    division is skipped (Dr.GRPO).

    NOTE: a group of size 1 gets advantage 0. verl uses mean 0 / std 1 there (A = r), which turns a
    lone sample into baseline-free REINFORCE whose update depends on the reward's offset (+1/-1 and
    1/0 rewards would then train differently); with no group there is nothing to be relative to.
    """
    if rewards.ndim != 1 or group_index.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_index must be 1-D of equal length, got {tuple(rewards.shape)} "
            f"and {tuple(group_index.shape)}"
        )
    if rewards.numel() == 0:
        return rewards.new_zeros(0, dtype=torch.float32)
    scores_N = rewards.to(torch.float32)
    _, group_N = torch.unique(group_index, return_inverse=True)
    num_groups = int(group_N.max()) + 1
    count_G = torch.bincount(group_N, minlength=num_groups).to(torch.float32)
    mean_G = torch.zeros(num_groups).index_add_(0, group_N, scores_N) / count_G
    centered_N = scores_N - mean_G[group_N]
    if norm_by_std:
        var_G = torch.zeros(num_groups).index_add_(0, group_N, centered_N.square())
        std_G = (var_G / (count_G - 1).clamp(min=1)).sqrt()
        centered_N = centered_N / (std_G[group_N] + eps)
    return torch.where(count_G[group_N] > 1, centered_N, torch.zeros_like(centered_N))
