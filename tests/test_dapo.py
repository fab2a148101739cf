"""Literal-value tests for lib/algo/dapo.py (DAPO pure functions, matched against verl's recipe)."""

import math

import pytest
import torch

from lib.algo.dapo import (
    group_advantages,
    keep_groups,
    kept_group_ids,
    masked_mean,
    overlong_penalty,
)

D = torch.float64


# -----------------------------------------------------------------------------
# group_advantages


def test_group_advantages_literal():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 3.0])
    groups = [0, 0, 0, 0, 1, 1, 1, 2]
    adv = group_advantages(rewards, groups)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # mean .5, unbiased std sqrt(1/3)
    expect = torch.tensor([a, -a, a, -a, 0.0, 0.0, 0.0, 0.0])
    assert torch.allclose(adv, expect, atol=1e-6)
    assert (adv[4:] == 0).all()  # zero-std group and group of one are exactly 0
    assert adv.dtype == torch.float32 and adv.shape == (8,)


def test_group_advantages_id_types_and_order():
    rewards = torch.tensor([2.0, 0.0, 5.0, 1.0, 3.0])
    by_str = group_advantages(rewards, ["u1", "u2", "u1", "u2", "u1"])
    by_tensor = group_advantages(rewards, torch.tensor([7, 3, 7, 3, 7]))
    assert torch.allclose(by_str, by_tensor)
    g = torch.tensor([2.0, 5.0, 3.0])
    assert torch.allclose(by_str[[0, 2, 4]], (g - g.mean()) / (g.std() + 1e-6))
    assert torch.allclose(by_str[[1, 3]], torch.tensor([-0.5, 0.5]) / (math.sqrt(0.5) + 1e-6))


def test_group_advantages_matches_loop_reference():
    g = torch.Generator().manual_seed(4)
    rewards = torch.randn(40, generator=g, dtype=D)
    groups = torch.randint(0, 7, (40,), generator=g)
    adv = group_advantages(rewards, groups, eps=1e-3)
    for k in groups.unique():
        sel = groups == k
        if sel.sum() > 1:
            r = rewards[sel]
            assert torch.allclose(adv[sel], (r - r.mean()) / (r.std() + 1e-3), rtol=1e-10)


def test_group_advantages_identical_non_dyadic_rewards_are_exactly_zero():
    # float32 mean of seven 0.1's is off by one ulp; a naive (r-mean)/(std+eps) gives ~0.01
    rewards = torch.full((7,), 0.1)
    naive = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    assert naive.abs().max() > 1e-3  # the pitfall is real
    assert (group_advantages(rewards, [0] * 7) == 0).all()


# -----------------------------------------------------------------------------
# dynamic sampling filter


def test_keep_groups_literal():
    acc = [1, 0, 1, 1, 0, 0, 1]
    ids = ["a", "a", "b", "b", "c", "c", "d"]
    assert keep_groups(acc, ids).tolist() == [True, True, False, False, False, False, True]
    assert kept_group_ids(acc, ids) == ["a", "d"]  # all-right / all-wrong dropped, singleton kept


def test_kept_group_ids_first_appearance_order_and_tensor_ids():
    values = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.2, 0.7])
    ids = torch.tensor([5, 3, 5, 3, 9, 1, 1])
    assert kept_group_ids(values, ids) == [5, 9, 1]
    assert kept_group_ids(torch.full((7,), 0.1), [0] * 7) == []  # identical non-dyadic values: no spread


# -----------------------------------------------------------------------------
# overlong penalty


def test_overlong_penalty_literal():
    pen = overlong_penalty([10, 16, 17, 18, 20], max_len=20, buffer_len=4)
    assert pen.tolist() == [0.0, 0.0, -0.25, -0.5, -1.0]
    pen = overlong_penalty(torch.tensor([18, 20]), max_len=20, buffer_len=4, factor=0.5)
    assert pen.tolist() == [-0.25, -0.5]
    assert overlong_penalty([5, 20, 25], max_len=20, buffer_len=0).tolist() == [0.0, 0.0, 0.0]


# -----------------------------------------------------------------------------
# helpers


def test_masked_mean():
    x = torch.tensor([[1.0, 2.0, float("inf")], [4.0, float("nan"), 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == pytest.approx(13 / 4)
    assert masked_mean(x, mask, dim=-1).tolist() == [1.5, 5.0]
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0
