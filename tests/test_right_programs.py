"""A right program scores 1.0 as surely as a wrong one scores 0 (issue 24, "Must show").

The corpus (:mod:`right_programs`) holds whole policy responses, right programs in the forms a
policy writes them. All of them are scored in one :func:`~iprime.verifiers.score_rows` call, as
the trainer scores a batch: every right program must score 1.0, each documented limit 0 (the
README's "What a right program may do" says why), and each wrong twin 0.
"""

from __future__ import annotations

import ast
import json

import pytest
from right_programs import CASES, Case
from sandbox_available import needs_sandbox

from iprime.verifiers import score_rows, verify_code_detailed
from iprime.verifiers.extract import extract_code
from iprime.verifiers.sandbox.runner import _FLUSH, _LEAVE, _Deferred, defer_changes

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


# ------------------------------------------------------------------ in-place changes land after the statement
#
# A call's changes to its arguments reach the test's objects when the test statement that made
# the call ends, never inside it: an expected value the same statement computes from an argument
# after the call (``assert f(d) == sorted(d)``) is computed from the argument as the test built
# it, so a wrong candidate cannot change it to agree with its answer. Each hostile candidate
# below empties (or overwrites) its argument and returns what the emptied argument would give.

CLEAR = "def f(a):\n    a.clear()\n    return []\n"
HOSTILE = [
    pytest.param(CLEAR, "d = [3, 1, 2]\nassert f(d) == sorted(d)", id="sorted"),
    pytest.param("def f(a):\n    a.clear()\n    return 0\n", "d = [3, 1, 2]\nassert f(d) == len(d)", id="len"),
    pytest.param("def f(a):\n    a[:] = [9]\n    return [9]\n", "d = [3, 1, 2]\nassert f(d) == d", id="the_argument"),
    pytest.param(CLEAR, "d = [3, 1, 2]\nassert f(d) == [x * 2 for x in d]", id="comprehension"),
    pytest.param(CLEAR, "d = [3, 1, 2]\nassert f(d) == d[::-1]", id="slice"),
    pytest.param(CLEAR, "d = [3, 1, 2]\nassert f(d) == sorted(\n    d\n), 'sorted'", id="multi_line_assert"),
    pytest.param(CLEAR, "d = [3, 1, 2]\nassert (\n    f(d)\n    ==\n    sorted(d)\n)", id="multi_line_parens"),
    pytest.param(
        CLEAR,
        "def check(candidate):\n    d = [3, 1, 2]\n    assert candidate(d) == sorted(d)\n\ncheck(f)",
        id="check_candidate",
    ),
    pytest.param(CLEAR, "for d in [[3, 1, 2], [5, 4]]:\n    assert f(d) == sorted(d)", id="loop"),
    pytest.param(
        CLEAR,
        "cases = [[3, 1, 2], [5, 4]]\ni = 0\nwhile i < len(cases):\n"
        "    assert f(cases[i]) == sorted(cases[i])\n    i += 1",
        id="while_loop",
    ),
    pytest.param(CLEAR, "d = [3, 1, 2]\nif f(d) != sorted(d):\n    raise AssertionError('no')", id="if_header"),
    pytest.param(
        CLEAR, "def ref(x):\n    return sorted(x)\n\nd = [3, 1, 2]\nassert f(d) == ref(d)", id="test_helper_reference"
    ),
    pytest.param(
        CLEAR,
        "def ref(x):\n    y = x\n    return sorted(y)\n\nd = [3, 1, 2]\nassert f(d) == ref(d)",
        id="test_helper_with_statements",
    ),
    pytest.param(
        CLEAR, "def run(x):\n    return f(x)\n\nd = [3, 1, 2]\nassert run(d) == sorted(d)", id="returning_wrapper"
    ),
    pytest.param(
        "def keys(m):\n    m.clear()\n    return []\n", "m = {'b': 1, 'a': 2}\nassert keys(m) == sorted(m)", id="dict"
    ),
    pytest.param(
        "def biggest(s):\n    s.clear()\n    s.add(99)\n    return 99\n",
        "s = {3, 1, 2}\nassert biggest(s) == max(s)",
        id="set",
    ),
    pytest.param(
        "def row_sums(m):\n    for r in m:\n        r[:] = [0]\n    return [0] * len(m)\n",
        "m = [[1, 2], [3, 4]]\nassert row_sums(m) == [sum(r) for r in m]",
        id="nested_rows",
    ),
    pytest.param(
        "def f(t):\n    t[0].clear()\n    return []\n",
        "t = ([3, 1, 2],)\nassert f(t) == sorted(t[0])",
        id="list_in_a_tuple",
    ),
    pytest.param(
        "def f(a, *, b):\n    b.clear()\n    return []\n",
        "d = [3, 1]\nassert f([], b=d) == sorted(d)",
        id="keyword_argument",
    ),
    pytest.param(CLEAR, "d = [3, 1, 2]\nassert all(f(x) == sorted(x) for x in [d])", id="generator_expression"),
    pytest.param(
        "class Solution:\n    def sortList(self, a):\n        a.clear()\n        return []\n",
        "nums = [3, 1, 2]\nassert Solution().sortList(nums) == sorted(nums)",
        id="leetcode_method",
    ),
]


@needs_sandbox
class TestInPlaceChangesLandAfterTheStatement:
    @pytest.mark.parametrize(("code", "test"), HOSTILE)
    def test_a_candidate_cannot_change_the_expected_value(self, code: str, test: str) -> None:
        assert _asserts(code, [test]) == 0.0

    def test_a_change_made_before_raising_lands_in_the_handler(self) -> None:
        code = "def drain(a):\n    a.clear()\n    raise ValueError('empty')\n"
        test = "a = [1]\ntry:\n    drain(a)\nexcept ValueError:\n    assert a == []\nelse:\n    assert False"
        assert _asserts(code, [test]) == 1.0
        assert _asserts(code.replace("a.clear()", "a.append(2)"), [test]) == 0.0


class TestDeferChangesInProcess:
    """The judge's statement hooks (``defer_changes`` + ``_Deferred``) in this process, without the
    sandbox: ``take(a)`` stands for a remote call that leaves ``[]`` in its argument ``a``."""

    @staticmethod
    def run(source: str) -> dict:
        deferred = _Deferred()

        def take(a):
            deferred.record(a, [])
            return []

        namespace = {_FLUSH: deferred.flush, _LEAVE: deferred.leave, "take": take}
        exec(compile(defer_changes(source), "<test 0>", "exec"), namespace)
        assert deferred.pending == []
        return namespace

    @pytest.mark.parametrize(
        ("source", "seen"),
        [
            ("d = [1]\nseen = (take(d), list(d))", [1]),  # the same statement: as the test built it
            ("d = [1]\ntake(d)\nseen = list(d)", []),  # the next statement: changed
            ("d = [1]\nseen = [take(d) for _ in range(2)] and list(d)", [1]),
            ("d = [1]\nif take(d) == []:\n    seen = list(d)", []),  # the block after the header
            ("d = [1]\nwhile take(d) != list(d):\n    seen = list(d)", []),  # header: as built; block: changed
            ("def run(x):\n    return take(x)\n\nd = [1]\nseen = (run(d), list(d))", [1]),  # handed to the caller
            (
                "def run(x):\n    take(x)\n    return list(x)\n\nd = [1]\nseen = run(d)",
                [],
            ),  # the helper's own statement
            ("def ref(x):\n    y = x\n    return list(y)\n\nd = [1]\nseen = (take(d), ref(d))", ([], [1])),
            ("def g(x):\n    yield take(x)\n    yield list(x)\n\nd = [1]\nseen = list(g(d))", [[], [1]]),
            ("class C:\n    def m(self, x):\n        take(x)\n        return list(x)\n\nseen = C().m([1])", []),
        ],
    )
    def test_a_change_lands_when_its_statement_ends(self, source: str, seen) -> None:
        namespace = self.run(source)
        got = namespace["seen"]
        assert (got[1] if isinstance(got, tuple) and isinstance(seen, list) else got) == seen
        assert namespace.get("d", []) == []  # applied by the end, wherever it was made

    def test_a_raising_statement_keeps_its_changes_for_the_handler(self) -> None:
        source = (
            "def boom(x):\n    take(x)\n    raise ValueError\n\n"
            "d = [1]\ntry:\n    boom(d)\nexcept ValueError:\n    seen = list(d)"
        )
        assert self.run(source)["seen"] == []

    def test_the_tests_lines_docstring_and_future_imports_stay(self) -> None:
        source = '"""doc"""\nfrom __future__ import annotations\nx = 1\n\n\nassert x == 2\n'
        tree = defer_changes(source)
        assert ast.get_docstring(tree) == "doc"
        with pytest.raises(AssertionError) as caught:
            self.run(source)
        tb = caught.value.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        assert (tb.tb_frame.f_code.co_filename, tb.tb_lineno) == ("<test 0>", 6)
