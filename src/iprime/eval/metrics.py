"""Evaluation metrics as pure functions over per-row sample lists.

Notation for one row: ``n`` samples with scores ``s_1..s_n`` in [0, 1]; a sample is *correct*
when its score is 1 (full credit: math answers and all-or-nothing code tests give 0 or 1).
Metrics that take ``k < n`` use the **first** ``k`` samples (samples are i.i.d., so this is an
unbiased draw of k), except pass@k, which uses all ``n`` through the unbiased estimator.

- ``avg@k``   = mean of the scores (for greedy decoding with ``n = 1`` this is pass@1).
- ``pass@k``  = ``1 - C(n-c, k) / C(n, k)`` with ``c`` correct samples (Chen et al., 2021),
  computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so no huge binomials appear.
- ``maj@k``   = correctness of the answer with the most votes among the first k samples.
- ``bon@k``   = correctness of the sample with the highest PRM sequence reward (best-of-N).
- ``wvote@k`` = correctness of the answer with the largest summed PRM weight, where a
  sample's weight is ``sigmoid(r)`` of its PRM sequence reward ``r = beta * sum_t log(pi_phi /
  pi_ref)`` (the PRM's own probability that the sample is correct, as trained by the CE loss);
  ``"exp"`` uses ``exp(r - max r)`` (a softmax over the samples), ``"one"`` is plain majority.

Tie-breaks (all deterministic): best-of-N takes the lowest index among equal rewards; a vote
tie goes to the group whose first member appears earliest. Samples without an extractable
answer do not vote; if none has one, the vote picks nothing and counts as wrong. A vote's
correctness is that of the winning group's first member (the group's representative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = [
    "VOTE_WEIGHTS",
    "avg_at_k",
    "best_of_n",
    "pass_at_k",
    "summarize_rows",
    "vote",
    "vote_weights",
]

VOTE_WEIGHTS = ("sigmoid", "exp", "one")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(scores: Sequence[float], k: int) -> float:
    """Mean score of the first ``k`` samples."""
    _check_k(scores, k)
    return sum(scores[:k]) / k


def best_of_n(rewards: Sequence[float], k: int | None = None) -> int:
    """Index of the highest reward among the first ``k`` (default all); ties -> lowest index."""
    k = len(rewards) if k is None else k
    _check_k(rewards, k)
    best = 0
    for i in range(1, k):
        if rewards[i] > rewards[best]:
            best = i
    return best


def vote_weights(rewards: Sequence[float], how: str = "sigmoid") -> list[float]:
    """Per-sample voting weights from PRM sequence rewards (see the module docstring)."""
    if how == "sigmoid":
        # written to avoid overflow for large |r|
        return [1.0 / (1.0 + math.exp(-r)) if r >= 0 else math.exp(r) / (1.0 + math.exp(r)) for r in rewards]
    if how == "exp":
        top = max(rewards)
        return [math.exp(r - top) for r in rewards]
    if how == "one":
        return [1.0] * len(rewards)
    raise ValueError(f"vote weight must be one of {VOTE_WEIGHTS}, got {how!r}")


def vote(groups: Sequence[int | None], weights: Sequence[float] | None = None, k: int | None = None) -> int | None:
    """Index of the winning group's first member among the first ``k`` samples, or ``None``.

    ``groups[i]`` is sample i's answer group (``None``: no answer, no vote), e.g. from
    :func:`iprime.eval.answers.group_answers`. ``weights`` default to 1 (majority vote).
    """
    k = len(groups) if k is None else k
    _check_k(groups, k)
    if weights is not None and len(weights) != len(groups):
        raise ValueError(f"{len(weights)} weights for {len(groups)} samples")
    totals: dict[int, float] = {}
    first: dict[int, int] = {}
    for i in range(k):
        g = groups[i]
        if g is None:
            continue
        totals[g] = totals.get(g, 0.0) + (1.0 if weights is None else float(weights[i]))
        first.setdefault(g, i)
    if not totals:
        return None
    # max total; on a tie the group seen first (smallest first index) wins
    winner = min(totals, key=lambda g: (-totals[g], first[g]))
    return first[winner]


def _check_k(values: Sequence, k: int) -> None:
    if not 1 <= k <= len(values):
        raise ValueError(f"k must be in [1, {len(values)}] (the number of samples), got {k}")


def _correct(score: float) -> bool:
    return float(score) >= 1.0


def summarize_rows(records: Sequence[Mapping], ks: Sequence[int], vote_weight: str = "sigmoid") -> dict:
    """Benchmark metrics from per-row records (the lines of ``generations.jsonl``).

    Each record has ``scores`` (n floats), ``groups`` (n answer-group ids or None),
    ``truncated`` (n bools), ``num_tokens`` (n ints) and optionally ``prm_rewards`` (n floats).
    ``ks`` larger than a row's n are skipped. Returns ``{"rows", "samples", "n", "avg@n",
    "pass@k", "maj@k", ["bon@k", "wvote@k"], "truncated_frac", "mean_tokens"}`` where the
    per-k voting metrics are averaged over rows that can vote (math rows) and omitted when
    no row can. Metric values are fractions in [0, 1].
    """
    if not records:
        raise ValueError("no records to summarize")
    ns = {len(r["scores"]) for r in records}
    if len(ns) != 1:
        raise ValueError(f"rows have different sample counts {sorted(ns)}; evaluate them separately")
    n = ns.pop()
    ks = sorted({k for k in ks if 1 <= k <= n}) or [n]
    has_prm = all(r.get("prm_rewards") is not None for r in records)
    all_scores = [s for r in records for s in r["scores"]]
    out: dict = {
        "rows": len(records),
        "samples": len(all_scores),
        "n": n,
        f"avg@{n}": sum(all_scores) / len(all_scores),
    }
    for k in ks:
        out[f"pass@{k}"] = _mean(pass_at_k(n, sum(map(_correct, r["scores"])), k) for r in records)
    voters = [r for r in records if r.get("votable", True)]
    if voters:
        for k in ks:
            out[f"maj@{k}"] = _mean(_pick_correct(r, vote(r["groups"], None, k)) for r in voters)
    if has_prm:
        for k in ks:
            out[f"bon@{k}"] = _mean(_correct(r["scores"][best_of_n(r["prm_rewards"], k)]) for r in records)
        if voters:
            for k in ks:
                out[f"wvote@{k}"] = _mean(
                    _pick_correct(
                        r, vote(r["groups"], vote_weights(r["prm_rewards"][:k], vote_weight) + [0.0] * (n - k), k)
                    )
                    for r in voters
                )
    out["truncated_frac"] = _mean(t for r in records for t in r["truncated"])
    out["mean_tokens"] = _mean(t for r in records for t in r["num_tokens"])
    return out


def _pick_correct(record: Mapping, index: int | None) -> bool:
    return index is not None and _correct(record["scores"][index])


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)
