"""Implicit process rewards, PRM losses and PRM pairwise accuracy: hand-computed cases."""

import math

import pytest
import torch

from iprime.algo import (
    implicit_process_rewards,
    prm_ce_loss,
    prm_dpo_loss,
    prm_pairwise_accuracy,
    step_ends_from_delimiter,
)

T = torch.tensor


@pytest.fixture
def logps():
    # row 0: log-ratio [0.5, -1.0, 0.0, (masked 3.0)]; row 1: log-ratio 1.0 on 4 tokens
    prm = T([[-1.0, -2.0, -0.5, 0.0], [-1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    ref = T([[-1.5, -1.0, -0.5, -3.0], [-2.0, -2.0, -2.0, -2.0]], dtype=torch.float64)
    mask = T([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return prm, ref, mask


def test_token_rewards_are_beta_times_logratio_on_valid_tokens(logps):
    prm, ref, mask = logps
    r = implicit_process_rewards(prm, ref, mask, beta=0.5)
    assert torch.allclose(r, T([[0.25, -0.5, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64))


def test_whole_granularity_puts_the_sum_on_the_last_valid_token(logps):
    prm, ref, mask = logps
    r = implicit_process_rewards(prm, ref, mask, beta=0.5, granularity="whole")
    assert torch.allclose(r, T([[0.0, 0.0, -0.25, 0.0], [0.0, 0.0, 0.0, 2.0]], dtype=torch.float64))


def test_step_granularity_sums_each_step_onto_its_end(logps):
    prm, ref, mask = logps
    # row 0: steps {0}, {1, 2}; row 1: steps {0, 1}, {2, 3} (last step closed automatically)
    r = implicit_process_rewards(prm, ref, mask, beta=0.5, granularity="step", step_ends=[[0], [1]])
    assert torch.allclose(r, T([[0.25, 0.0, -0.5, 0.0], [0.0, 1.0, 0.0, 1.0]], dtype=torch.float64))
    as_mask = T([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    r2 = implicit_process_rewards(prm, ref, mask, beta=0.5, granularity="step", step_ends=as_mask)
    assert torch.equal(r, r2)


def test_granularities_keep_the_row_sum(logps):
    prm, ref, mask = logps
    sums = [
        implicit_process_rewards(prm, ref, mask, 0.5, g, step_ends=[[1], [0, 2]]).sum(-1)
        for g in ("token", "step", "whole")
    ]
    assert torch.allclose(sums[0], sums[1]) and torch.allclose(sums[0], sums[2])


def test_step_ends_from_delimiter():
    ids = T([[5, 9, 9, 7, 9, 9, 3, 0]])
    mask = T([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    pair = step_ends_from_delimiter(ids, mask, [9, 9])
    assert pair[0].nonzero().flatten().tolist() == [2, 5, 6]
    single = step_ends_from_delimiter(ids, mask, 9)
    assert single[0].nonzero().flatten().tolist() == [1, 2, 4, 5, 6]
    # a delimiter that runs into padding does not count
    ids2 = T([[1, 9, 9, 9]])
    assert step_ends_from_delimiter(ids2, T([[1, 1, 0, 0]], dtype=torch.bool), [9, 9])[0].tolist() == [
        False,
        True,
        False,
        False,
    ]


def test_prm_ce_loss_hand_computed(logps):
    prm, ref, mask = logps
    # logits: 0.5 * (-0.5) = -0.25 with label 1, 0.5 * 4 = 2 with label 0
    loss = prm_ce_loss(prm, ref, mask, T([1.0, 0.0], dtype=torch.float64), beta=0.5)
    assert loss.item() == pytest.approx((0.8259394198788436 + 2.1269280110429727) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(1.4764337154609082, abs=1e-12)


def test_prm_ce_loss_is_stable_for_huge_logits():
    prm = T([[0.0, 0.0]])
    ref = T([[-500.0, -500.0]])
    loss = prm_ce_loss(prm, ref, torch.ones(1, 2, dtype=torch.bool), T([0.0]), beta=1.0)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(1000.0)


def test_prm_dpo_loss_hand_computed(logps):
    prm, ref, mask = logps
    loss = prm_dpo_loss(prm, ref, mask, T([1.0, 0.0], dtype=torch.float64), beta=0.5, group_size=2)
    # the correct row scores -0.25, the wrong one 2.0: -log sigmoid(-2.25)
    assert loss.item() == pytest.approx(2.350206558916747, abs=1e-12)


def test_prm_dpo_loss_without_pairs_is_a_differentiable_zero(logps):
    prm, ref, mask = logps
    prm = prm.clone().requires_grad_(True)
    loss = prm_dpo_loss(prm, ref, mask, T([1.0, 1.0], dtype=torch.float64), beta=0.5, group_size=2)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(prm.grad == 0)


def test_prm_loss_gradients_match_finite_differences(logps):
    prm, ref, mask = logps
    prm = prm.clone().requires_grad_(True)
    outcome = T([1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: prm_ce_loss(p, ref, mask, outcome, 0.7), (prm,))
    assert torch.autograd.gradcheck(lambda p: prm_dpo_loss(p, ref, mask, outcome, 0.7, 2), (prm,))


def test_prm_ce_gradient_formula(logps):
    # dL/dprm_t = beta * (sigmoid(z) - y) / B on valid tokens, 0 on padding
    prm, ref, mask = logps
    prm = prm.clone().requires_grad_(True)
    prm_ce_loss(prm, ref, mask, T([1.0, 0.0], dtype=torch.float64), beta=0.5).backward()
    g0 = 0.5 * (torch.sigmoid(T(-0.25, dtype=torch.float64)) - 1.0) / 2
    g1 = 0.5 * torch.sigmoid(T(2.0, dtype=torch.float64)) / 2
    expected = torch.stack([torch.stack([g0, g0, g0, g0 * 0]), g1.repeat(4)])
    assert torch.allclose(prm.grad, expected)


def test_pairwise_accuracy_hand_computed():
    # pairs (better, worse): (0,1) right, (0,3) right, (2,1) wrong, (2,3) tie -> 2.5 / 4
    acc = prm_pairwise_accuracy(T([2.0, 1.0, 0.5, 0.5]), T([1.0, 0.0, 1.0, 0.0]), group_size=4)
    assert acc == pytest.approx(0.625)
    # pairs never cross groups: each group alone is ranked perfectly
    acc2 = prm_pairwise_accuracy(T([1.0, 0.0, 9.0, 8.0]), T([1.0, 0.0, 1.0, 0.0]), group_size=2)
    assert acc2 == 1.0
    assert math.isnan(prm_pairwise_accuracy(T([1.0, 2.0]), T([1.0, 1.0]), group_size=2))


@pytest.mark.parametrize(
    "call",
    [
        lambda: implicit_process_rewards(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3), 0.1),
        lambda: implicit_process_rewards(T([[float("nan")]]), T([[0.0]]), T([[1]]), 0.1),
        lambda: implicit_process_rewards(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 0.1, "sentence"),
        lambda: implicit_process_rewards(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 0.1, "step"),
        lambda: implicit_process_rewards(
            torch.zeros(1, 2), torch.zeros(1, 2), T([[1, 0]]), 0.1, "step", step_ends=[[1]]
        ),
        lambda: prm_ce_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), T([1.0]), 0.1),
        lambda: prm_ce_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), T([2.0]), 0.1),
        lambda: prm_ce_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), T([float("nan")]), 0.1),
        lambda: prm_dpo_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(3), 0.1, 2),
        lambda: prm_pairwise_accuracy(torch.zeros(3), torch.zeros(3), 2),
        lambda: step_ends_from_delimiter(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), []),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_nan_outside_the_mask_is_ignored():
    prm = T([[-1.0, float("nan")]])
    r = implicit_process_rewards(prm, T([[-2.0, 0.0]]), T([[1, 0]]), beta=1.0)
    assert torch.equal(r, T([[1.0, 0.0]]))
