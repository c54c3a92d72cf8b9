"""Final answers for voting: extract, normalize, and group equivalent answers.

Voting (maj@k, PRM-weighted voting) needs to know when two responses give "the same" answer.
Two levels, kept tractable:

1. **Canonical string** (:func:`normalize_answer`): the extracted answer with layout noise
   removed (``$``, spaces, ``\\left``/``\\right``, ``\\dfrac`` -> ``\\frac``, ``\\text{..}``
   wrappers, degree marks) and plain decimals canonicalised (``142.0`` -> ``142``,
   ``0.50`` -> ``0.5``). Answers with equal canonical strings are one group.
2. **Math equivalence** (``equivalence="math"``): the *distinct* canonical strings are then
   compared pairwise with :func:`iprime.verifiers.verify_math` (math-verify, with its
   timeout), and groups found equal are merged (union-find), so ``\\frac{1}{2}`` and ``0.5``
   vote together. With D distinct answers this costs D(D-1)/2 comparisons, not k^2.

Group ids are the index of the group's first member in the sample list, which makes every
tie-break downstream ("earliest first occurrence wins") deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from iprime.data.boxed import last_boxed, parse_int_answer
from iprime.verifiers.extract import extract_final_answer, strip_math_delimiters
from iprime.verifiers.math import verify_math

__all__ = ["EQUIVALENCES", "extract_answer", "group_answers", "math_equal", "normalize_answer"]

EQUIVALENCES = ("math", "exact")

_DROP = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\\displaystyle")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")


def normalize_answer(answer: str) -> str:
    """Canonical string of an extracted answer (see the module docstring); may be ``""``."""
    s = strip_math_delimiters(answer)
    s = _DROP.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREES.sub("", s)
    s = _TEXT_WRAP.sub(r"\1", s)
    s = "".join(s.split())
    s = s.rstrip(".")
    if _DECIMAL.fullmatch(s):
        try:
            d = Decimal(s)
        except InvalidOperation:  # pragma: no cover - the regex only admits decimals
            return s
        # normalize() drops trailing zeros; "f" keeps 1E+2 as "100"
        s = format(d.normalize(), "f")
        if s in ("-0", "+0"):
            s = "0"
    return s


def extract_answer(response: str, verifier: str) -> str | None:
    """The normalized final answer a response votes for, or ``None`` (it does not vote).

    verifier: ``"math"`` (last box, else "The answer is" sentence, else the value the last
    sentence states, as :func:`verify_math` reads it), ``"arithmetic"`` (the built-in task:
    the last box as an integer, as its verifier reads it). ``"code"`` has no comparable final answer: always ``None``.
    """
    if verifier == "math":
        raw = extract_final_answer(response)
        if raw is None:
            return None
        norm = normalize_answer(raw)
        return norm or None
    if verifier == "arithmetic":
        value = parse_int_answer(last_boxed(response, strict=True))
        return None if value is None else str(value)
    if verifier == "code":
        return None
    raise ValueError(f"no answer extraction for verifier {verifier!r}; known: math, arithmetic, code")


def math_equal(a: str, b: str, timeout_s: float = 2.0) -> bool:
    """Whether two answer strings are equivalent by math-verify (``a`` boxed, ``b`` as gold)."""
    return verify_math(f"\\boxed{{{a}}}", b, timeout_s=timeout_s) == 1.0


def group_answers(
    answers: Sequence[str | None],
    equal: Callable[[str, str], bool] | None = None,
) -> list[int | None]:
    """Group id of every answer (``None`` for a missing answer).

    Answers with the same string share a group; with ``equal``, distinct strings ``a`` (first
    seen earlier) and ``b`` with ``equal(a, b)`` are merged. The id of a group is the index of
    its first member, so ids are stable and order-defined.

    >>> group_answers(["1/2", "3", None, "1/2"])
    [0, 1, None, 0]
    """
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is not None and a not in first:
            first[a] = i
    distinct = list(first)  # in order of first occurrence
    parent = {a: a for a in distinct}

    def root(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if equal is not None:
        for i, a in enumerate(distinct):
            for b in distinct[i + 1 :]:
                ra, rb = root(a), root(b)
                if ra != rb and equal(a, b):
                    # keep the earlier-seen root so the group id is its first member
                    if first[ra] <= first[rb]:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
    return [None if a is None else first[root(a)] for a in answers]


def equality_for(equivalence: str, verifier: str) -> Callable[[str, str], bool] | None:
    """The pairwise equality :func:`group_answers` should use: math-verify only for math rows."""
    if equivalence not in EQUIVALENCES:
        raise ValueError(f"equivalence must be one of {EQUIVALENCES}, got {equivalence!r}")
    return math_equal if (equivalence == "math" and verifier == "math") else None
