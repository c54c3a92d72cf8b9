"""verify_math against the math benchmarks shipped in the package (``iprime/eval/data``).

For each benchmark, a *positive* sample is the gold solution (MATH-500,
Minerva: the full reference solution, whose last box is the answer) or the
gold answer written as ``The final answer is $\\boxed{<gold>}$``
(OlympiadBench, whose solutions have no boxes); it must verify against the
row's gold. A *negative* sample boxes the gold of the next row whose gold
differs as a string; it must be rejected. Both rates must be >= 99%.

The test suite runs all of MATH-500 in parallel and a fixed, evenly spaced
subset of Minerva and OlympiadBench (``SUBSET`` rows each) to stay within the
time budget. For the full figures and the list of misses run:

    .venv/bin/python tests/test_verifiers_math_benchmarks.py
"""

from __future__ import annotations

import sys

import pytest

from iprime.eval.benchmarks import read_data_file
from iprime.verifiers import VerifierPool, verify_batch
from iprime.verifiers.rows import math500_golds, minerva_golds, olympiadbench_golds

SUBSET = 120  # rows per benchmark in the test suite for Minerva / OlympiadBench
THRESHOLD = 0.99


def _boxed(gold: str) -> str:
    return f"The final answer is $\\boxed{{{gold.replace('$', '')}}}$."


BENCHMARKS = {
    # name: (loader, golds(row), positive response(row, golds))
    "math500": (lambda: read_data_file("math500.json.gz"), math500_golds, lambda row, golds: row["solution"]),
    "minerva": (lambda: read_data_file("minerva_math.jsonl.gz"), minerva_golds, lambda row, golds: row["solution"]),
    "olympiadbench": (
        lambda: read_data_file("olympiadbench.jsonl.gz"),
        olympiadbench_golds,
        lambda row, golds: _boxed(golds[0]),
    ),
}


def evaluate(name: str, limit: int | None = None, pool: VerifierPool | None = None) -> dict:
    """Positive/negative acceptance rates of verify_math on one benchmark."""
    loader, golds_of, positive_of = BENCHMARKS[name]
    rows = loader()
    if limit is not None and limit < len(rows):
        step = len(rows) / limit
        rows = [rows[int(i * step)] for i in range(limit)]
    golds = [golds_of(row) for row in rows]
    positives = [positive_of(row, g) for row, g in zip(rows, golds)]
    negatives, neg_refs, neg_ids = [], [], []
    for i, g in enumerate(golds):
        # The next row (cyclically) whose gold differs as a string.
        for step in range(1, len(rows)):
            other = golds[(i + step) % len(rows)]
            if other[0] != g[0]:
                negatives.append(_boxed(other[0]))
                neg_refs.append(g)
                neg_ids.append(i)
                break
    pos = verify_batch("math", positives, golds, pool=pool, timeout_s=10)
    neg = verify_batch("math", negatives, neg_refs, pool=pool, timeout_s=10)
    pos_misses = [(i, golds[i], r.reason) for i, r in enumerate(pos) if r.score != 1.0]
    neg_misses = [(neg_ids[j], neg_refs[j], negatives[j], r.reason) for j, r in enumerate(neg) if r.score != 0.0]
    return {
        "name": name,
        "rows": len(rows),
        "positive_rate": 1 - len(pos_misses) / len(pos),
        "negative_rate": 1 - len(neg_misses) / len(neg),
        "positive_misses": pos_misses,
        "negative_misses": neg_misses,
        "negatives": len(neg),
    }


def _report(result: dict) -> str:
    lines = [
        f"{result['name']}: {result['rows']} rows; gold accepted "
        f"{result['positive_rate']:.2%} ({result['rows'] - len(result['positive_misses'])}/{result['rows']}); "
        f"other gold rejected {result['negative_rate']:.2%} "
        f"({result['negatives'] - len(result['negative_misses'])}/{result['negatives']})"
    ]
    for i, gold, reason in result["positive_misses"]:
        lines.append(f"  positive miss row {i}: gold={gold!r}: {reason}")
    for i, gold, response, _reason in result["negative_misses"]:
        lines.append(f"  negative miss row {i}: gold={gold!r} accepted {response!r}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2) as shared:
        yield shared


@pytest.mark.parametrize("name,limit", [("math500", None), ("minerva", SUBSET), ("olympiadbench", SUBSET)])
def test_benchmark_gold_accepted_and_other_rejected(name: str, limit: int | None, pool: VerifierPool) -> None:
    result = evaluate(name, limit, pool)
    print(_report(result))
    assert result["positive_rate"] >= THRESHOLD, _report(result)
    assert result["negative_rate"] >= THRESHOLD, _report(result)


def test_row_adapters_cover_all_rows() -> None:
    for name, (loader, golds_of, _) in BENCHMARKS.items():
        for row in loader():
            golds = golds_of(row)
            assert golds and all(isinstance(g, str) and g for g in golds), (name, row)


if __name__ == "__main__":
    names = sys.argv[1:] or list(BENCHMARKS)
    with VerifierPool(workers=2) as shared_pool:
        for benchmark in names:
            print(_report(evaluate(benchmark, pool=shared_pool)), flush=True)
