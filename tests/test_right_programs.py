"""A right program scores 1.0 as surely as a wrong one scores 0 (issue 24, "Must show").

The corpus (:mod:`right_programs`) holds whole policy responses, right programs in the forms a
policy writes them. All of them are scored in one :func:`~iprime.verifiers.score_rows` call, as
the trainer scores a batch: every right program must score 1.0, each documented limit 0 (the
README's "What a right program may do" says why), and each wrong twin 0.
"""

from __future__ import annotations

import json

import pytest
from right_programs import CASES, Case
from sandbox_available import needs_sandbox

from iprime.verifiers import score_rows, verify_code_detailed
from iprime.verifiers.extract import extract_code

TIMEOUT = 10.0


def row(tests: dict) -> dict:
    return {"ability": "code", "data_source": "corpus", "reward_model": {"ground_truth": json.dumps(tests)}}


def score_corpus(cases: list[Case], workers: int = 2) -> dict[tuple[str, str], tuple[float, str]]:
    """``{(name, "right" | "wrong"): (score, reason)}`` for every case and wrong twin, scored in one
    batch through the public ``score_rows``."""
    keys, responses, rows = [], [], []
    for c in cases:
        keys.append((c.name, "right"))
        responses.append(c.response)
        rows.append(row(c.tests))
        if c.wrong is not None:
            keys.append((c.name, "wrong"))
            responses.append(c.wrong)
            rows.append(row(c.tests))
    results = score_rows(responses, rows, workers=workers, timeout_s=TIMEOUT)
    return {key: (r.score, r.reason) for key, r in zip(keys, results)}


def test_corpus_is_well_formed() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert all(c.limit is None or len(c.limit) > 40 for c in CASES)  # a limit states its reason
    assert sum(c.wrong is not None for c in CASES) >= 10


@pytest.fixture(scope="module")
def scores() -> dict[tuple[str, str], tuple[float, str]]:
    return score_corpus(CASES)


@needs_sandbox
@pytest.mark.parametrize("name", [c.name for c in CASES if c.limit is None])
def test_right_program_scores_one(scores, name: str) -> None:
    score, reason = scores[(name, "right")]
    assert score == 1.0, reason


@needs_sandbox
@pytest.mark.parametrize("name", [c.name for c in CASES if c.limit is not None])
def test_documented_limit_scores_zero(scores, name: str) -> None:
    score, reason = scores[(name, "right")]
    assert score == 0.0, f"documented as a limit but scored {score} ({reason}): update the corpus and the README"


@needs_sandbox
@pytest.mark.parametrize("name", [c.name for c in CASES if c.wrong is not None])
def test_wrong_twin_scores_zero(scores, name: str) -> None:
    score, reason = scores[(name, "wrong")]
    assert score == 0.0, reason


# ------------------------------------------------------------------ the fixes open no hole
#
# What made the right programs above pass (iterated holes, remote iteration, exceptions by
# their builtin class, in-place changes copied back to the test's arguments) must give a wrong
# program nothing: each of these scores 0.


def _asserts(code: str, asserts: list[str]) -> float:
    return verify_code_detailed(f"```python\n{code}\n```\n", {"asserts": asserts}, timeout_s=TIMEOUT).score


LIAR = "class Liar:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"


@needs_sandbox
class TestTheFixesOpenNoHole:
    def test_a_class_named_like_a_builtin_exception_is_not_it(self) -> None:
        code = "class ValueError(Exception):\n    pass\n\ndef check(x):\n    raise ValueError('no')\n"
        test = "try:\n    check(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False"
        assert _asserts(code, [test]) == 0.0

    def test_lying_items_written_into_an_argument_stay_remote(self) -> None:
        code = LIAR + "def sort_in_place(a):\n    a[:] = [Liar(), Liar(), Liar()]\n"
        assert _asserts(code, ["a = [3, 1, 2]\nsort_in_place(a)\nassert a == [1, 2, 3]"]) == 0.0

    def test_lying_items_of_an_iterated_hole_fail(self) -> None:
        code = LIAR + "def gen(n):\n    yield Liar()\n"
        assert _asserts(code, ["assert list(gen(3)) == [0, 1, 2]"]) == 0.0

    def test_remote_iteration_yields_plain_items_only(self) -> None:
        code = LIAR + "def gen(n):\n    yield from (Liar() for _ in range(n))\n"
        assert _asserts(code, ["g = gen(2)\nassert [x for x in g] == [0, 1]"]) == 0.0
        assert _asserts(code, ["assert 5 in gen(2)"]) == 0.0  # `in` compares here, item by item

    def test_an_in_place_change_reaches_only_the_arguments(self) -> None:
        # The candidate rebinds its own copy of a global; the test's expected list is not passed.
        code = "expected = None\n\ndef f(a):\n    global expected\n    expected = a\n    a.clear()\n"
        assert _asserts(code, ["expected = [1]\na = [1]\nf(a)\nassert a == expected"]) == 0.0


# ------------------------------------------------------------------ extraction of the policy's shapes


@pytest.mark.parametrize(
    ("response", "program"),
    [
        ("1. Code:\n\n   ```python\n   def f():\n       return 1\n   ```\n", "def f():\n    return 1\n"),
        ("- Code:\n  ```py\n  x = 1\n\n  y = 2\n  ```", "x = 1\n\ny = 2\n"),
        ('```python\ns = "```"\nt = 1\n```\n', 's = "```"\nt = 1\n'),
        ("```python\ndef f():\n    return '```python\\n'\n```\nDone.", "def f():\n    return '```python\\n'\n"),
        ("~~~python\nx = 1\n~~~\n", "x = 1\n"),
        ("````python\nx = 1\n````\n", "x = 1\n"),
        ("```python\nx = 1```\nmore", "x = 1"),
        ("```python\r\nx = 1\r\n```\r\n", "x = 1\r\n"),
        ("```python\n    # indented comment first\nx = 1\n```", "    # indented comment first\nx = 1\n"),  # valid: kept
    ],
)
def test_extracts_the_program_the_policy_meant(response: str, program: str) -> None:
    assert extract_code(response) == program
