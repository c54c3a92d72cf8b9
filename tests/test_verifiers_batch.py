"""verify_batch, the verifier registry, reasoning-gym, and canonical code solutions."""

from __future__ import annotations

import os
import time

import pytest

from iprime.verifiers import (
    GymTask,
    Verifier,
    VerifierPool,
    VerifyResult,
    available_verifiers,
    get_verifier,
    verify_batch,
)
from iprime.verifiers.rows import humaneval_tests, mbpp_tests
from iprime.verifiers.sandbox import check_isolation_available


# Module-level so worker processes can unpickle them. A worker imports this module when it
# unpickles one, inside the sample's deadline: keep the module's imports light (no torch, which
# iprime.eval pulls in; that is imported inside the test that needs it).
def crashing_verifier(response: str, reference) -> float:
    if response == "crash":
        os._exit(3)
    if response == "raise":
        raise ValueError("bad sample")
    if response == "hang":
        while True:
            pass
    return float(response == reference)


def test_registry() -> None:
    assert {"math", "code", "gym:<dataset>"} <= set(available_verifiers())
    assert isinstance(get_verifier("math"), Verifier)
    assert get_verifier("math")(r"\boxed{2}", "2") == 1.0
    with pytest.raises(KeyError):
        get_verifier("nope")


def test_batch_isolates_crashes_and_timeouts() -> None:
    responses = ["a", "crash", "b", "raise", "hang", "c"]
    references = ["a", "x", "x", "x", "x", "c"]
    start = time.monotonic()
    results = verify_batch(crashing_verifier, responses, references, workers=2, timeout_s=1.0)
    # A guard against a hang, not a timing: "hang" never returns, and each replacement worker
    # re-imports sympy, which takes seconds on a loaded 2-core machine.
    assert time.monotonic() - start < 120
    assert [r.score for r in results] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert "worker died" in results[1].reason
    assert "ValueError: bad sample" in results[3].reason
    assert "timed out" in results[4].reason
    assert [r.timed_out for r in results] == [False, False, False, False, True, False]


def test_batch_math_matches_sequential() -> None:
    responses = [r"\boxed{\frac{1}{2}}", r"\boxed{3}", "no answer", r"\boxed{9^{9^{9^{9}}}}"]
    references = ["0.5", "4", "1", "2"]
    pooled = verify_batch("math", responses, references, workers=2, timeout_s=2.0)
    inline = verify_batch("math", responses, references, workers=0, timeout_s=2.0)
    assert [r.score for r in pooled] == [r.score for r in inline] == [1.0, 0.0, 0.0, 0.0]
    assert all(isinstance(r, VerifyResult) for r in pooled)
    assert "timed out" in pooled[3].reason
    # math-verify's own deadline fired (in the worker, and inline): both count as timeouts
    assert [r.timed_out for r in pooled] == [r.timed_out for r in inline] == [False, False, False, True]


def test_pool_is_reusable() -> None:
    with VerifierPool(workers=2) as pool:
        for _ in range(2):
            results = verify_batch("math", [r"\boxed{1}"] * 4, ["1"] * 4, pool=pool)
            assert [r.score for r in results] == [1.0] * 4


def test_gym_adapter_offline() -> None:
    pytest.importorskip("reasoning_gym")
    for name in ("basic_arithmetic", "chain_sum"):
        task = GymTask(name, size=5, seed=1)
        rows = list(task)
        assert len(rows) == 5 and all("<answer>" in r["prompt"] and r["answer"] for r in rows)
        row = rows[0]
        assert task.score(f"thinking... <answer>{row['answer']}</answer>", row["entry"]) == 1.0
        assert task.score(f"so \\boxed{{{row['answer']}}}", row["entry"]) == 1.0
        assert task.score("<answer>definitely wrong</answer>", row["entry"]) == 0.0
        assert task.score_detailed("no answer", row["entry"]).reason.startswith("no <answer>")
        # By name through the registry and the worker pool.
        entries = [r["entry"] for r in rows]
        responses = [f"<answer>{r['answer']}</answer>" for r in rows]
        assert [r.score for r in verify_batch(f"gym:{name}", responses, entries, workers=2)] == [1.0] * 5


def test_canonical_code_solutions_pass() -> None:
    """HumanEval (all 164) and every 3rd MBPP row (133 of 399) canonical solutions pass.

    The full MBPP set takes ~40 s on 2 cores; the subset keeps the suite
    within its time budget. All rows pass when run in full (see the report).
    """
    from iprime.eval.benchmarks import read_data_file

    try:
        check_isolation_available("namespaces")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(str(exc))
    humaneval = read_data_file("humaneval.jsonl.gz")  # the copies shipped in iprime/eval/data
    mbpp = read_data_file("mbpp.json.gz")[::3]
    cases = {
        "humaneval": (
            [f"```python\n{r['prompt']}{r['canonical_solution']}\n```" for r in humaneval],
            [humaneval_tests(r) for r in humaneval],
        ),
        "mbpp": ([f"```python\n{r['code']}\n```" for r in mbpp], [mbpp_tests(r) for r in mbpp]),
    }
    with VerifierPool(workers=2) as pool:
        for name, (responses, tests) in cases.items():
            results = pool.verify("code", responses, tests, timeout_s=10.0)
            misses = [(i, r.reason) for i, r in enumerate(results) if r.score != 1.0]
            rate = 1 - len(misses) / len(results)
            print(
                f"{name}: {rate:.2%} ({len(results) - len(misses)}/{len(results)}) canonical solutions pass; "
                f"misses: {misses}"
            )
            assert rate >= 0.99, misses
