"""GRPO advantages against a float64 per-group re-derivation."""

import statistics

import pytest
import torch

from megatron_s2l.algo import groups_with_signal, grpo_advantages, overlong_penalty


def reference_advantages(
    rewards: list[float], groups: list[int], norm_by_std: bool, eps: float
) -> list[float]:
    out = []
    for r, g in zip(rewards, groups, strict=True):
        members = [x for x, h in zip(rewards, groups, strict=True) if h == g]
        if len(members) == 1:
            out.append(0.0)
            continue
        centred = r - statistics.fmean(members)
        out.append(centred / (statistics.stdev(members) + eps) if norm_by_std else centred)
    return out


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_random_groups_match_reference(norm_by_std: bool) -> None:
    gen = torch.Generator().manual_seed(torch.seed())
    sizes = torch.randint(1, 9, (12,), generator=gen).tolist()
    group_ids = torch.randperm(1000, generator=gen)[: len(sizes)].tolist()  # arbitrary, non-contiguous
    groups = [g for g, n in zip(group_ids, sizes, strict=True) for _ in range(n)]
    perm = torch.randperm(len(groups), generator=gen).tolist()  # samples in any order
    groups = [groups[i] for i in perm]
    rewards = (torch.randn(len(groups), generator=gen, dtype=torch.float64) * 3).tolist()
    got = grpo_advantages(torch.tensor(rewards), torch.tensor(groups), norm_by_std=norm_by_std)
    want = torch.tensor(reference_advantages(rewards, groups, norm_by_std, 1e-6), dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_hand_computed_group() -> None:
    # rewards 1, -1, -1, -1: mean -0.5, unbiased std 1.0 -> advantages 1.5, -0.5, -0.5, -0.5
    adv = grpo_advantages(torch.tensor([1.0, -1.0, -1.0, -1.0]), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]) / (1 + 1e-6))


def test_all_equal_group_has_zero_advantage_and_singletons_are_zero() -> None:
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0, 5.0]), torch.tensor([0, 0, 0, 1]))
    assert torch.equal(adv, torch.zeros(4))


@pytest.mark.parametrize(
    "rewards",
    [
        [-2.2] * 16,  # a non-dyadic constant: float32 statistics gave |A| ~ 0.1-0.2
        [-1.0 - 0.1 * 0.7] * 16,  # all wrong and truncated, overlong penalty factor 0.1
        [0.3] * 7,
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_non_dyadic_group_is_exactly_zero(rewards: list[float], dtype: torch.dtype) -> None:
    both = torch.tensor([*rewards, 1.0, -1.0], dtype=dtype)
    groups = torch.tensor([0] * len(rewards) + [1, 1])
    adv = grpo_advantages(both, groups)
    assert torch.equal(adv[: len(rewards)], torch.zeros(len(rewards)))
    assert adv.dtype == torch.float32 and adv[-2] > 0 > adv[-1]  # the other group still has signal


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="equal length"):
        grpo_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))


def test_dynamic_sampling_filter() -> None:
    rewards = torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 7.0])
    groups = torch.tensor([3, 3, 3, 9, 9, 4, 4, 5])
    assert groups_with_signal(rewards, groups).tolist() == [True] * 3 + [False] * 5


def test_overlong_penalty_matches_dapo_formula() -> None:
    lengths = torch.tensor([0, 10, 12, 13, 16, 20])
    # L_max 20, buffer 8: zero up to 12, then -(L - 12) / 8 * 0.5
    got = overlong_penalty(lengths, max_response_length=20, buffer=8, factor=0.5)
    want = torch.tensor([min(-(n - 12) / 8 * 0.5, 0.0) for n in lengths.tolist()])
    torch.testing.assert_close(got, want)
    assert got[-1].item() == -0.5
    with pytest.raises(ValueError):
        overlong_penalty(lengths, max_response_length=20, buffer=0)
