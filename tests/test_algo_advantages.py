"""Advantage estimators: hand-computed cases, invariants and bad arguments."""

import pytest
import torch

import iprime.algo.advantages as advantages_module
from iprime.algo import (
    AdvantageInputs,
    AdvantageOutput,
    advantage_estimator_names,
    batch_norm_process_rewards,
    gae_advantages,
    gae_advantages_and_returns,
    get_advantage_estimator,
    grpo_advantages,
    masked_whiten,
    prime_rloo_advantages,
    register_advantage_estimator,
    reinforce_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)

T = torch.tensor


@pytest.fixture
def group():
    """One prompt, K=3 responses of lengths 2, 3 and 1.

    Process rewards: row 0 mean 0.3, row 1 mean 0.1, row 2 mean -0.2 (sum of means S = 0.2).
    Paper baselines b_i = (S - mean_i) / 2 = -0.05, 0.05, 0.2.
    """
    outcome = T([1.0, 0.0, 0.0])
    rewards = T([[0.3, 0.3, 9.0], [0.1, -0.4, 0.6], [-0.2, 7.0, -5.0]])
    mask = T([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    return outcome, rewards, mask


def test_prime_paper_baseline_gamma_one(group):
    outcome, rewards, mask = group
    # centred: [.35,.35], [.05,-.45,.55], [-.4]; returns: [.7,.35], [.15,.1,.55], [-.4]
    # outcome RLOO: 1, -0.5, -0.5 on every valid token
    adv = prime_rloo_advantages(outcome, rewards, mask, group_size=3)
    expected = T([[1.7, 1.35, 0.0], [-0.35, -0.4, 0.05], [-0.9, 0.0, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)


def test_prime_paper_baseline_discounted(group):
    outcome, rewards, mask = group
    # gamma = 0.5: process [.525,.35], [-.0375,-.175,.55], [-.4]; outcome [.5,1], [-.125,-.25,-.5], [-.5]
    adv = prime_rloo_advantages(outcome, rewards, mask, group_size=3, gamma=0.5)
    expected = T([[1.025, 1.35, 0.0], [-0.1625, -0.425, 0.05], [-0.9, 0.0, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)


def test_prime_rm_coef_and_outcome_gamma(group):
    outcome, rewards, mask = group
    adv = prime_rloo_advantages(outcome, rewards, mask, group_size=3, rm_coef=2.0, gamma=0.5, outcome_gamma=1.0)
    expected = T(
        [
            [2 * 0.525 + 1, 2 * 0.35 + 1, 0.0],
            [2 * -0.0375 - 0.5, 2 * -0.175 - 0.5, 2 * 0.55 - 0.5],
            [2 * -0.4 - 0.5, 0.0, 0.0],
        ]
    )
    assert torch.allclose(adv, expected, atol=1e-6)


def test_prime_reference_baseline(group):
    outcome, rewards, mask = group
    # reference: 1.5 * r - S / 2 = 1.5 r - 0.1 -> [.35,.35], [.05,-.7,.8], [-.4]
    adv = prime_rloo_advantages(outcome, rewards, mask, group_size=3, rm_coef=1.0, process_baseline="reference")
    process = T([[0.7, 0.35, 0.0], [0.15, 0.1, 0.8], [-0.4, 0.0, 0.0]])
    out = T([[1.0, 1.0, 0.0], [-0.5, -0.5, -0.5], [-0.5, 0.0, 0.0]])
    assert torch.allclose(adv, process + out, atol=1e-6)


def test_reference_and_paper_agree_for_constant_token_rewards():
    outcome = T([1.0, 0.0])
    rewards = T([[0.2, 0.2], [-0.1, 0.0]])
    mask = T([[1, 1], [1, 0]], dtype=torch.bool)
    a = prime_rloo_advantages(outcome, rewards, mask, 2, process_baseline="paper")
    b = prime_rloo_advantages(outcome, rewards, mask, 2, process_baseline="reference")
    assert torch.allclose(a, b)


def test_batch_norm_divides_by_largest_absolute_return(group):
    _, rewards, mask = group
    # reverse cumsums: [.6,.3], [.3,.2,.6], [-.2] -> max |.| = 0.6
    normed = batch_norm_process_rewards(rewards, mask)
    expected = torch.where(mask, rewards, torch.zeros(())) / (0.6 + 1e-6)
    assert torch.allclose(normed, expected)
    outcome = T([1.0, 0.0, 0.0])
    adv = prime_rloo_advantages(outcome, rewards, mask, 3, rm_coef=0.0, normalize="batch_norm")
    assert torch.allclose(adv, rloo_advantages(outcome, mask, 3))
    # without a process group the rank's rows are the batch: both scopes divide by 0.6
    assert torch.equal(batch_norm_process_rewards(rewards, mask, scope="rank"), normed)
    a = prime_rloo_advantages(outcome, rewards, mask, 3, normalize="batch_norm", batch_norm_scope="rank")
    assert torch.equal(a, prime_rloo_advantages(outcome, rewards, mask, 3, normalize="batch_norm"))
    with pytest.raises(ValueError, match="batch_norm scope"):
        batch_norm_process_rewards(rewards, mask, scope="node")


def test_prime_whiten_gives_zero_mean_unit_variance(group):
    outcome, rewards, mask = group
    adv = prime_rloo_advantages(outcome, rewards, mask, 3, whiten=True)
    valid = adv[mask]
    assert valid.mean().abs() < 1e-6 and valid.std().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.all(adv[~mask] == 0)


def test_outcome_rloo_hand_computed_and_sums_to_zero():
    outcome = T([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    mask = torch.ones(6, 2, dtype=torch.bool)
    adv = rloo_advantages(outcome, mask, group_size=3)
    # group 1: 1 - 0 = 1, 0 - .5, 0 - .5; group 2: 1 - 1 = 0
    assert torch.allclose(adv[:, 0], T([1.0, -0.5, -0.5, 0.0, 0.0, 0.0]))
    assert torch.allclose(adv[:, 0].view(2, 3).sum(1), torch.zeros(2))


def test_all_equal_group_gives_zero_advantage():
    outcome = T([1.0, 1.0, 1.0])
    mask = torch.ones(3, 2, dtype=torch.bool)
    for estimator in (rloo_advantages, grpo_advantages):
        assert torch.all(estimator(outcome, mask, 3) == 0)
    # identical responses with constant token rewards: process part is zero too
    flat = T([[0.4, 0.4], [0.4, 0.4], [0.4, 0.4]])
    for baseline in ("paper", "reference"):
        adv = prime_rloo_advantages(outcome, flat, mask, 3, process_baseline=baseline)
        assert torch.allclose(adv, torch.zeros(3, 2), atol=1e-7)
    # identical responses whose token rewards vary: the baseline is the response's own mean,
    # so the return from the first token is zero and later tokens keep their shaping
    varying = T([[0.4, -0.2], [0.4, -0.2], [0.4, -0.2]])
    adv = prime_rloo_advantages(outcome, varying, mask, 3)
    assert torch.allclose(adv, T([[0.0, -0.3]] * 3), atol=1e-7)


def test_grpo_hand_computed():
    mask = T([[1, 1], [1, 0], [1, 1], [0, 0]], dtype=torch.bool)
    adv = grpo_advantages(T([1.0, 0.0, 0.0, 1.0]), mask, 4)
    a = 0.8660239037870368  # 0.5 / (std([1,0,0,1]) + 1e-6) with Bessel's correction
    assert torch.allclose(adv, T([[a, a], [-a, 0.0], [-a, -a], [0.0, 0.0]]), atol=1e-6)
    dr = grpo_advantages(T([1.0, 0.0, 0.0, 1.0]), mask, 4, norm_by_std=False)
    assert torch.allclose(dr, T([[0.5, 0.5], [-0.5, 0.0], [-0.5, -0.5], [0.0, 0.0]]))


def test_reinforce_batch_mean_baseline():
    adv = reinforce_advantages(T([1.0, 0.0, 0.0, 0.0]), torch.ones(4, 1, dtype=torch.bool), group_size=2)
    assert torch.allclose(adv[:, 0], T([0.75, -0.25, -0.25, -0.25]))


def test_reinforce_pp_hand_computed():
    mask = T([[1, 1], [1, 0]], dtype=torch.bool)
    kl = T([[0.1, 0.2], [0.3, 5.0]])
    # rewards [-.05, .9], [-.15]; returns [.85, .9], [-.15]; whitened (Bessel) over 3 tokens
    adv = reinforce_pp_advantages(T([1.0, 0.0]), mask, 1, kl=kl, kl_coef=0.5)
    expected = T([[0.5346282698697798, 0.6190432598492188], [-1.1536715297189986, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-5)


def test_gae_hand_computed():
    values = T([[0.5, 0.8, 9.0]])
    mask = T([[1, 1, 0]], dtype=torch.bool)
    # lam=.5, gamma=1: delta_1 = 1 - .8 = .2; delta_0 = .8 - .5 = .3; A_0 = .3 + .5 * .2
    adv, ret = gae_advantages_and_returns(T([1.0]), mask, values, gamma=1.0, lam=0.5, whiten=False)
    assert torch.allclose(adv, T([[0.4, 0.2, 0.0]])) and torch.allclose(ret, T([[0.9, 1.0, 0.0]]))
    # gamma=.9, lam=1: delta_0 = .9 * .8 - .5 = .22; A_0 = .22 + .9 * .2 = .4
    adv, _ = gae_advantages_and_returns(T([1.0]), mask, values, gamma=0.9, lam=1.0, whiten=False)
    assert torch.allclose(adv, T([[0.4, 0.2, 0.0]]))
    # with gamma = lam = 1 GAE reduces to return minus value
    adv, _ = gae_advantages_and_returns(T([1.0]), mask, values, whiten=False)
    assert torch.allclose(adv, T([[0.5, 0.2, 0.0]]))


def test_registry():
    assert advantage_estimator_names() == ["gae", "grpo", "prime", "reinforce", "reinforce_pp", "rloo"]
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        get_advantage_estimator("ppo2")
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("rloo")(lambda x: AdvantageOutput(x.outcome))
    spec = get_advantage_estimator("prime")
    assert spec.needs_process_rewards and spec.kl_in_reward and spec.min_group_size == 2
    assert get_advantage_estimator("gae").needs_values and not get_advantage_estimator("gae").data_parallel
    assert get_advantage_estimator("reinforce").min_group_size == 1


def test_registered_estimators_share_one_signature_and_equal_the_pure_functions(group):
    outcome, rewards, mask = group
    g = torch.Generator().manual_seed(0)
    values = torch.randn(mask.shape, generator=g)
    kl = torch.rand(mask.shape, generator=g)
    x = AdvantageInputs(
        outcome=outcome,
        mask=mask,
        group_size=3,
        token_rewards=rewards,
        values=values,
        kl=kl,
        kl_coef=0.1,
        gamma=0.9,
        lam=0.8,
        rm_coef=2.0,
        outcome_coef=3.0,
        normalize="batch_norm",
        whiten=True,
        process_baseline="reference",
    )
    expected = {
        "prime": prime_rloo_advantages(
            outcome,
            rewards - 0.1 * kl,
            mask,
            3,
            rm_coef=2.0,
            gamma=0.9,
            normalize="batch_norm",
            whiten=True,
            process_baseline="reference",
            outcome_coef=3.0,
        ),
        "rloo": masked_whiten(rloo_advantages(outcome, mask, 3, 0.9), mask),
        "grpo": masked_whiten(grpo_advantages(outcome, mask, 3), mask),
        "reinforce": masked_whiten(reinforce_advantages(outcome, mask, 3, 0.9), mask),
        "reinforce_pp": reinforce_pp_advantages(outcome, mask, 3, kl=kl, kl_coef=0.1, gamma=0.9),
        "gae": gae_advantages_and_returns(outcome, mask, values, 0.9, 0.8, -0.1 * kl, True)[0],
    }
    for name, want in expected.items():
        out = get_advantage_estimator(name)(x)
        assert torch.equal(out.advantages, want), name
        assert (out.returns is not None) == (name == "gae"), name
    no_prm = AdvantageInputs(outcome=outcome, mask=mask, group_size=3)
    with pytest.raises(ValueError, match="token_rewards"):
        get_advantage_estimator("prime")(no_prm)
    with pytest.raises(ValueError, match="values"):
        get_advantage_estimator("gae")(no_prm)


def test_a_module_path_imports_the_module_that_registers_the_estimator(tmp_path, monkeypatch):
    (tmp_path / "my_estimators.py").write_text(
        "from iprime.algo import AdvantageOutput, register_advantage_estimator, rloo_advantages\n"
        "@register_advantage_estimator('half_rloo')\n"
        "def half_rloo(x):\n"
        "    return AdvantageOutput(0.5 * rloo_advantages(x.outcome, x.mask, x.group_size))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(advantages_module, "_REGISTRY", dict(advantages_module._REGISTRY))  # undone after the test
    spec = get_advantage_estimator("my_estimators:half_rloo")
    assert spec.name == "half_rloo" and "half_rloo" in advantage_estimator_names()
    x = AdvantageInputs(outcome=T([1.0, 0.0]), mask=torch.ones(2, 2, dtype=torch.bool), group_size=2)
    assert torch.equal(spec(x).advantages, T([[0.5, 0.5], [-0.5, -0.5]]))
    with pytest.raises(ValueError, match="cannot import"):
        get_advantage_estimator("no_such_module_here:x")


def test_masks_are_respected(group):
    outcome, rewards, mask = group
    adv = prime_rloo_advantages(outcome, rewards, mask, 3)
    assert torch.all(adv[~mask] == 0)
    noisy = torch.where(mask, rewards, torch.full_like(rewards, float("nan")))
    assert torch.equal(prime_rloo_advantages(outcome, noisy, mask, 3), adv)


@pytest.mark.parametrize(
    "call",
    [
        lambda: prime_rloo_advantages(T([1.0, 0.0]), torch.zeros(2, 3), torch.ones(2, 4), 2),
        lambda: prime_rloo_advantages(T([1.0, 0.0, 1.0]), torch.zeros(3, 2), torch.ones(3, 2), 2),
        lambda: prime_rloo_advantages(T([1.0, 0.0]), torch.zeros(2, 2), torch.ones(2, 2), 1),
        lambda: prime_rloo_advantages(T([1.0, float("nan")]), torch.zeros(2, 2), torch.ones(2, 2), 2),
        lambda: prime_rloo_advantages(T([1.0, 0.0]), T([[0.0, float("nan")], [0.0, 0.0]]), torch.ones(2, 2), 2),
        lambda: prime_rloo_advantages(T([1.0, 0.0]), torch.zeros(2, 2), torch.ones(2, 2), 2, normalize="l2"),
        lambda: prime_rloo_advantages(T([1.0, 0.0]), torch.zeros(2, 2), torch.ones(2, 2), 2, gamma=1.5),
        lambda: prime_rloo_advantages(T([1.0, 0.0]), torch.zeros(2, 2), torch.ones(2, 2), 2, process_baseline="x"),
        lambda: rloo_advantages(T([1.0, 0.0, 1.0]), torch.ones(3, 2), 2),
        lambda: grpo_advantages(T([1.0]), torch.ones(2, 2), 1),
        lambda: reinforce_pp_advantages(T([1.0]), torch.ones(1, 2), 1, kl=torch.zeros(1, 3)),
        lambda: reinforce_pp_advantages(T([1.0]), torch.ones(1, 2), 1, kl_coef=0.1),
        lambda: gae_advantages(T([1.0]), torch.ones(1, 2), 1),
        lambda: gae_advantages_and_returns(T([1.0]), torch.ones(1, 2), torch.zeros(1, 3)),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
