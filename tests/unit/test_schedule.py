"""Algorithm 1's schedule against hand-computed values."""

import itertools
import math

import pytest

from megatron_s2l.algo import s2l_alpha, s2l_schedule, s2l_split


@pytest.mark.parametrize(
    ("step", "t_mix", "group", "expected"),
    [
        (1, 5, 8, (8, 0)),  # first mixing step: all explorer
        (2, 5, 8, (6, 2)),  # alpha = 3/4
        (3, 5, 8, (4, 4)),  # alpha = 1/2
        (4, 5, 8, (2, 6)),  # alpha = 1/4
        (5, 5, 8, (0, 8)),  # last mixing step: alpha = 0
        (6, 5, 8, (0, 8)),  # after mixing: plain GRPO
        (2, 4, 9, (6, 3)),  # alpha = 2/3: 6 exactly
        (3, 4, 9, (3, 6)),  # alpha = 1/3: 1/3 * 9 is 3.0000000000000004 in floats, ceil must give 3
        (2, 4, 8, (6, 2)),  # alpha = 2/3: ceil(5.33) = 6
        (3, 4, 8, (3, 5)),  # alpha = 1/3: ceil(2.67) = 3
        (1, 1, 8, (8, 0)),  # T_mix = 1: alpha_1 = 1
        (2, 1, 8, (0, 8)),
        (1, 0, 8, (0, 8)),  # T_mix = 0: no explorer
        (1, 3, 1, (1, 0)),
        (2, 3, 1, (1, 0)),  # ceil(0.5 * 1) = 1
        (3, 3, 1, (0, 1)),
    ],
)
def test_split_hand_computed(step: int, t_mix: int, group: int, expected: tuple[int, int]) -> None:
    assert s2l_split(step, t_mix, group) == expected


def test_float_pitfall_really_is_a_pitfall() -> None:
    # Guards the test above: the naive float formula gets step 3 of T_mix=4, G=9 wrong.
    assert math.ceil((1 - (3 - 1) / (4 - 1)) * 9) == 4
    assert s2l_split(3, 4, 9)[0] == 3


def test_split_sums_to_group_and_is_monotone() -> None:
    for t_mix in range(1, 12):
        for group in range(1, 17):
            explorer = [s2l_split(i, t_mix, group)[0] for i in range(1, t_mix + 3)]
            assert all(a >= b for a, b in itertools.pairwise(explorer))
            assert explorer[0] == group
            for i in range(1, t_mix + 3):
                g_w, g_s = s2l_split(i, t_mix, group)
                assert g_w + g_s == group and g_w >= 0 and g_s >= 0
                alpha = s2l_alpha(i, t_mix)
                assert g_w == math.ceil(alpha * group)  # exact Fraction arithmetic


def test_t_mix_beyond_run_is_not_stretched() -> None:
    rows = s2l_schedule(3, 5, 8)
    assert [(r.g_explorer, r.g_learner) for r in rows] == [(8, 0), (6, 2), (4, 4)]
    assert rows[-1].alpha == 0.5


@pytest.mark.parametrize(("step", "t_mix", "group"), [(0, 3, 8), (1, -1, 8), (1, 3, 0)])
def test_invalid_arguments(step: int, t_mix: int, group: int) -> None:
    with pytest.raises(ValueError):
        s2l_split(step, t_mix, group)
