"""PPO loss, aggregation modes, KL estimators, entropy and the value loss."""

import math

import pytest
import torch

from iprime.algo import aggregate_loss, kl_loss, kl_penalty, ppo_policy_loss, ppo_value_loss

T = torch.tensor


@pytest.fixture
def ppo_case():
    # ratios: 1, 1.5 | 0.5, (masked); advantages 1, 1 | -1, (2)
    logp = T([[0.0, math.log(1.5)], [math.log(0.5), 0.0]])
    old = torch.zeros(2, 2)
    adv = T([[1.0, 1.0], [-1.0, 2.0]])
    mask = T([[1, 1], [1, 0]], dtype=torch.bool)
    return logp, old, adv, mask


def test_ppo_loss_hand_computed(ppo_case):
    logp, old, adv, mask = ppo_case
    # per token: -1 | max(-1.5, -1.2) = -1.2 | max(0.5, 0.8) = 0.8
    loss, metrics = ppo_policy_loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx((-1.0 - 1.2 + 0.8) / 3, abs=1e-6)
    assert metrics["clip_frac"] == pytest.approx(2 / 3)
    # approx_kl = mean(old - new) = -(0 + log 1.5 + log 0.5) / 3
    assert metrics["approx_kl"] == pytest.approx(-(math.log(1.5) + math.log(0.5)) / 3, abs=1e-6)


def test_ppo_aggregation_modes(ppo_case):
    logp, old, adv, mask = ppo_case
    seq, _ = ppo_policy_loss(logp, old, adv, mask, agg="seq-mean-token-mean")
    assert seq.item() == pytest.approx(((-1.0 - 1.2) / 2 + 0.8) / 2, abs=1e-6)
    dr, _ = ppo_policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm")
    assert dr.item() == pytest.approx((-1.0 - 1.2 + 0.8) / (2 * 2), abs=1e-6)
    dr8, _ = ppo_policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_len=8)
    assert dr8.item() == pytest.approx((-1.0 - 1.2 + 0.8) / (2 * 8), abs=1e-6)


def test_ppo_asymmetric_clip_and_dual_clip():
    logp = T([[math.log(1.5), math.log(5.0)]])
    adv = T([[1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # clip_high .28: first token max(-1.5, -1.28) = -1.28; second: max(5, 1.2) = 5
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 2), adv, mask, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 + 5.0) / 2, abs=1e-6)
    # dual clip 3 caps the negative-advantage token at -A * 3 = 3
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 2), adv, mask, clip_high=0.28, dual_clip=3.0)
    assert loss.item() == pytest.approx((-1.28 + 3.0) / 2, abs=1e-6)
    assert m["dual_clip_frac"] == pytest.approx(0.5)


def test_ppo_gradient_is_zero_where_clipped(ppo_case):
    logp, old, adv, mask = ppo_case
    logp = logp.clone().requires_grad_(True)
    loss, _ = ppo_policy_loss(logp, old, adv, mask)
    loss.backward()
    # token (0,0) unclipped: d(-A r)/dlogp = -A r / 3 = -1/3; clipped tokens and padding get 0
    assert torch.allclose(logp.grad, T([[-1 / 3, 0.0], [0.0, 0.0]]), atol=1e-6)


def test_ppo_gradient_matches_finite_differences():
    torch.manual_seed(0)
    logp = (torch.randn(3, 4, dtype=torch.float64) * 0.05).requires_grad_(True)
    old = torch.zeros(3, 4, dtype=torch.float64)
    adv = torch.randn(3, 4, dtype=torch.float64)
    mask = T([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert torch.autograd.gradcheck(lambda x: ppo_policy_loss(x, old, adv, mask, agg=agg)[0], (logp,))


def test_kl_estimators_hand_computed():
    d = T([math.log(2.0)])
    assert kl_penalty(d, T([0.0]), "k1").item() == pytest.approx(0.6931472, abs=1e-6)
    assert kl_penalty(d, T([0.0]), "k2").item() == pytest.approx(0.5 * math.log(2.0) ** 2, abs=1e-6)
    assert kl_penalty(d, T([0.0]), "k3").item() == pytest.approx(0.5 - 1 + math.log(2.0), abs=1e-6)
    assert torch.all(kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0)
    loss = kl_loss(T([[math.log(2.0), 0.0]]), torch.zeros(1, 2), T([[1, 0]]), "k1")
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_kl_estimators_are_unbiased_in_expectation():
    # samples from p = softmax(a); KL(p || q) estimated by the mean of k1 and k3
    torch.manual_seed(0)
    a, b = T([1.0, 0.0, -1.0]), T([0.0, 0.5, 0.0])
    logp, logq = a.log_softmax(0), b.log_softmax(0)
    exact = (logp.exp() * (logp - logq)).sum().item()
    idx = torch.multinomial(logp.exp(), 200_000, replacement=True)
    for kind in ("k1", "k3"):
        est = kl_penalty(logp[idx], logq[idx], kind).mean().item()
        assert est == pytest.approx(exact, abs=5e-3)


def test_value_loss_hand_computed():
    values, old, ret = T([[1.0, 0.0]]), T([[0.5, 0.0]]), T([[0.0, 1.0]])
    # token 0: unclipped 1, clipped (0.7 - 0)^2 = .49 -> 1; token 1: 1 -> 0.5 * mean(1, 1)
    loss, m = ppo_value_loss(values, old, ret, torch.ones(1, 2, dtype=torch.bool), clip=0.2)
    assert loss.item() == pytest.approx(0.5) and m["vf_clip_frac"] == 0.0
    values = T([[0.0, 0.0]])
    old = T([[1.0, 0.0]])
    # token 0: unclipped 0, clipped (0.8 - 0)^2 = .64 -> .64; token 1: 1
    loss, m = ppo_value_loss(values, old, ret, torch.ones(1, 2, dtype=torch.bool), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.0) / 2) and m["vf_clip_frac"] == 0.5


@pytest.mark.parametrize(
    "call",
    [
        lambda: ppo_policy_loss(torch.zeros(2, 2), torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 2)),
        lambda: ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), T([[float("nan"), 0.0]]), torch.ones(1, 2)),
        lambda: ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), agg="sum"),
        lambda: ppo_policy_loss(
            torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), dual_clip=0.5
        ),
        lambda: kl_penalty(torch.zeros(1), torch.zeros(1), "k4"),
        lambda: aggregate_loss(torch.zeros(1, 2), torch.ones(1, 2), "seq-mean-token-sum-norm", norm_len=0),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
