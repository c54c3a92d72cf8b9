"""Adapters from benchmark rows to verifier references.

Each benchmark stores its reference differently; these functions turn one
row (a dict, as loaded from the benchmark's JSON/JSONL file) into what the
verifiers take:

* math: a list of accepted gold answer strings for :func:`verify_math`;
* code: a tests dict for :func:`verify_code` (``{"asserts", "setup"}``,
  ``{"inputs", "outputs"}``, or call-based ``{"fn_name", "inputs", "outputs"}``;
  :func:`iprime.verifiers.code.parse_tests` checks any of them).

They never read files: loading the data is the caller's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iprime.data.boxed import last_boxed

from .code import LEETCODE_PRELUDE, parse_tests

__all__ = [
    "math500_golds",
    "minerva_golds",
    "olympiadbench_golds",
    "aime_golds",
    "amc_golds",
    "math_golds",
    "humaneval_tests",
    "mbpp_tests",
    "leetcode_tests",
    "stdio_tests",
    "apps_tests",
]


def _require(row: Mapping[str, Any], key: str, benchmark: str) -> Any:
    if key not in row or row[key] is None:
        raise KeyError(f"{benchmark} row has no {key!r} field (keys: {sorted(row)})")
    return row[key]


def _answer_str(value: Any) -> str:
    # AMC stores floats such as 142.0; the verifier wants "142".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# ----------------------------------------------------------------------- math


def math500_golds(row: Mapping[str, Any]) -> list[str]:
    """MATH-500: ``expected_answer`` (HF "answer" in other dumps)."""
    for key in ("expected_answer", "answer"):
        if row.get(key) is not None:
            return [_answer_str(row[key])]
    raise KeyError(f"MATH-500 row has neither 'expected_answer' nor 'answer' (keys: {sorted(row)})")


def minerva_golds(row: Mapping[str, Any]) -> list[str]:
    """Minerva math: the last boxed answer of the reference ``solution``."""
    solution = _require(row, "solution", "Minerva")
    boxed = last_boxed(solution)
    if boxed is None:
        raise ValueError(f"Minerva row {row.get('idx')!r}: solution has no \\boxed answer")
    return [boxed]


def olympiadbench_golds(row: Mapping[str, Any]) -> list[str]:
    """OlympiadBench: every entry of ``final_answer`` is an accepted gold.

    Multi-answer rows (``is_multiple_answer``) keep all their answers in one
    comma-separated string such as ``"$69$,$84$"``; math-verify compares
    those as sets, so order does not matter and a partial answer fails.
    """
    answers = _require(row, "final_answer", "OlympiadBench")
    if isinstance(answers, str):
        answers = [answers]
    golds = [_answer_str(a) for a in answers if str(a).strip()]
    if not golds:
        raise ValueError(f"OlympiadBench row {row.get('id')!r}: empty final_answer")
    return golds


def aime_golds(row: Mapping[str, Any]) -> list[str]:
    """AIME: integer ``answer`` (stored as a string or an int)."""
    return [_answer_str(_require(row, "answer", "AIME"))]


def amc_golds(row: Mapping[str, Any]) -> list[str]:
    """AMC: ``answer`` stored as a float such as ``142.0``."""
    return [_answer_str(_require(row, "answer", "AMC"))]


_MATH_ADAPTERS = {
    "math500": math500_golds,
    "minerva": minerva_golds,
    "olympiadbench": olympiadbench_golds,
    "aime": aime_golds,
    "amc": amc_golds,
}


def math_golds(benchmark: str, row: Mapping[str, Any]) -> list[str]:
    """Gold answers of ``row`` for a benchmark named in :data:`_MATH_ADAPTERS`."""
    try:
        adapter = _MATH_ADAPTERS[benchmark]
    except KeyError:
        raise ValueError(f"unknown math benchmark {benchmark!r}; known: {sorted(_MATH_ADAPTERS)}") from None
    return adapter(row)


# ----------------------------------------------------------------------- code


def humaneval_tests(row: Mapping[str, Any]) -> dict:
    """HumanEval: the row's ``test`` code defines ``check``; call it on the entry point.

    ``setup`` is the prompt itself: it holds the imports and any helper
    functions the task provides (e.g. ``is_palindrome`` in HumanEval/10), and
    its stub of the entry point is a valid ``def`` with only a docstring.
    The candidate's code runs after the setup, so its definition replaces the
    stub, while a response that omits the helpers still finds them.
    """
    test = _require(row, "test", "HumanEval")
    entry = _require(row, "entry_point", "HumanEval")
    prompt = row.get("prompt", "") or ""
    return {"setup": prompt, "asserts": [f"{test}\n\ncheck({entry})"]}


def mbpp_tests(row: Mapping[str, Any]) -> dict:
    """MBPP: ``test_list`` asserts, with ``test_imports``/``test_setup_code`` as setup."""
    asserts = list(_require(row, "test_list", "MBPP"))
    setup_parts = list(row.get("test_imports") or [])
    if row.get("test_setup_code"):
        setup_parts.append(row["test_setup_code"])
    return {"setup": "\n".join(setup_parts), "asserts": asserts}


def leetcode_tests(row: Mapping[str, Any]) -> dict:
    """LeetCode (weekly-contest dump): the ``test`` field builds ``Solution()`` and asserts.

    The test code is one block (it creates ``my_solution`` once and then runs
    its asserts), so it is kept as one assert-style test. ``setup`` imports
    what LeetCode's environment provides implicitly (``List``, ``heapq``...).
    """
    test = _require(row, "test", "LeetCode")
    return {"setup": LEETCODE_PRELUDE, "asserts": [test]}


def stdio_tests(inputs: list[str], outputs: list[str]) -> dict:
    """APPS/CodeContests style: pairs of stdin text and expected stdout."""
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
    return {"inputs": list(inputs), "outputs": list(outputs)}


def apps_tests(row: Mapping[str, Any]) -> dict:
    """APPS / TACO / Eurus-2 code rows: the ``input_output`` field (a JSON string or a dict).

    stdin/stdout rows hold ``{"inputs", "outputs"}``; call-based rows add ``"fn_name"``
    (LeetCode-style, called on ``Solution()`` when the code defines that class). Returns
    the canonical tests of :func:`iprime.verifiers.code.parse_tests`; ``ValueError`` says
    what is wrong with a malformed row.
    """
    for key in ("input_output", "tests", "ground_truth"):
        if row.get(key):
            try:
                return parse_tests(row[key])
            except ValueError as err:
                raise ValueError(f"APPS row {row.get('problem_id', row.get('id'))!r}: {err}") from None
    raise KeyError(f"APPS row has no 'input_output' (keys: {sorted(row)})")
