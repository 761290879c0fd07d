"""Group-relative (GRPO) advantages over the combined explorer + learner group."""

from __future__ import annotations

import torch

from megatron_s2l.algo.filters import groups_with_signal


def grpo_advantages(
    rewards: torch.Tensor, group_index: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """One advantage per sample: (r - mean_g) / (std_g + eps), std unbiased (n - 1), as in verl.

    `rewards` is a float tensor [N] (the sequence score), `group_index` an integer tensor [N] naming
    each sample's group (any values, any order, any group sizes). With `norm_by_std=False` the std
    division is skipped (Dr.GRPO).

    Group statistics are computed in float64, and a group whose rewards are all equal gets exactly
    0: in float32 the mean of 16 x -2.2 is off by an ulp, and dividing that residue by a std of
    about 1e-7 + eps gave |A| ~ 0.1-0.2 to samples that carry no signal (verl has this defect).

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
    scores_N = rewards.to(torch.float64)
    _, group_N = torch.unique(group_index, return_inverse=True)
    num_groups = int(group_N.max()) + 1
    count_G = torch.bincount(group_N, minlength=num_groups).to(torch.float64)
    mean_G = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_N, scores_N) / count_G
    centered_N = scores_N - mean_G[group_N]
    if norm_by_std:
        var_G = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_N, centered_N.square())
        std_G = (var_G / (count_G - 1).clamp(min=1)).sqrt()
        centered_N = centered_N / (std_G[group_N] + eps)
    has_signal_N = groups_with_signal(scores_N, group_N) & (count_G[group_N] > 1)
    return torch.where(has_signal_N, centered_N, 0.0).to(torch.float32)
