"""Verifier throughput on this machine: samples/s, sequential vs. process pool.

    .venv/bin/python benchmarks/verifiers.py [--math N] [--code N] [--workers W]

Math samples are MATH-500 reference solutions checked against their gold
answers; code samples are MBPP canonical solutions run against their tests
in the sandbox. "sequential" is a :class:`VerifierPool` with one worker (one
sample after another), "pool" one with ``--workers`` workers; worker
start-up is excluded. Data is read from
../shared/data/benchmarks relative to the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from iprime.verifiers import VerifierPool
from iprime.verifiers.rows import math500_golds, mbpp_tests

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"


def math_samples(n: int) -> tuple[list[str], list]:
    columns = json.loads((DATA / "math500.json").read_text())
    keys = sorted(columns["problem"], key=int)[:n]
    rows = [{field: columns[field][k] for field in columns} for k in keys]
    return [r["solution"] for r in rows], [math500_golds(r) for r in rows]


def code_samples(n: int) -> tuple[list[str], list]:
    rows = json.loads((DATA / "mbpp.json").read_text())[:n]
    return [f"```python\n{r['code']}\n```" for r in rows], [mbpp_tests(r) for r in rows]


def timed(fn) -> tuple[float, list]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def throughput(kind: str, responses: list[str], refs: list, workers: int) -> tuple[float, list]:
    """Samples/s on a fresh, warmed-up pool (start-up excluded, caches cold).

    Each measurement gets new worker processes so that math-verify's and
    sympy's parse caches, filled by an earlier run over the same samples,
    cannot flatter the later one.
    """
    with VerifierPool(workers=workers) as pool:
        pool.verify("math", [r"\boxed{1}"] * workers, ["1"] * workers)  # wait until all workers are up
        elapsed, results = timed(lambda: pool.verify(kind, responses, refs))
    return len(responses) / elapsed, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--math", type=int, default=200, help="math samples")
    parser.add_argument("--code", type=int, default=100, help="code samples")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    rows = []
    for kind, (responses, refs) in (("math", math_samples(args.math)), ("code", code_samples(args.code))):
        seq_rate, seq = throughput(kind, responses, refs, 1)
        pool_rate, pooled = throughput(kind, responses, refs, args.workers)
        assert [r.score for r in seq] == [r.score for r in pooled], f"{kind}: results differ between runs"
        accuracy = sum(r.score for r in pooled) / len(pooled)
        rows.append((kind, len(responses), seq_rate, pool_rate, pool_rate / seq_rate, accuracy))

    print(f"verifier throughput on {os.cpu_count()} cores: sequential = 1 worker, pool = {args.workers} workers")
    print(f"{'kind':<6} {'samples':>7} {'sequential/s':>13} {'pool/s':>9} {'ratio':>6} {'score':>6}")
    for kind, n, seq_rate, pool_rate, ratio, accuracy in rows:
        print(f"{kind:<6} {n:>7} {seq_rate:>13.1f} {pool_rate:>9.1f} {ratio:>5.2f}x {accuracy:>6.2f}")


if __name__ == "__main__":
    main()
