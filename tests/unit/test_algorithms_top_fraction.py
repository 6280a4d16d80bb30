"""top_fraction_mask: the high-entropy token selection of rl.top_entropy_fraction."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import top_fraction_mask


def test_keeps_the_largest_valid_values_by_hand() -> None:
    x = torch.tensor([[0.9, 0.1, 5.0, 0.4], [0.8, 0.7, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0]])  # 5.0 and the last 0.0 are padding
    keep = top_fraction_mask(x, mask, 0.5)  # 6 valid tokens -> 3 kept: 0.9, 0.8, 0.7
    assert keep.tolist() == [[True, False, False, False], [True, True, False, False]]
    assert top_fraction_mask(x, mask, 1.0).tolist() == mask.bool().tolist()
    # ceil: 0.2 of 6 valid tokens keeps 2
    assert int(top_fraction_mask(x, mask, 0.2).sum()) == 2


def test_count_ties_nan_and_padding_against_a_sort() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (6, 9), generator=gen).float()  # many ties
    x[0, 0] = float("nan")
    mask = (torch.rand(6, 9, generator=gen) > 0.3).float()
    for fraction in (0.05, 0.2, 0.5, 0.99):
        keep = top_fraction_mask(x, mask, fraction)
        n_valid = int(mask.sum())
        assert int(keep.sum()) == math.ceil(fraction * n_valid)
        assert not bool((keep & ~mask.bool()).any())  # never a padded position
        # every kept value >= every dropped valid value, and ties go to the earlier position
        flat, valid, kept = x.reshape(-1), mask.bool().reshape(-1), keep.reshape(-1)
        values = flat.nan_to_num(nan=float("-inf"))
        order = sorted((i for i in range(flat.numel()) if valid[i]), key=lambda i: (-values[i], i))
        want = set(order[: math.ceil(fraction * n_valid)])
        assert {i for i in range(flat.numel()) if kept[i]} == want


def test_empty_mask_and_bad_fraction() -> None:
    x = torch.rand(2, 3)
    assert not bool(top_fraction_mask(x, torch.zeros(2, 3), 0.2).any())
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            top_fraction_mask(x, torch.ones(2, 3), bad)
