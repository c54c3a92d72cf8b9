"""Issue 24, items 1 and 2: no comparison of an assert runs where the candidate's code runs, and
the test's own names (its setup's helpers, the modules it uses) never come from the candidate.

Each class is a family of attacks on one rule, each attack a wrong solution that must score 0,
with honest controls (right solutions of the same tests) that must score 1.0."""

from __future__ import annotations

import pytest
from sandbox_available import needs_sandbox

from iprime.verifiers import verify_code_detailed
from iprime.verifiers.code import plan_assert

TIMEOUT = 5.0


def py(code: str) -> str:
    return f"```python\n{code}\n```\n"


def score(code: str, asserts: list[str], setup: str = "") -> float:
    return verify_code_detailed(py(code), {"setup": setup, "asserts": asserts}, timeout_s=TIMEOUT).score


# A candidate that reads the frames above its own for the source of what the sandbox evaluates,
# and answers with the constant an identity test or comparison names there.
FRAME_READER = """
import ast, sys

def _stolen():
    frame = sys._getframe(2)
    while frame is not None:
        for value in list(frame.f_locals.values()) + list(frame.f_code.co_consts):
            texts = [value] if isinstance(value, str) else []
            if isinstance(value, (list, tuple)):
                texts = [v for v in value if isinstance(v, str)]
            for text in texts:
                try:
                    tree = ast.parse(text, mode="eval").body
                except (SyntaxError, ValueError):
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, ast.Compare) and isinstance(node.comparators[-1], ast.Constant):
                        return node.comparators[-1].value
        frame = frame.f_back
    return "nothing found"

def is_even(n):
    return _stolen()

def half(x):
    return _stolen()
"""


class TestComparisonsStayOnTheHost:
    """Item 1: identity tests, truth tests, chained and builtin-wrapped comparisons are all
    made on the host from plain data; the sandbox never sees an expected value."""

    @needs_sandbox
    @pytest.mark.parametrize(
        "asserts",
        [
            ["assert is_even(4) is True", "assert is_even(3) is False"],
            ["assert is_even(4) is True and is_even(3) is False"],
            ["assert half(None) is None"],
        ],
    )
    def test_a_frame_reader_learns_nothing(self, asserts) -> None:
        assert score(FRAME_READER, asserts) == 0.0

    @needs_sandbox
    @pytest.mark.parametrize(
        ("code", "asserts"),
        [
            # rebinds the builtin the old sandbox-side hole called
            ("bool = lambda x: True\ndef is_even(n):\n    return 'no'", ["assert is_even(4) is True"]),
            ("bool = lambda x: True\ndef f(x):\n    return 7", ["assert f(1) is None"]),
            ("bool = lambda x: True\ndef f(x):\n    return 0", ["assert f(1) is not None and f(1) > 5"]),
            # rebinds the builtin a comparison is wrapped in
            ("abs = lambda x: 0\ndef f(x):\n    return 99.0", ["assert abs(f(1) - 0.5) < 1e-06"]),
            ("isinstance = lambda *a: True\ndef f(x):\n    return 'no'", ["assert isinstance(f(1), int)"]),
            ("round = lambda *a: 3.14\ndef f(x):\n    return 0.0", ["assert round(f(1), 2) == 3.14"]),
            ("sorted = lambda *a, **k: [1, 2]\ndef f():\n    return [9]", ["assert sorted(f()) == [1, 2]"]),
            ("all = lambda x: True\ndef f():\n    return [0, 0]", ["assert all(f())"]),
        ],
    )
    def test_rebound_builtins_do_not_judge(self, code, asserts) -> None:
        assert score(code, asserts) == 0.0

    @needs_sandbox
    @pytest.mark.parametrize(
        "asserts",
        [
            ["assert f(1) == 5"],
            ["assert f(1) is True"],
            ["assert f(1) and f(1) == 5"],
            ["assert 0 < f(1) < 2"],
            ["assert f(1) in [5]"],
        ],
    )
    def test_lying_objects_are_not_plain_data(self, asserts) -> None:
        liar = (
            "class Liar:\n    def __bool__(self):\n        return True\n"
            "    def __eq__(self, other):\n        return True\n"
            "    __lt__ = __gt__ = __eq__\n    def __hash__(self):\n        return 0\n"
            "def f(x):\n    return Liar()"
        )
        assert score(liar, asserts) == 0.0

    @needs_sandbox
    def test_honest_controls_pass(self) -> None:
        code = "def is_even(n):\n    return n % 2 == 0\ndef half(x):\n    return None if x is None else x / 2"
        asserts = [
            "assert is_even(4) is True",
            "assert is_even(3) is False",
            "assert is_even(3) is not True",
            "assert half(None) is None",
            "assert half(3) is not None",
            "assert abs(half(1) - 0.5) < 1e-06",
            "assert 0 < half(3) < 2",
            "assert isinstance(half(3), float) and not is_even(1)",
            "assert round(half(1), 2) == 0.5",
            "assert [half(2), half(4)][1:] == [2.0]",
        ]
        assert score(code, asserts) == 1.0
        # A truth test takes the truth of any answer (re.match's, MBPP/737's shape).
        matcher = "import re\ndef m(s):\n    return re.match('a', s)"
        assert score(matcher, ["assert m('abc')", "assert not m('xbc')", "assert m('ab') and m('a')"]) == 1.0
        assert score(matcher, ["assert m('xbc')"]) == 0.0
        assert score(FRAME_READER.replace("return _stolen()", "return n % 2 == 0", 1), asserts[:3]) == 1.0

    @pytest.mark.parametrize(
        ("source", "setup", "code", "exprs"),
        [
            ("assert f(1) is None", "", "", ["f(1)"]),
            ("assert is_prime(7)", "", "", ["(True if (is_prime(7)) else False)"]),  # its truth alone
            ("assert f(1) == 1 == g(1)", "", "", ["f(1)", "g(1)"]),
            ("assert abs(f(1) - 0.5) < 1e-06", "", "abs = lambda x: 0", ["f(1)"]),
            ("assert sum(10, 15) == 25", "", "def sum(a, b):\n    return a + b", ["sum(10, 15)"]),  # MBPP/126
            ("assert Solution().two(1, [2]) == 3", "", "", ["Solution().two(1, [2])"]),
        ],
    )
    def test_only_calls_of_the_candidate_reach_the_sandbox(self, source, setup, code, exprs) -> None:
        plan = plan_assert(source, setup, code)
        assert plan is not None and plan.exprs == exprs

    @pytest.mark.parametrize(
        ("source", "setup"),
        [
            ("assert f(1) is g(1)", ""),  # identity of two decoded values: the judge process
            ("assert f(list(range(3))) == 3", ""),  # a builtin in the sandbox's part
            ("assert all(x > 0 for x in f(3))", ""),  # a comparison in a comprehension
            ("assert f(lambda x: x > 1) == 1", ""),
            ("assert math.comb(5, 2) == f(5)", ""),  # a module function the host does not know
            ("assert set(f(1)) == set([1])", "from numpy import *"),  # set may be numpy's
        ],
    )
    def test_what_the_host_cannot_judge_goes_to_the_judge_process(self, source, setup) -> None:
        assert plan_assert(source, setup) is None

    def test_a_rebound_builtin_is_the_entry_point_only_when_asked_alone(self) -> None:
        code = "sorted = lambda x: 'z'\ndef my_sort(x):\n    return 'z'"
        assert plan_assert("assert sorted([3, 1]) == my_sort([3, 1])", "", code) is None  # the real sorted
        assert plan_assert("assert sorted([3, 1]) == [1, 3]", "", code).exprs == ["sorted([3, 1])"]

    @needs_sandbox
    def test_a_rebound_reference_builtin_scores_0(self) -> None:
        code = "sorted = lambda x: 'z'\ndef my_sort(x):\n    return 'z'"
        assert score(code, ["assert sorted([3, 1]) == my_sort([3, 1])"]) == 0.0
        right = "def my_sort(x):\n    return sorted(x)"
        assert score(right, ["assert sorted([3, 1]) == my_sort([3, 1])"]) == 1.0


HELPER_SETUP = (
    "def encode_shift(s):\n    return ''.join(chr((ord(c) - 97 + 5) % 26 + 97) for c in s)\n\n"
    'def decode_shift(s):\n    """Decode what encode_shift encoded."""\n'
)
RIGHT_DECODE = "def decode_shift(s):\n    return ''.join(chr((ord(c) - 97 - 5) % 26 + 97) for c in s)"


FAKE_MATH = (
    "class FakeMath:\n    pi = 3.0\n"
    "    def isclose(self, *a, **k):\n        return True\n"
    "    def factorial(self, n):\n        return 0\n"
    "    def sqrt(self, x):\n        return 2\n"
    "math = FakeMath()\n"
)


class TestTheTestsNamesAreTheTests:
    """Item 2: the setup's helpers and the modules the test uses come from the test, on the
    host and in the judge process, whatever the candidate binds to those names."""

    @needs_sandbox
    @pytest.mark.parametrize(
        "asserts",
        [
            ["assert decode_shift(encode_shift('abc')) == 'abc'"],  # host-planned shape
            ["s = 'hello'\nassert decode_shift(encode_shift(s)) == s"],  # judge-process shape
            ["assert decode_shift(encode_shift('xyz')) == 'xyz' and len(encode_shift('ab')) == 2"],
        ],
    )
    def test_a_redefined_helper_is_not_called(self, asserts) -> None:
        hack = "def encode_shift(s):\n    return s\ndef decode_shift(s):\n    return s"
        assert score(hack, asserts, HELPER_SETUP) == 0.0
        assert score(RIGHT_DECODE, asserts, HELPER_SETUP) == 1.0

    @needs_sandbox
    @pytest.mark.parametrize(
        ("setup", "asserts"),
        [
            ("", ["assert math.isclose(area(2), 12.566, rel_tol=0.001)"]),
            ("import math", ["assert math.isclose(area(2), 12.566, rel_tol=0.001)"]),
            ("", ["assert area(2) == math.factorial(3)"]),
            ("", ["assert math.sqrt(area(2)) == 2"]),
            ("", ["x = area(2)\nassert math.isclose(x, 12.566, rel_tol=0.001)"]),  # judge process
            ("", ["assert math.isclose(area(2), math.pi * 4, rel_tol=0.001)"]),
        ],
    )
    def test_a_fake_math_is_not_the_tests_math(self, setup, asserts) -> None:
        # area agrees with what the impostor answers: 0 == FakeMath().factorial(3)
        assert score(FAKE_MATH + "def area(r):\n    return 0", asserts, setup) == 0.0

    @needs_sandbox
    @pytest.mark.parametrize(
        "asserts",
        [
            ["assert math.isclose(area(2), 12.566, rel_tol=0.001)"],
            ["x = area(2)\nassert math.isclose(x, 12.566, rel_tol=0.001)"],
            ["assert math.factorial(area(2)) == 1"],
        ],
    )
    def test_a_monkeypatched_math_stays_in_the_sandbox(self, asserts) -> None:
        patch = (
            "import math\nmath.isclose = lambda *a, **k: True\nmath.factorial = lambda n: 1\n"
            "def area(r):\n    return 99"
        )
        assert score(patch, asserts) == 0.0

    @needs_sandbox
    @pytest.mark.parametrize(
        "asserts",
        [
            ["assert math.isclose(area(2), 12.566, rel_tol=0.001)"],
            ["x = area(2)\nassert math.isclose(x, 12.566, rel_tol=0.001)"],  # no import anywhere
            ["r = area(1)\nassert math.floor(r) == 3 and abs(r - math.pi) < 1e-09"],
        ],
    )
    def test_honest_controls_get_the_real_module_without_importing_it(self, asserts) -> None:
        right = "def area(r):\n    return 3.141592653589793 * r * r"  # imports nothing
        assert score(right, asserts) == 1.0
        assert score("import math\ndef area(r):\n    return math.pi * r * r", asserts) == 1.0
