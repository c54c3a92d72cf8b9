"""Verifier throughput on this machine: samples/s, sequential vs. process pool.

    .venv/bin/python benchmarks/verifiers.py [--math N] [--code N] [--workers W]
    .venv/bin/python benchmarks/verifiers.py --inline [--math 200] [--code 40] [--workers 2] [--rounds 2]

Math samples are MATH-500 reference solutions checked against their gold
answers; code samples are MBPP canonical solutions run against their tests
in the sandbox. "sequential" is a :class:`VerifierPool` with one worker (one
sample after another), "pool" one with ``--workers`` workers; worker
start-up is excluded. Data is read from
../shared/data/benchmarks relative to the repository.

``--inline`` compares the trainer's two ways of scoring rows with
:func:`iprime.verifiers.score_rows`: inline (``workers=0``, in the training
process) against a :class:`VerifierPool` of ``--workers`` processes, on rows
in Eurus-2-RL-Data form (``ability`` + ``reward_model.ground_truth``): MATH-500
solutions, and code rows whose tests are JSON strings, half MBPP asserts and
half APPS-style stdin/stdout problems. Each inline measurement runs in a fresh
process and each pool is new, so no variant sees caches another one filled;
rounds alternate the order. Start-up (imports, worker spawn) is excluded from
the rates and printed on its own. Data: the copies shipped in iprime/eval/data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

from iprime.verifiers import VerifierPool, score_rows
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


# ----------------------------------------------------------------------------- --inline


# APPS-style stdin/stdout problems: (solution, input generator, expected output).
_STDIO_TASKS = [
    (
        "a, b = map(int, input().split())\nprint(a + b)",
        lambda r: f"{r[0]} {r[1]}\n",
        lambda r: f"{r[0] + r[1]}\n",
    ),
    (
        "n = int(input())\nxs = list(map(int, input().split()))\nprint(max(xs))",
        lambda r: f"{len(r)}\n{' '.join(map(str, r))}\n",
        lambda r: f"{max(r)}\n",
    ),
    (
        "s = input().strip()\nprint(s[::-1])",
        lambda r: "".join(chr(97 + abs(x) % 26) for x in r) + "\n",
        lambda r: "".join(chr(97 + abs(x) % 26) for x in r)[::-1] + "\n",
    ),
    (
        "n = int(input())\nxs = sorted(map(int, input().split()))\nprint(*xs)",
        lambda r: f"{len(r)}\n{' '.join(map(str, r))}\n",
        lambda r: " ".join(map(str, sorted(r))) + "\n",
    ),
]


def eurus_math_rows(n: int) -> tuple[list[str], list[dict]]:
    from iprime.eval.benchmarks import read_data_file

    rows = read_data_file("math500.json.gz")[:n]
    out = [
        {"ability": "math", "data_source": "math500", "reward_model": {"ground_truth": math500_golds(r)[0]}}
        for r in rows
    ]
    return [r["solution"] for r in rows], out


def eurus_code_rows(n: int) -> tuple[list[str], list[dict]]:
    """Half MBPP (asserts), half stdin/stdout problems; tests as JSON strings, as in Eurus-2-RL-Data."""
    import random

    from iprime.eval.benchmarks import read_data_file

    mbpp = read_data_file("mbpp.json.gz")[: n - n // 2]
    responses = [f"```python\n{r['code']}\n```" for r in mbpp]
    rows = [
        {"ability": "code", "data_source": "mbpp", "reward_model": {"ground_truth": json.dumps(mbpp_tests(r))}}
        for r in mbpp
    ]
    rng = random.Random(0)
    for i in range(n // 2):
        solution, make_input, make_output = _STDIO_TASKS[i % len(_STDIO_TASKS)]
        cases = [[rng.randint(-99, 99) for _ in range(rng.randint(2, 8))] for _ in range(5)]
        tests = {"inputs": [make_input(c) for c in cases], "outputs": [make_output(c) for c in cases]}
        responses.append(f"```python\n{solution}\n```")
        rows.append({"ability": "code", "data_source": "apps", "reward_model": {"ground_truth": json.dumps(tests)}})
    return responses, rows


_WARM_UP = ([r"\boxed{1}"], [{"ability": "math", "reward_model": {"ground_truth": "1"}}])


def _inline_child(conn, responses: list[str], rows: list[dict]) -> None:
    start = time.perf_counter()
    score_rows(*_WARM_UP, workers=0)  # imports math-verify / sympy, first-call costs
    first = time.perf_counter() - start
    elapsed, results = timed(lambda: score_rows(responses, rows, workers=0))
    conn.send((first, elapsed, [r.score for r in results]))
    conn.close()


def inline_rate(responses: list[str], rows: list[dict]) -> tuple[float, float, list[float]]:
    """(samples/s, first-call seconds, scores) of ``score_rows(workers=0)`` in a fresh process."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_inline_child, args=(child, responses, rows))
    proc.start()
    child.close()
    first, elapsed, scores = parent.recv()
    proc.join()
    return len(responses) / elapsed, first, scores


def _sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def wait_for_workers(pool: VerifierPool, deadline_s: float = 120.0) -> None:
    """Return once every worker has run a task (all started), so start-up stays out of the rates."""
    seen: set[int] = set()
    stop = time.monotonic() + deadline_s
    while len(seen) < pool.workers and time.monotonic() < stop:
        outcomes = pool._map(_sleep_pid, [(0.2,)] * pool.workers, 60.0)
        seen |= {o.value for o in outcomes if o.ok}


def pool_rate(responses: list[str], rows: list[dict], workers: int) -> tuple[float, float, list[float]]:
    """(samples/s, seconds from creating the pool to its first result, scores) on a new pool."""
    start = time.perf_counter()
    with VerifierPool(workers=workers) as pool:
        score_rows(*_WARM_UP, pool=pool)
        first = time.perf_counter() - start
        wait_for_workers(pool)
        elapsed, results = timed(lambda: score_rows(responses, rows, pool=pool))
    return len(responses) / elapsed, first, [r.score for r in results]


def inline_vs_pool(args: argparse.Namespace) -> None:
    data = {"math": eurus_math_rows(args.math), "code": eurus_code_rows(args.code)}
    rates: dict[tuple[str, str], list[float]] = {}
    firsts: dict[str, list[float]] = {"inline": [], "pool": []}
    scores: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for kind, (responses, rows) in data.items():
            order = ("pool", "inline") if round_ % 2 == 0 else ("inline", "pool")
            for variant in order:
                if variant == "inline":
                    rate, first, got = inline_rate(responses, rows)
                else:
                    rate, first, got = pool_rate(responses, rows, args.workers)
                rates.setdefault((kind, variant), []).append(rate)
                firsts[variant].append(first)
                if scores.setdefault(kind, got) != got:
                    raise AssertionError(f"{kind}: {variant} scored differently from the first run")

    print(
        f"verification throughput, samples/s: inline (score_rows workers=0) vs. the pool ({args.workers} workers); "
        f"{os.cpu_count()} cores, median of {args.rounds} rounds"
    )
    print(f"{'kind':<6} {'samples':>7} {'inline/s':>9} {'pool/s':>9} {'pool/inline':>12} {'score':>6}")
    ratios = {}
    for kind, (responses, _) in data.items():
        inline, pooled = statistics.median(rates[kind, "inline"]), statistics.median(rates[kind, "pool"])
        ratios[kind] = pooled / inline
        accuracy = sum(scores[kind]) / len(scores[kind])
        print(f"{kind:<6} {len(responses):>7} {inline:>9.1f} {pooled:>9.1f} {ratios[kind]:>11.2f}x {accuracy:>6.2f}")
    print(
        f"start-up, median: pool created -> first result {statistics.median(firsts['pool']):.2f} s; "
        f"inline first call (imports) {statistics.median(firsts['inline']):.2f} s"
    )
    print("RATIO " + " ".join(f"{kind}_pool_vs_inline={ratio:.3f}" for kind, ratio in ratios.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--math", type=int, default=None, help="math samples (default 200)")
    parser.add_argument("--code", type=int, default=None, help="code samples (default 100; 40 with --inline)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--inline", action="store_true", help="score_rows inline (workers=0) vs. the pool")
    parser.add_argument("--rounds", type=int, default=2, help="--inline: measurement rounds (order alternates)")
    args = parser.parse_args()
    args.math = 200 if args.math is None else args.math
    if args.code is None:
        args.code = 40 if args.inline else 100
    if args.inline:
        inline_vs_pool(args)
        return

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
