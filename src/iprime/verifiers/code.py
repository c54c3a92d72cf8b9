"""Code verification: extract the program from a response and run its tests.

``tests`` is one of two shapes (see :mod:`iprime.verifiers.rows` for
adapters from HumanEval, MBPP and LeetCode rows):

* ``{"asserts": [...], "setup": "..."}``: ``setup`` (imports, helpers) and
  the candidate's code run once, then every assert snippet runs in its own
  forked process; a snippet passes if it finishes without raising.
* ``{"inputs": [...], "outputs": [...]}``: the program runs once per input
  with that text on stdin; a test passes if its stdout equals the expected
  output up to whitespace (compared token by token).

All execution happens in :mod:`iprime.verifiers.sandbox`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .extract import extract_code
from .result import VerifyResult
from .sandbox import Isolation, SandboxLimits, run_tests

__all__ = ["verify_code", "verify_code_detailed", "outputs_match"]


def outputs_match(got: str, expected: str) -> bool:
    """Whitespace-insensitive output comparison (APPS/CodeContests convention)."""
    return got.split() == expected.split()


def _validate_tests(tests: Mapping[str, Any]) -> str:
    if not isinstance(tests, Mapping):
        raise TypeError(f"tests must be a dict, got {type(tests).__name__}")
    has_asserts = "asserts" in tests
    has_io = "inputs" in tests or "outputs" in tests
    if has_asserts == has_io:
        raise ValueError("tests must have either 'asserts' (+ optional 'setup') or 'inputs' and 'outputs'")
    if has_io:
        if len(tests.get("inputs", [])) != len(tests.get("outputs", [])):
            raise ValueError("tests['inputs'] and tests['outputs'] must have the same length")
        return "stdio"
    return "asserts"


def verify_code_detailed(
    response: str,
    tests: Mapping[str, Any],
    timeout_s: float = 10.0,
    all_or_nothing: bool = True,
    *,
    limits: SandboxLimits | None = None,
    isolation: Isolation = "namespaces",
) -> VerifyResult:
    """Run the response's code against ``tests``; see :func:`verify_code`.

    ``timeout_s`` is the wall limit for the whole sample (all tests).
    ``limits`` overrides the other sandbox limits (its ``wall_s`` is replaced
    by ``timeout_s``). With ``all_or_nothing`` the remaining tests are
    skipped after the first failure, since they cannot change the score.
    Bad tests (wrong shape) raise ``ValueError``; bad code never raises.
    """
    start = time.monotonic()
    mode = _validate_tests(tests)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    code = extract_code(response)
    if code is None or not code.strip():
        return VerifyResult(0.0, 0, 0, "no code block found", time.monotonic() - start)
    base = limits or SandboxLimits()
    limits = SandboxLimits(**{**base.__dict__, "wall_s": timeout_s})

    if mode == "asserts":
        asserts = list(tests["asserts"])
        total = len(asserts)
        if total == 0:
            raise ValueError("tests['asserts'] is empty: nothing would be verified")
        run = run_tests(
            code,
            setup=tests.get("setup", "") or "",
            asserts=asserts,
            limits=limits,
            stop_on_failure=all_or_nothing,
            isolation=isolation,
        )
        outcomes = {t.index: (t.passed, t.reason) for t in run.tests}
    else:
        inputs, expected = list(tests["inputs"]), list(tests["outputs"])
        total = len(inputs)
        if total == 0:
            raise ValueError("tests['inputs'] is empty: nothing would be verified")
        run = run_tests(
            code,
            setup=tests.get("setup", "") or "",
            stdin_inputs=inputs,
            limits=limits,
            stop_on_failure=all_or_nothing,
            isolation=isolation,
        )
        outcomes = {}
        for t in run.tests:
            passed, reason = t.passed, t.reason
            got = run.outputs[t.index] if t.index < len(run.outputs) else None
            if passed and (got is None or not outputs_match(got, str(expected[t.index]))):
                passed = False
                reason = f"wrong output: got {(got or '')[:80]!r}, expected {str(expected[t.index])[:80]!r}"
            outcomes[t.index] = (passed, reason)

    passed = sum(1 for ok, _ in outcomes.values() if ok)
    # A run that was cut off (time or output limit) earns nothing: its
    # reported passes may be from before it misbehaved.
    if run.timed_out or run.output_limit_exceeded:
        passed = 0
    score = (1.0 if passed == total else 0.0) if all_or_nothing else passed / total
    return VerifyResult(score, passed, total, _reason(run, outcomes, total, passed), time.monotonic() - start)


def _reason(run, outcomes: dict, total: int, passed: int) -> str:
    if run.output_limit_exceeded:
        return "output limit exceeded"
    if run.timed_out:
        return f"timed out after {run.elapsed_s:.1f}s"
    if run.error:
        return run.error
    if passed == total:
        return f"passed {passed}/{total}"
    failures = [(i, r) for i, (ok, r) in sorted(outcomes.items()) if not ok]
    if failures:
        index, why = failures[0]
        return f"passed {passed}/{total}; test {index} failed: {why}"
    if not run.completed:
        tail = run.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {run.exit_code}"]
        return f"passed {passed}/{total}; run ended early: {tail[0][:300]}"
    return f"passed {passed}/{total}"


def verify_code(
    response: str,
    tests: Mapping[str, Any],
    timeout_s: float = 10.0,
    all_or_nothing: bool = True,
) -> float:
    """Score a response's last ```python block against ``tests`` in the sandbox.

    Returns 1.0/0.0 (all tests pass or not) with ``all_or_nothing`` (PRIME's
    pass-all reward), else the fraction of tests passed. No code block, a
    syntax error, a crash, a timeout or exceeding a limit all score 0.
    """
    return verify_code_detailed(response, tests, timeout_s, all_or_nothing).score
