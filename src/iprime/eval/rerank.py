"""Best-of-N and PRM-weighted voting over a file of sampled responses.

Input rows: ``{"prompt_id", "prompt", "response"}`` plus optional ``"reference"`` (gold
answer(s) for math, a tests dict for code) and ``"verifier"`` (``math`` default, ``code``,
``arithmetic``). Rows with the same ``prompt_id`` (default: the prompt text) are one group
of N candidates, in file order. For each group (metrics as in :mod:`iprime.eval.metrics`):

- ``best_of_n``: the candidate with the highest PRM sequence reward (ties: first);
- ``weighted_vote``: the answer with the largest sum of per-candidate weights
  (``sigmoid(R)`` by default), represented by its first candidate;
- ``majority``: the most frequent answer (the PRM-free baseline).

With references, every candidate is verified, so the output also says whether each pick is
correct and the summary compares the picks with the mean accuracy of the candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .answers import equality_for, extract_answer, group_answers
from .metrics import best_of_n, vote, vote_weights

__all__ = ["group_rows", "rerank_groups"]


def group_rows(rows: Sequence[Mapping]) -> dict[str, list[int]]:
    """``prompt_id`` (or the prompt text) -> row indices, groups and members in file order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        key = r.get("prompt_id", r.get("id", r["prompt"]))
        groups.setdefault(str(key), []).append(i)
    return groups


def rerank_groups(
    rows: Sequence[Mapping],
    rewards: Sequence[float],
    *,
    scores: Sequence[float] | None = None,
    weight: str = "sigmoid",
    equivalence: str = "math",
) -> tuple[list[dict], dict]:
    """Picks per group and a summary, from each row's PRM sequence reward.

    scores: per-row correctness in [0, 1] (from a verifier), or None when unknown.
    Returns ``(picks, summary)``; a pick is ``{"prompt_id", "n", "best_of_n", "weighted_vote",
    "majority"}``, each method ``{"index", "row", "response", "answer", "reward"[, "correct"]}``
    with ``index`` within the group and ``row`` in the file (``None`` if nothing voted).
    """
    if len(rewards) != len(rows):
        raise ValueError(f"{len(rewards)} rewards for {len(rows)} rows")
    if scores is not None and len(scores) != len(rows):
        raise ValueError(f"{len(scores)} scores for {len(rows)} rows")
    picks = []
    for pid, idx in group_rows(rows).items():
        verifier = str(rows[idx[0]].get("verifier", "math"))
        texts = [rows[i]["response"] for i in idx]
        answers = [extract_answer(t, verifier) for t in texts]
        groups = group_answers(answers, equality_for(equivalence, verifier))
        r = [float(rewards[i]) for i in idx]

        def describe(j: int | None) -> dict:
            if j is None:
                out = {"index": None, "row": None, "response": None, "answer": None, "reward": None}
                if scores is not None:
                    out["correct"] = False
                return out
            out = {"index": j, "row": idx[j], "response": texts[j], "answer": answers[j], "reward": r[j]}
            if scores is not None:
                out["correct"] = float(scores[idx[j]]) >= 1.0
            return out

        votable = verifier != "code"
        picks.append(
            {
                "prompt_id": pid,
                "n": len(idx),
                "best_of_n": describe(best_of_n(r)),
                "weighted_vote": describe(vote(groups, vote_weights(r, weight))) if votable else None,
                "majority": describe(vote(groups)) if votable else None,
            }
        )
    summary: dict = {"groups": len(picks), "responses": len(rows)}
    if scores is not None:
        summary["mean_accuracy"] = sum(float(s) >= 1.0 for s in scores) / len(scores)
        for method in ("best_of_n", "weighted_vote", "majority"):
            got = [p[method]["correct"] for p in picks if p[method] is not None]
            if got:
                summary[f"{method}_accuracy"] = sum(got) / len(got)
    return picks, summary
