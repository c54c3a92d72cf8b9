"""verify_code: test formats (parse_tests), host-judged and judged asserts, call-based tests,
reward-hack resistance. The sandbox's containment: test_sandbox.py; the issue-14 attacks:
test_sandbox_attacks.py."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from sandbox_available import needs_sandbox

from iprime.verifiers import verify_code, verify_code_detailed
from iprime.verifiers.code import CALL_PRELUDE, call_output_matches, parse_tests, plan_assert
from iprime.verifiers.extract import extract_code
from iprime.verifiers.rows import LEETCODE_PRELUDE, apps_tests, humaneval_tests, mbpp_tests

TIMEOUT = 3.0

ADD_TESTS = {"setup": "", "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
RIGHT_ADD = "def add(a, b):\n    return a + b"
DATA = Path(__file__).resolve().parents[1] / "src" / "iprime" / "eval" / "data"


def py(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


# ------------------------------------------------------------------ basics


def test_extract_code_prefers_last_python_block() -> None:
    text = "```python\na = 1\n```\ntext\n```\nb = 2\n```\n```py\nc = 3\n```"
    assert extract_code(text) == "c = 3\n"
    assert extract_code("```\nonly = 1\n```") == "only = 1\n"
    assert extract_code("no code here") is None
    # A final block whose closing fence was cut off runs to the end (PRIME's scorer does,
    # code_util/__init__.py:8), less what the cut left of the closing fence.
    assert extract_code("```python\nunterminated") == "unterminated"
    assert extract_code("text\n```python\nprint(1)\n``") == "print(1)\n"


@needs_sandbox
def test_correct_wrong_and_partial() -> None:
    assert verify_code(py("def add(a, b):\n    return a + b"), ADD_TESTS) == 1.0
    assert verify_code(py("def add(a, b):\n    return a - b"), ADD_TESTS) == 0.0
    half = py("def add(a, b):\n    return 3 if a == 1 else 5")
    assert verify_code(half, ADD_TESTS, all_or_nothing=False) == 0.5
    result = verify_code_detailed(half, ADD_TESTS, all_or_nothing=False)
    assert (result.passed, result.total) == (1, 2) and "test 1 failed" in result.reason


@needs_sandbox
def test_no_code_block_and_syntax_error() -> None:
    assert verify_code_detailed("Use a plus sign, I think.", ADD_TESTS).reason == "no code block found"
    assert verify_code("def add(a, b): return a + b", ADD_TESTS) == 1.0  # no fence: the response is the code
    result = verify_code_detailed(py("def add(a, b) return a"), ADD_TESTS)
    assert result.score == 0.0 and "SyntaxError" in result.reason


@needs_sandbox
def test_stdio_tests_whitespace_insensitive() -> None:
    tests = {"inputs": ["1 2\n", "10 20\n"], "outputs": ["3\n", "30"]}
    prog = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b, end='  \\n\\n')"
    assert verify_code(py(prog), tests) == 1.0
    wrong = "a, b = map(int, input().split())\nprint(a * b)"
    assert verify_code(py(wrong), tests, all_or_nothing=False) == 0.0
    # open(0) reads the real stdin: each input runs as its own process.
    assert verify_code(py("print(sum(map(int, open(0).read().split())))"), tests) == 1.0
    assert verify_code(py("import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)"), tests) == 1.0


def test_bad_tests_raise() -> None:
    with pytest.raises(ValueError):
        verify_code(py("x = 1"), {"asserts": ["assert True"], "inputs": []})
    with pytest.raises(ValueError):
        verify_code(py("x = 1"), {"inputs": ["1"], "outputs": []})
    with pytest.raises(ValueError):
        verify_code(py("x = 1"), {"asserts": []})


@needs_sandbox
@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)",  # exit before the tests run
        "import os\ndef add(a, b):\n    os._exit(0)",  # exit inside the test
        "import builtins\ndef add(a, b):\n    raise SystemExit(0)",
        "print('passed 2/2')\nprint('{\"event\": \"done\"}')\ndef add(a, b):\n    return 0",
        "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    return 0",
    ],
)
def test_reward_hacks_score_zero(code: str) -> None:
    assert verify_code(py(code), ADD_TESTS, timeout_s=TIMEOUT) == 0.0


# ------------------------------------------------------------------ test formats (parse_tests)


def test_parse_tests_accepts_every_format_as_dict_or_json() -> None:
    stdio = {"inputs": ["1 2\n", ["3", "4"]], "outputs": ["3\n", ["7"]]}
    call = {"fn_name": "add", "inputs": [[1, 2], (3, 4)], "outputs": [[3], 7]}
    asserts = {"asserts": ["assert add(1, 2) == 3"], "setup": "import math"}
    for form in (stdio, json.dumps(stdio)):
        assert parse_tests(form) == {
            "kind": "stdio",
            "inputs": ["1 2\n", "3\n4"],  # a list of lines is joined, as APPS's evaluator does
            "outputs": ["3\n", "7"],
            "setup": "",
        }
    for form in (call, json.dumps(call)):
        parsed = parse_tests(form)
        assert parsed["kind"] == "call" and parsed["fn_name"] == "add"
        assert parsed["inputs"] == [[1, 2], [3, 4]] and parsed["outputs"] == [[3], 7]
        assert parsed["setup"] == CALL_PRELUDE  # APPS solutions assume typing, collections, ...
    for form in (asserts, json.dumps(asserts)):
        assert parse_tests(form) == {"kind": "asserts", "asserts": ["assert add(1, 2) == 3"], "setup": "import math"}
    assert parse_tests(["assert f() == 1"]) == {"kind": "asserts", "asserts": ["assert f() == 1"], "setup": ""}
    assert parse_tests(json.dumps(["assert f() == 1"]))["kind"] == "asserts"
    for form in (stdio, call, asserts):  # canonical forms parse to themselves
        assert parse_tests(parse_tests(form)) == parse_tests(form)
    assert parse_tests({"fn_name": "f", "inputs": [[1]], "outputs": [1], "setup": ""})["setup"] == ""
    assert parse_tests({"fn_name": None, "inputs": ["x"], "outputs": ["y"]})["kind"] == "stdio"


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        ('{"inputs": ["1"]', "not valid JSON"),
        (42, "must be a dict"),
        ({"inputs": [], "outputs": []}, "empty"),
        ({"inputs": ["1"], "outputs": ["1", "2"]}, "1 inputs but 2 outputs"),
        ({"inputs": ["1"]}, "no 'outputs'"),
        ({"inputs": "1", "outputs": "1"}, "must be a list"),
        ({"inputs": [[1, 2]], "outputs": [[3]]}, "fn_name"),  # call-based data without its name
        ({"inputs": ["1"], "outputs": [3]}, "must be text"),
        ({"fn_name": "1st", "inputs": [[1]], "outputs": [1]}, "identifier"),
        ({"fn_name": "class", "inputs": [[1]], "outputs": [1]}, "identifier"),
        ({"fn_name": "f", "inputs": [1], "outputs": [1]}, "positional arguments"),
        ({"fn_name": "f", "inputs": [[object()]], "outputs": [1]}, "not plain data"),
        ({"asserts": []}, "empty"),
        ({"asserts": "assert x"}, "list of strings"),
        ({"asserts": ["assert x", ""]}, "non-empty string"),
        ({"asserts": ["assert x"], "setup": 3}, "setup"),
        ({"asserts": ["assert x"], "inputs": ["1"]}, "not ['inputs']"),
        ({"input": ["1"], "output": ["1"]}, "expected 'inputs' and 'outputs'"),
        ({"kind": "call", "inputs": ["1"], "outputs": ["1"]}, "shape of 'stdio'"),
    ],
)
def test_parse_tests_rejects_bad_tests_with_a_clear_message(tests, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_tests(tests)
    with pytest.raises(ValueError):  # verify_code parses before anything else
        verify_code(py("x = 1"), tests)


def test_apps_rows_adapter() -> None:
    row = {"problem_id": 7, "input_output": json.dumps({"fn_name": "f", "inputs": [[1]], "outputs": [[2]]})}
    assert apps_tests(row)["kind"] == "call"
    assert apps_tests({"input_output": {"inputs": ["1\n"], "outputs": ["1\n"]}})["kind"] == "stdio"
    with pytest.raises(ValueError, match="APPS row 8: .*1 inputs but 0 outputs"):
        apps_tests({"problem_id": 8, "input_output": '{"inputs": ["1"], "outputs": []}'})
    with pytest.raises(KeyError, match="input_output"):
        apps_tests({"problem_id": 9})


def test_call_output_matches_like_the_apps_evaluator() -> None:
    assert call_output_matches(3, 3) and call_output_matches(3, [3])  # raw and unwrapped
    assert call_output_matches([1, 2], [[1, 2]]) and call_output_matches([1, 2], [1, 2])
    assert call_output_matches((1, 2), [1, 2]) and call_output_matches([(1, 2), (3, 4)], [[[1, 2], [3, 4]]])
    assert call_output_matches({1: "a"}, {"1": "a"})  # JSON made the int keys strings
    assert not call_output_matches(1, [1, 2])  # only a one-element list is unwrapped
    assert not call_output_matches(3, [4]) and not call_output_matches("3", 3)


# ------------------------------------------------------------------ which asserts the host judges


@pytest.mark.parametrize(
    ("source", "exprs", "values", "passes"),
    [
        ("assert add(1, 2) == 3", ["add(1, 2)"], [3], True),
        ("assert add(1, 2) == 3", ["add(1, 2)"], [3.0], True),
        ("assert add(1, 2) == 3", ["add(1, 2)"], [4], False),
        ("assert 3 == add(1, 2)", ["add(1, 2)"], [3], True),
        ("assert f(x) != [1]", ["f(x)"], [[2]], True),
        ("assert f(1) is None", ["f(1)"], [None], True),  # compared here: the sandbox has no secret
        ("assert f(1) in (2, 3)", ["f(1)"], [3], True),
        ("assert f(1) == (1, 2)", ["f(1)"], [[1, 2]], False),  # a list is not a tuple, as in Python
        # The one argument of a builtin that iterates it comes back as its items (a generator,
        # a map object, a set or a tuple alike): [*(...)] binds no name the candidate could rebind.
        ("assert set(f((3, 4), (4, 5))) == set((4, 5))", ["[*(f((3, 4), (4, 5)))]"], [[5, 4]], True),
        ("assert sorted(f()) == [1, 2]", ["[*(f())]"], [[2, 1]], True),
        ("assert list(gen(3)) == [0, 1, 2]", ["[*(gen(3))]"], [[0, 1, 2]], True),
        ("assert list(gen(3)) == [0, 1, 2]", ["[*(gen(3))]"], [[0, 1]], False),
        ("assert sum(f(1), 10) == 13", ["[*(f(1))]"], [[1, 2]], True),
        ("assert max(f(1), 0) == 3", ["f(1)"], [3], True),  # two arguments: f(1) is a value, not an iterable
        ("assert len(f(1)) == 2", ["f(1)"], [[1, 2]], True),  # len of a generator fails, as in Python
        ("assert math.isclose(v(10), 4188.79, rel_tol=0.001)", ["v(10)"], [4188.790204786391], True),
        ("assert math.isclose(v(10), 4188.79, rel_tol=0.001)", ["v(10)"], [4000.0], False),
        ("assert abs(f(1) - 0.5) < 1e-06", ["f(1)"], [0.5000001], True),
        ("assert f(1) + f(2) == 5", ["f(1)", "f(2)"], [2, 3], True),
        ("assert f(1)[0] == 2", ["f(1)"], [[2, 3]], True),
        ("assert is_prime(7)", ["(True if (is_prime(7)) else False)"], [True], True),  # its truth alone
        ("assert is_prime(7)", ["(True if (is_prime(7)) else False)"], [False], False),
        ("assert not is_prime(4)", ["(True if (is_prime(4)) else False)"], [False], True),
        ("assert f(1) == 1 == g(1)", ["f(1)", "g(1)"], [1, 1], True),  # chained
        ("assert f(1) == 1 == g(1)", ["f(1)", "g(1)"], [1, 2], False),
        ("assert f(1) == 2 or f(1) == 3", ["f(1)", "f(1)"], [3, 3], True),
        ("assert check(f(1), 5)", ["(True if (check(f(1), 5)) else False)"], [True], True),  # the candidate's check
        ("assert f(1) == 2, 'message'", ["f(1)"], [2], True),
        ("assert f(1) < 'a'", ["f(1)"], [1], False),  # TypeError on the host: a failed test
    ],
)
def test_plan_assert_keeps_the_expected_value_on_the_host(source, exprs, values, passes) -> None:
    plan = plan_assert(source)
    assert plan is not None and plan.exprs == exprs  # only these reach the sandbox
    try:
        outcome = bool(plan.check(values))
    except Exception:  # noqa: BLE001 - verify_code turns this into a failed test
        outcome = False
    assert outcome is passes


def test_plan_assert_never_takes_the_candidates_names_for_builtins() -> None:
    # MBPP/126 asks for a function called sum: the test's sum(10, 15) is the candidate's.
    code = "def sum(a, b):\n    return 6"
    assert plan_assert("assert sum(10, 15) == 6", "", code).exprs == ["sum(10, 15)"]
    assert plan_assert("assert sum(10, 15) == 6", "", "") is None  # all constant: nothing to ask
    assert plan_assert("assert set(f(1)) == set([1])", "from numpy import *") is None  # set may be numpy's


@pytest.mark.parametrize(
    ("source", "setup"),
    [
        ("x = f(1)\nassert x == 1", ""),  # more than one statement
        ("def check(c):\n    assert c(1) == 2\ncheck(f)", ""),
        ("assert verify(3)", "def verify(n):\n    return n == 3"),  # the setup's own checker
        ("assert helper(3)", "from math import *"),  # maybe the setup's (star import)
        ("assert f(1) is g(1)", ""),  # identity of two decoded values means nothing here
        ("assert decode(encode('a')) == 'a'", "def encode(s):\n    return s"),  # the setup's helper
        ("assert True", ""),
        ("assert f(1) ==", ""),  # does not parse: the judge reports it
    ],
)
def test_plan_assert_leaves_other_asserts_to_the_judge(source, setup) -> None:
    assert plan_assert(source, setup) is None


# ------------------------------------------------------------------ formats end to end


@needs_sandbox
def test_call_based_tests_dict_and_json() -> None:
    tests = {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], 7]}
    for form in (tests, json.dumps(tests)):
        assert verify_code(py(RIGHT_ADD), form, timeout_s=TIMEOUT) == 1.0
        assert verify_code(py("def add(a, b):\n    return a * b"), form, timeout_s=TIMEOUT) == 0.0
    half = verify_code_detailed(py("def add(a, b):\n    return 3"), tests, all_or_nothing=False, timeout_s=TIMEOUT)
    assert (half.passed, half.total) == (1, 2) and "add returned 3, expected 7" in half.reason
    # LeetCode style: a method of class Solution; typing names come from the APPS prelude.
    method = "class Solution:\n    def add(self, a: int, b: int) -> List[int]:\n        return a + b"
    assert verify_code(py(method), tests, timeout_s=TIMEOUT) == 1.0
    missing = verify_code_detailed(py("def plus(a, b):\n    return a + b"), tests, timeout_s=TIMEOUT)
    assert missing.score == 0.0 and "no function 'add'" in missing.reason


@needs_sandbox
def test_call_results_must_be_plain_data() -> None:
    tests = {"fn_name": "pair", "inputs": [[1]], "outputs": [[[1, 1]]]}
    assert verify_code(py("def pair(x):\n    return (x, x)"), tests, timeout_s=TIMEOUT) == 1.0  # tuple == list
    assert verify_code(py("def pair(x):\n    return [x, x]"), tests, timeout_s=TIMEOUT) == 1.0
    cheat = "class Same(list):\n    def __eq__(self, other):\n        return True\ndef pair(x):\n    return Same()"
    result = verify_code_detailed(py(cheat), tests, timeout_s=TIMEOUT)
    assert result.score == 0.0 and "not plain data" in result.reason
    crash = verify_code_detailed(py("def pair(x):\n    raise ValueError('nope')"), tests, timeout_s=TIMEOUT)
    assert crash.score == 0.0 and "ValueError: nope" in crash.reason


@needs_sandbox
def test_stdio_and_assert_tests_as_json_strings() -> None:
    stdio = json.dumps({"inputs": ["1 2\n"], "outputs": [["3"]]})
    assert verify_code(py("print(sum(map(int, input().split())))"), stdio, timeout_s=TIMEOUT) == 1.0
    assert verify_code(py("print(0)"), stdio, timeout_s=TIMEOUT) == 0.0
    asserts = json.dumps(["assert add(1, 2) == 3", "assert set(pairs()) == {(1, 2)}"])
    code = RIGHT_ADD + "\ndef pairs():\n    return [(1, 2), (1, 2)]"
    assert verify_code(py(code), asserts, timeout_s=TIMEOUT) == 1.0
    assert verify_code(py("def add(a, b):\n    return a"), asserts, timeout_s=TIMEOUT) == 0.0


@needs_sandbox
def test_judged_tests_call_the_solution_through_handles() -> None:
    # LeetCode's shape: a multi-line block building Solution() and linked lists whose
    # class the candidate defines; every object stays in the solution process.
    leetcode = {
        "setup": LEETCODE_PRELUDE,
        "asserts": [
            "my_solution = Solution()\n"
            "_f1 = lambda lst: ListNode(lst[0], _f1(lst[1:])) if lst else None\n"
            "_f2 = lambda node: [node.val] + _f2(node.next) if node else []\n"
            "assert _f2(my_solution.doubleIt(head=_f1([1, 8, 9]))) == [3, 7, 8]\n"
            "assert _f2(my_solution.doubleIt(head=_f1([9, 9, 9]))) == [1, 9, 9, 8]\n"
        ],
    }
    solution = (
        "class ListNode:\n    def __init__(self, val=0, next=None):\n        self.val = val\n        self.next = next\n"
        "class Solution:\n    def doubleIt(self, head: Optional[ListNode]) -> Optional[ListNode]:\n"
        "        digits = []\n        while head:\n            digits.append(head.val)\n            head = head.next\n"
        "        n = 2 * int(''.join(map(str, digits)))\n        out = None\n"
        "        for d in reversed(str(n)):\n            out = ListNode(int(d), out)\n        return out\n"
    )
    assert verify_code(py(solution), leetcode, timeout_s=TIMEOUT) == 1.0
    wrong = solution.replace("2 * int", "3 * int")
    result = verify_code_detailed(py(wrong), leetcode, timeout_s=TIMEOUT)
    assert result.score == 0.0 and "AssertionError" in result.reason
    # A test that passes the solution something it cannot have: a clear failure.
    tests = {"setup": "", "asserts": ["inc = lambda x: x + 1\nassert apply(inc, 1) == 2"]}
    result = verify_code_detailed(py("def apply(f, x):\n    return f(x)"), tests, timeout_s=TIMEOUT)
    assert result.score == 0.0 and "cannot be passed to the solution" in result.reason


@needs_sandbox
def test_judged_tests_keep_the_setup_helpers_of_the_tests() -> None:
    # HumanEval/38's shape: the test encodes with the prompt's helper and the candidate
    # decodes. A candidate that also redefines the helper (to the identity, making its
    # own identity decoder "correct") must still face the prompt's helper.
    setup = 'def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    """Undo encode."""\n'
    tests = {
        "setup": setup,
        "asserts": ["def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\n\ncheck(decode)"],
    }
    assert verify_code(py("def decode(s):\n    return s[::-1]"), tests, timeout_s=TIMEOUT) == 1.0
    hack = "def encode(s):\n    return s\ndef decode(s):\n    return s"
    assert verify_code(py(hack), tests, timeout_s=TIMEOUT) == 0.0


@needs_sandbox
def test_judged_test_timeout_and_load_errors() -> None:
    tests = {"setup": "", "asserts": ["x = slow()\nassert x == 1"]}
    result = verify_code_detailed(py("def slow():\n    while True:\n        pass"), tests, timeout_s=2.0)
    assert result.score == 0.0 and "timed out" in result.reason
    result = verify_code_detailed(py("def slow(:\n    pass"), tests, timeout_s=TIMEOUT)
    assert result.score == 0.0 and "SyntaxError" in result.reason


@needs_sandbox
def test_real_benchmark_rows_score_their_reference_solutions() -> None:
    with gzip.open(DATA / "humaneval.jsonl.gz", "rt") as fh:
        row = json.loads(fh.readline())
    tests = humaneval_tests(row)
    assert verify_code(py(row["prompt"] + row["canonical_solution"]), tests, timeout_s=5) == 1.0
    assert verify_code(py(row["prompt"] + "    return False\n"), tests, timeout_s=5) == 0.0
    with gzip.open(DATA / "mbpp.json.gz", "rt") as fh:
        mbpp = {r["task_id"]: r for r in json.load(fh)}
    for task_id in (2, 7, 82):  # set(...) == set(...), set(...) == set([...]), math.isclose(...)
        row = mbpp[task_id]
        assert all(plan_assert(a) is not None for a in row["test_list"]), row["test_list"]
        assert verify_code(py(row["code"]), mbpp_tests(row), timeout_s=5) == 1.0
