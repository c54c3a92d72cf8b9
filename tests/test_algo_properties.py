"""Property tests: the vectorized estimators against plain loops written from the formulas."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iprime.algo import (
    filter_groups,
    gae_advantages_and_returns,
    implicit_process_rewards,
    prime_rloo_advantages,
    prm_pairwise_accuracy,
    rloo_advantages,
)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def batches(draw):
    K = draw(st.integers(2, 4))
    G = draw(st.integers(1, 3))
    Tn = draw(st.integers(1, 6))
    B = K * G
    floats = st.floats(-3, 3, allow_nan=False, width=32)
    rewards = [[draw(floats) for _ in range(Tn)] for _ in range(B)]
    # masks may have holes and may be empty (an empty response)
    mask = [[draw(st.booleans()) for _ in range(Tn)] for _ in range(B)]
    outcome = [float(draw(st.integers(0, 1))) for _ in range(B)]
    return K, rewards, mask, outcome


def _returns(values, valid, gamma):
    """Plain reward-to-go over valid positions."""
    out, running = [0.0] * len(values), 0.0
    for t in reversed(range(len(values))):
        if valid[t]:
            running = values[t] + gamma * running
            out[t] = running
    return out


def _mean_valid(values, valid):
    n = sum(valid)
    return sum(v for v, m in zip(values, valid) if m) / n if n else 0.0


def prime_loop(K, rewards, mask, outcome, rm_coef, gamma, baseline):
    B = len(rewards)
    out = []
    for i in range(B):
        g = i // K
        members = range(g * K, g * K + K)
        means = {j: _mean_valid(rewards[j], mask[j]) for j in members}
        centred = []
        for _t, r in enumerate(rewards[i]):
            if baseline == "paper":
                b = sum(means[j] for j in members if j != i) / (K - 1)
            else:
                # reference: the token's own reward stands in for its response's mean
                b = (sum(means.values()) - r) / (K - 1)
            centred.append(r - b)
        process = _returns(centred, mask[i], gamma)
        a_o = outcome[i] - sum(outcome[j] for j in members if j != i) / (K - 1)
        last = max((t for t in range(len(mask[i])) if mask[i][t]), default=None)
        terminal = [a_o if t == last else 0.0 for t in range(len(mask[i]))]
        outcome_ret = _returns(terminal, mask[i], gamma)
        out.append([rm_coef * p + o if m else 0.0 for p, o, m in zip(process, outcome_ret, mask[i])])
    return out


@SETTINGS
@given(
    batches(), st.sampled_from([1.0, 0.9]), st.sampled_from([0.0, 0.5, 1.0]), st.sampled_from(["paper", "reference"])
)
def test_prime_advantages_match_the_formula(batch, gamma, rm_coef, baseline):
    K, rewards, mask, outcome = batch
    got = prime_rloo_advantages(
        torch.tensor(outcome),
        torch.tensor(rewards),
        torch.tensor(mask),
        K,
        rm_coef=rm_coef,
        gamma=gamma,
        process_baseline=baseline,
    )
    expected = torch.tensor(prime_loop(K, rewards, mask, outcome, rm_coef, gamma, baseline))
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)


@SETTINGS
@given(batches())
def test_outcome_rloo_sums_to_zero_in_each_group(batch):
    K, _, mask, outcome = batch
    full = torch.ones(len(outcome), 1, dtype=torch.bool)
    adv = rloo_advantages(torch.tensor(outcome), full, K)[:, 0]
    assert torch.allclose(adv.view(-1, K).sum(1), torch.zeros(len(outcome) // K), atol=1e-6)


@SETTINGS
@given(batches(), st.data())
def test_step_rewards_match_a_loop(batch, data):
    _, rewards, mask, _ = batch
    Tn = len(rewards[0])
    ends = [[t for t in range(Tn) if mask[i][t] and data.draw(st.booleans())] for i in range(len(rewards))]
    got = implicit_process_rewards(
        torch.tensor(rewards), torch.zeros(len(rewards), Tn), torch.tensor(mask), 1.0, "step", step_ends=ends
    )
    for i, row in enumerate(rewards):
        last = max((t for t in range(Tn) if mask[i][t]), default=None)
        row_ends = sorted(set(ends[i]) | ({last} if last is not None else set()))
        expected, start = [0.0] * Tn, 0
        for e in row_ends:
            expected[e] = sum(row[t] for t in range(start, e + 1) if mask[i][t])
            start = e + 1
        assert torch.allclose(got[i], torch.tensor(expected), atol=1e-4)


@SETTINGS
@given(batches(), st.sampled_from([1.0, 0.95]), st.sampled_from([1.0, 0.9, 0.0]))
def test_gae_matches_a_loop(batch, gamma, lam):
    _, values, mask, outcome = batch
    adv, ret = gae_advantages_and_returns(
        torch.tensor(outcome), torch.tensor(mask), torch.tensor(values), gamma=gamma, lam=lam, whiten=False
    )
    for i in range(len(values)):
        valid = [t for t in range(len(mask[i])) if mask[i][t]]
        expected = [0.0] * len(mask[i])
        next_v, next_a = 0.0, 0.0
        for k in reversed(range(len(valid))):
            t = valid[k]
            r = outcome[i] if k == len(valid) - 1 else 0.0
            delta = r + gamma * next_v - values[i][t]
            next_a = delta + gamma * lam * next_a
            next_v = values[i][t]
            expected[t] = next_a
        assert torch.allclose(adv[i], torch.tensor(expected), atol=1e-4)
        expected_ret = [a + values[i][t] if mask[i][t] else 0.0 for t, a in enumerate(expected)]
        assert torch.allclose(ret[i], torch.tensor(expected_ret), atol=1e-4)


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 4), st.data())
def test_filter_keeps_exactly_the_groups_in_the_band(K, G, data):
    outcome = [float(data.draw(st.integers(0, 1))) for _ in range(K * G)]
    truncated = [data.draw(st.booleans()) for _ in range(K * G)]
    low, high = sorted([data.draw(st.sampled_from([0.0, 0.2, 0.25, 0.5, 0.8, 1.0])) for _ in range(2)])
    keep = filter_groups(torch.tensor(outcome), torch.tensor(truncated), K, low, high).tolist()
    for g in range(G):
        acc = sum(outcome[g * K : g * K + K]) / K
        want = (low - 1e-9 <= acc <= high + 1e-9) and not any(truncated[g * K : g * K + K])
        assert keep[g * K : g * K + K] == [want] * K


@SETTINGS
@given(st.integers(2, 4), st.integers(1, 3), st.data())
def test_pairwise_accuracy_matches_a_loop(K, G, data):
    outcome = [float(data.draw(st.integers(0, 1))) for _ in range(K * G)]
    scores = [float(data.draw(st.integers(-2, 2))) for _ in range(K * G)]
    got = prm_pairwise_accuracy(torch.tensor(scores), torch.tensor(outcome), K)
    total, right = 0, 0.0
    for g in range(G):
        for i in range(g * K, g * K + K):
            for j in range(g * K, g * K + K):
                if outcome[i] > outcome[j]:
                    total += 1
                    right += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    assert (math.isnan(got) and total == 0) or abs(got - right / total) < 1e-9
