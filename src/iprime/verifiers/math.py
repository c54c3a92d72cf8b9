"""Math answer verification: extract the final answer, compare with math-verify.

``verify_math(response, gold)`` returns 1.0 when the response's final answer
(last ``\\boxed{}``/``\\fbox{}``, else the "The answer is ..." sentence, else
the value its last sentence states, "... so x = 5.") is mathematically
equivalent to the gold answer, else 0.0. Equivalence is math-verify's:
fractions vs decimals, symbolic simplification, intervals, sets/tuples,
matrices, with units, ``\\text{}`` and degree signs normalized away; and an
exact answer in terms of pi equals a decimal gold it rounds to (``2\\pi`` for
``6.28``, as PRIME's reward has it: ``_pi_verdict``).

Where this differs from PRIME's math reward (``training/verl/utils/reward_score/
evaluation_utils/math_util``) on purpose: a percentage's number is not its
fraction (PRIME gives ``0.25`` and ``2500`` full credit for a gold ``25``,
grader.py:195-196), interval brackets count (PRIME accepts ``(1,2)`` for
``(1,2]``, grader.py:220-228), sets are unordered (PRIME compares
``\\{2,1\\}`` with ``\\{1,2\\}`` element by element, grader.py:251-264), and a
decimal is no answer to a gold in terms of pi (PRIME substitutes pi = 3.14
in the gold as well, __init__.py:396). docs/fidelity.md has the table.

Timeouts. math-verify's own timeout uses ``signal.alarm``, which only works in
the main thread, has whole-second granularity and applies per step. We turn
it off (``parsing_timeout=None``/``timeout_seconds=None``) and enforce one
deadline per sample ourselves:

* in the main thread, a ``setitimer`` signal raises :class:`MathTimeout`
  inside the computation (cheap, no extra process);
* in any other thread (e.g. a reward thread of the trainer), or when a
  caller already runs an interval timer, the sample goes to a dedicated
  worker process that is killed if it overruns.

A signal cannot interrupt a single long C call (e.g. a gigantic integer
power inside sympy). For untrusted model output at scale use
:func:`iprime.verifiers.batch.verify_batch`, whose workers are hard-killed at
the deadline.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Sequence

from ._pool import DeadlinePool
from .extract import extract_final_answer, strip_math_delimiters
from .result import VerifyResult

__all__ = [
    "MathTimeout",
    "verify_math",
    "verify_math_detailed",
    "math_answers_equal",
    "normalize_gold",
]

DEFAULT_TIMEOUT_S = 5.0


class MathTimeout(BaseException):
    """Raised inside a comparison that ran past its deadline.

    A ``BaseException`` on purpose: math-verify and sympy catch ``Exception``
    internally, and the timeout must not be swallowed there.
    """


def _math_verify():
    """Import math_verify lazily (sympy import costs ~1 s) with a clear error."""
    try:
        import math_verify
        import math_verify.grader
        import math_verify.parser
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("iprime.verifiers.math needs math-verify: pip install 'math-verify[antlr4_13_2]'") from exc
    # We pass timeout=None on purpose and enforce our own deadline; silence
    # math-verify's one-time "you must provide the timeout yourself" warning.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return math_verify


def normalize_gold(gold: str | int | float) -> str:
    """Turn a benchmark gold answer into a bare LaTeX answer string.

    Handles ``$...$`` wrapping (also several ``$a$,$b$`` pieces, as in
    OlympiadBench multi-answer rows), trailing periods, and float golds that
    are integers (AMC's ``142.0`` -> ``142``).
    """
    if isinstance(gold, bool):
        raise TypeError("gold answer must be a string or number, not bool")
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if isinstance(gold, int):
        return str(gold)
    s = strip_math_delimiters(str(gold))
    if "$" in s:
        # "$69$,$84$" -> "69,84": drop the inline-math dollars entirely.
        s = s.replace("$", "")
    return s.strip()


# "4.5e33" / "1e-1": math-verify's LaTeX parser reads these as 4.5*E*33, so
# rewrite plain scientific notation as LaTeX before parsing (Minerva golds
# use it). Digits must follow the "e", so "2e" (two times Euler's e) is kept.
_SCI_RE = re.compile(r"(?<![A-Za-z\\\d.])(\d+(?:\.\d*)?|\.\d+)\s*[eE]\s*([+-]?\d+)(?![\d.])")


def _normalize_scientific(answer: str) -> str:
    return _SCI_RE.sub(r"\1\\times 10^{\2}", answer)


def _parse_answer(answer: str, mv) -> list:
    """Parse one bare answer string into math-verify's representation.

    Wrapping in ``\\boxed{}`` makes math-verify treat the whole string as the
    answer (its boxed normalization strips units, ``\\text{}``, degrees).
    Plain-expression parsing is kept as a second config so answers such as
    ``1/2`` or ``3e5`` that are not LaTeX still parse.
    """
    return mv.parse(
        "\\boxed{" + _normalize_scientific(answer) + "}",
        extraction_config=[mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
        parsing_timeout=None,
    )


# math-verify rounds numbers to 6 decimal places before comparing, so any
# two quantities below 1e-6 (2.88e-19 J vs 1.325e-27 kg, common in Minerva's
# physics problems) would be "equal". For plain numbers that small we compare
# with a relative tolerance instead.
_SMALL_MAGNITUDE = 1e-3
_REL_TOL = 1e-6


def _small_number_verdict(gold, pred) -> bool | None:
    """Relative-tolerance verdict when both are plain numbers below 1e-3, else None."""
    import sympy

    # Parsed numbers may be unevaluated (2.88*10**(-19)); is_number covers them.
    if not all(isinstance(x, sympy.Expr) and x.is_number for x in (gold, pred)):
        return None
    try:
        a, b = float(gold), float(pred)
    except (TypeError, ValueError, OverflowError):  # complex or not a finite real
        return None
    if max(abs(a), abs(b)) >= _SMALL_MAGNITUDE:
        return None
    return abs(a - b) <= _REL_TOL * max(abs(a), abs(b))


# An exact answer in terms of pi against a decimal gold (PRIME's math_util/__init__.py:396-400
# and grader.py:136-161, 195-201): the response's value with pi = math.pi, or, for a rational
# multiple of pi, with pi = 3.14 (golds computed with "use pi = 3.14"), within a relative 1e-4 of
# the gold. Only this direction: a decimal response to a gold in terms of pi is an approximation
# where the exact value was asked for, and stays wrong (PRIME accepts it).
_PI_REL_TOL = 1e-4
_SCHOOL_PI = 3.14


def _pi_verdict(gold, pred) -> bool:
    """Whether ``pred`` (an exact expression with pi, or ``x = ...`` of one) equals the plain
    number ``gold`` at PRIME's pi tolerance (see above); ``False`` for anything else."""
    import sympy

    if isinstance(pred, sympy.Equality) and isinstance(pred.lhs, sympy.Symbol):
        pred = pred.rhs
    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return False
    if not (pred.is_number and pred.has(sympy.pi)) or not gold.is_number or gold.has(sympy.pi):
        return False
    try:
        target = float(gold)
        values = [float(pred.evalf())]
        multiple = sympy.simplify(pred / sympy.pi)
        if multiple.is_Rational:  # 2*pi, pi/2: never a cancellation such as pi - 3.14
            values.append(float(multiple) * _SCHOOL_PI)
    except (TypeError, ValueError, OverflowError):  # complex, or not a finite real
        return False
    return any(math.isclose(v, target, rel_tol=_PI_REL_TOL) for v in values)


def _compare(pred_answer: str, golds: Sequence[str]) -> bool:
    mv = _math_verify()
    pred = _parse_answer(pred_answer, mv)
    if not pred:
        return False
    for gold in golds:
        gold_parsed = _parse_answer(gold, mv)
        if not gold_parsed:
            continue
        verdict = _small_number_verdict(gold_parsed[0], pred[0])
        if verdict is None:
            verdict = mv.verify(gold_parsed, pred, timeout_seconds=None)
        if verdict or _pi_verdict(gold_parsed[0], pred[0]):
            return True
    return False


def math_answers_equal(pred_answer: str, gold: str | Sequence[str]) -> bool:
    """Whether a bare answer string equals the gold (no extraction, no timeout)."""
    golds = [gold] if isinstance(gold, (str, int, float)) else list(gold)
    return _compare(strip_math_delimiters(pred_answer), [normalize_gold(g) for g in golds])


# --------------------------------------------------------------------------
# Deadline enforcement
# --------------------------------------------------------------------------


def _raise_timeout(signum, frame):  # pragma: no cover - signal path
    raise MathTimeout()


def _can_use_signal_timer() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    # Do not clobber an interval timer the caller armed for itself.
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def _compare_with_signal_deadline(pred_answer: str, golds: list[str], timeout_s: float) -> bool:
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return _compare(pred_answer, golds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_process_lock = threading.Lock()
_process_pool = None  # DeadlinePool(1), created on first off-main-thread call


def _warm_math_worker() -> None:
    _math_verify()
    _parse_answer("1", _math_verify())  # pay antlr/sympy first-call costs now


def _compare_in_worker(pred_answer: str, golds: list[str], timeout_s: float) -> bool:
    """Entry point inside the worker process (its main thread)."""
    return _compare_with_signal_deadline(pred_answer, golds, timeout_s)


def _compare_in_process(pred_answer: str, golds: list[str], timeout_s: float) -> tuple[bool, str]:
    global _process_pool
    with _process_lock:
        if _process_pool is None:
            _process_pool = DeadlinePool(1, warmup=_warm_math_worker, memory_limit_bytes=4 << 30)
        # The worker has its own signal deadline; the hard kill is a backstop
        # for C code that ignores signals.
        outcome = _process_pool.run(_compare_in_worker, (pred_answer, golds, timeout_s), timeout_s + 1.0)
    if outcome.ok:
        return bool(outcome.value), ""
    if "MathTimeout" in outcome.error or "timed out" in outcome.error:
        raise MathTimeout()
    return False, outcome.error


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def verify_math_detailed(
    response: str,
    gold: str | int | float | Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> VerifyResult:
    """Verify a response against one gold answer or a list of accepted golds.

    Returns a :class:`VerifyResult` whose ``reason`` says what happened
    (``"correct"``, ``"wrong answer: ..."``, ``"no final answer found"``,
    ``"timed out after 5s"``). Never raises for bad model output.
    """
    start = time.monotonic()
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    golds_raw = [gold] if isinstance(gold, (str, int, float)) else list(gold)
    if not golds_raw:
        raise ValueError("at least one gold answer is required")
    golds = [normalize_gold(g) for g in golds_raw]

    def result(score: float, reason: str) -> VerifyResult:
        return VerifyResult(score, int(score), 1, reason, time.monotonic() - start)

    answer = extract_final_answer(response)
    if answer is not None:
        answer = strip_math_delimiters(answer)  # "\boxed{5.}" -> "5"
    if answer is None or not answer:
        return result(0.0, "no final answer found")
    try:
        if _can_use_signal_timer():
            ok, error = _compare_with_signal_deadline(answer, golds, timeout_s), ""
        else:
            ok, error = _compare_in_process(answer, golds, timeout_s)
    except MathTimeout:
        return result(0.0, f"timed out after {timeout_s:g}s")
    if error:
        return result(0.0, f"verifier error: {error}")
    if ok:
        return result(1.0, "correct")
    return result(0.0, f"wrong answer: {answer[:200]!r}")


def verify_math(
    response: str,
    gold: str | int | float | Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> float:
    """1.0 if the response's final answer equals ``gold``, else 0.0.

    ``gold`` may be a single answer or a list of accepted answers. See the
    module docstring for extraction and timeout behaviour.
    """
    return verify_math_detailed(response, gold, timeout_s).score
