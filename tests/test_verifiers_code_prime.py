"""The code reward against PRIME's scorer (issue 22, items 6, 7 and the code half of 9).

The original: ``training/verl/utils/reward_score/prime.py`` and
``evaluation_utils/code_util/{__init__,utils,testing_util}.py`` in the PRIME repository
(cited below as ``prime.py``, ``code_util/__init__.py``, ``utils.py``, ``testing_util.py``).
Every expected reward is computed by hand from the original's logic on cases of our own; where
iprime departs on purpose the test says what the original gives and why we do not copy it.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import datetime
import json
import operator
import resource
import sys
import typing
from pathlib import Path

import pytest
from sandbox_available import needs_sandbox

from iprime.config import ConfigError, PrimeConfig, VerifyConfig, load_config
from iprime.train.scoring import row_scoring
from iprime.verifiers import RowScoring, parse_tests, score_row, score_row_detailed, score_rows
from iprime.verifiers.code import (
    CALL_PRELUDE,
    PRIME_PRELUDE,
    outputs_match,
    prime_code_reward,
    setup_with_prelude,
)
from iprime.verifiers.extract import extract_code

ROOT = Path(__file__).resolve().parents[1]

# The row in PRIME's call-based form, as a JSON string in reward_model.ground_truth.
PRIME_ADD = {"fn_name": "add", "inputs": ["1\n2", "3\n4"], "outputs": ["3", "7"]}
STDIO_3 = {"inputs": ["1 2\n", "3 4\n", "5 6\n"], "outputs": ["3\n", "7\n", "11\n"]}
# Right on the first two tests, wrong on the third (5 + 6 printed as 0).
TWO_OF_THREE = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"


def code_row(tests: dict) -> dict:
    return {"ability": "code", "data_source": "apps", "reward_model": {"ground_truth": json.dumps(tests)}}


def py(code: str) -> str:
    return f"Here is the program.\n```python\n{code}\n```\n"


# ------------------------------------------------------------------ the reward formula


@pytest.mark.parametrize(
    "passed, reward",
    [
        ([True, True, True], 1.0),  # all pass: code_util/__init__.py:25-27, prime.py:79
        ([True, True, False], 2 / 3),  # each test alone, passed / min(3, 10): prime.py:69-77
        ([False], 0.0),
        ([True, False], 0.5),
        ([True] * 4 + [False], 0.8),  # the cap (k - 1) / k = 0.8 is the formula's own value here
        # 12 tests: only the first 10 are rerun (code_util/__init__.py:60-61), divided by 10
        ([True, True, False, False] + [True] * 8, 0.8),
        ([True] * 7 + [False] * 3 + [True, True], 0.7),
        # failing only past the tenth: the original's 10/10 = 1.0, a correct solution's reward;
        # iprime caps a failing solution at (k - 1) / k
        ([True] * 11 + [False], 0.9),
        # failing the 3rd and the 12th: 9/10 in the original too
        ([True, True, False] + [True] * 8 + [False], 0.9),
    ],
)
def test_prime_code_reward_by_hand(passed, reward):
    assert prime_code_reward(passed) == pytest.approx(reward)


def test_prime_code_reward_needs_tests():
    with pytest.raises(ValueError, match="at least one test"):
        prime_code_reward([])


# ------------------------------------------------------------------ stdout comparison


@pytest.mark.parametrize("compare", ["tokens", "lines"])
@pytest.mark.parametrize(
    "got, expected, ok",
    [
        # numbers: np.allclose (rtol 1e-5, atol 1e-8) as testing_util.py:518-523;
        # the tolerance for 0.50000 is 1e-8 + 1e-5 * 0.5 = 5.01e-6
        ("0.5\n", "0.50000\n", True),
        ("0.50000000\n", "0.50000\n", True),
        ("0.500005\n", "0.50000\n", True),  # 5.0e-6 <= 5.01e-6
        ("0.50001\n", "0.50000\n", False),  # 1.0e-5 > 5.01e-6
        ("0.0025\n", "2.5e-3\n", True),
        ("1/2\n", "0.50000\n", False),
        ("nan\n", "0.5\n", False),
        ("0.25\n", "25\n", False),  # no "0.25 for 25" in the code scorer (the original's is in math)
        # an expected integer is matched exactly; the original's allclose accepts 1000001.0 for
        # 1000000 (|1| <= 1e-8 + 1e-5 * 1e6) whenever a pair is not two digit strings
        # (testing_util.py:505-523): not copied
        ("1000001.0\n", "1000000\n", False),
        ("5.0\n", "5\n", False),
        ("1_000\n", "1000.0\n", False),  # float() reads "1_000"; a judge does not
        ("3\n", "3\n", True),
        # several numbers on one line: the original's float() of a whole line fails
        # (testing_util.py:518), a right answer punished; each token compares here
        ("0.5 0.25\n", "0.50000 0.25000\n", True),
        # spaces around lines, blank lines and \r\n never matter (testing_util.py:443-469 strip
        # and drop empty lines)
        ("1 2  \r\n\n3\n", "1 2\n3\n", True),
    ],
)
def test_outputs_match_numbers_and_whitespace(compare, got, expected, ok):
    assert outputs_match(got, expected, compare) is ok


def test_outputs_match_layout_tokens_vs_lines():
    # PRIME compares line by line (testing_util.py:415-469): values on one line are not values
    # one per line. The token comparison accepts any layout, as contest judges' usual checker does.
    assert outputs_match("1 2 3\n", "1\n2\n3\n", "tokens")
    assert not outputs_match("1 2 3\n", "1\n2\n3\n", "lines")
    assert not outputs_match("1\n2\n", "1\n2\n3\n", "lines")
    # spaces between tokens of a line: the original's exact line comparison fails "1  2" for "1 2"
    assert outputs_match("1  2\n", "1 2\n", "lines")
    with pytest.raises(ValueError, match="compare must be one of"):
        outputs_match("1", "1", "chars")


# ------------------------------------------------------------------ PRIME's call-based form


def test_parse_tests_reads_primes_call_based_form():
    # testing_util.py:236-237: each input line is one JSON argument, each output a JSON string
    tests = parse_tests(json.dumps(PRIME_ADD))
    assert tests["kind"] == "call" and tests["fn_name"] == "add"
    assert tests["inputs"] == [[1, 2], [3, 4]] and tests["outputs"] == [3, 7]
    rich = {"fn_name": "f", "inputs": ['[1, 2]\n"ab"', '{"1": "x", "-2": "y"}\n3'], "outputs": ['"abc"', "[1, 2]"]}
    tests = parse_tests(rich)
    # testing_util.py:251-255: a first argument that is a dict gets int keys back (JSON made
    # them strings); the original then passes that dict alone, we keep the other arguments
    assert tests["inputs"] == [[[1, 2], "ab"], [{1: "x", -2: "y"}, 3]]
    assert tests["outputs"] == ["abc", [1, 2]]
    # the list form is unchanged
    assert parse_tests({"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]})["inputs"] == [[1, 2]]


@pytest.mark.parametrize(
    "tests, message",
    [
        # a trailing newline makes an empty line: json.loads("") fails, as it does in the original
        # for every solution (testing_util.py:236), so the row is refused, not scored 0 forever
        ({"fn_name": "f", "inputs": ["1\n"], "outputs": ["1"]}, r"tests\['inputs'\]\[0\] line 2"),
        ({"fn_name": "f", "inputs": ["x y"], "outputs": ["1"]}, "not a JSON value"),
        ({"fn_name": "f", "inputs": [5], "outputs": ["1"]}, "is int 5"),
        ({"fn_name": "f", "inputs": ["1", [2]], "outputs": ["1", 2]}, "every input in the same form"),
        ({"fn_name": "f", "inputs": ["1"], "outputs": [1]}, r"outputs'\]\[0\] is int 1, but the inputs are strings"),
        ({"fn_name": "f", "inputs": ["1"], "outputs": ["abc"]}, "not a JSON string"),
    ],
)
def test_a_call_row_in_neither_form_names_both_forms(tests, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_tests(tests)
    assert "list of the call's positional arguments" in str(err.value)
    assert "one JSON value per line" in str(err.value)


# ------------------------------------------------------------------ extraction


def test_extract_code_like_the_original_where_sensible():
    program = "a, b = map(int, input().split())\nprint(a + b)"
    # no fence: the original runs the whole completion (code_util/__init__.py:7-8)
    assert extract_code(program) == program
    assert extract_code("I would add the two numbers.") is None  # would only be a SyntaxError
    # the closing fence cut off: the original runs everything after the last ```python
    assert extract_code(f"Here:\n```python\n{program}\n") == f"{program}\n"
    assert extract_code(f"Here:\n```python\n{program}\n`") == f"{program}\n"
    # not copied: the original reads only the exact tag ```python; for a ```py block it runs the
    # prose before the first fence ("Here:"), a SyntaxError
    assert extract_code(f"Here:\n```py\n{program}\n```") == f"{program}\n"
    assert extract_code(f"Here:\n```\n{program}\n```") == f"{program}\n"
    # the last python block wins, as split('```python')[-1] does
    assert extract_code("```python\nx = 1\n```\nthen\n```python\nx = 2\n```\n```text\nout\n```") == "x = 2\n"


# ------------------------------------------------------------------ settings


def test_row_scoring_and_config_validate_the_code_settings():
    with pytest.raises(ValueError, match="code_reward must be one of"):
        RowScoring(code_reward="partial")
    with pytest.raises(ValueError, match="code_test_timeout_s must be > 0"):
        RowScoring(code_test_timeout_s=0)
    with pytest.raises(ValueError, match="stdout_compare must be one of"):
        RowScoring(stdout_compare="chars")
    with pytest.raises(ValueError, match="code_prelude must be one of"):
        RowScoring(code_prelude="apps")
    with pytest.raises(ValueError, match="code_prelude must be one of"):
        score_row(py("print(1)"), code_row(STDIO_3), code_prelude="imports")
    with pytest.raises(ValueError, match="code_reward must be one of"):
        score_row(py("print(1)"), code_row(STDIO_3), code_reward="fraction")
    bad_settings = (
        {"code_reward": "partial"},
        {"code_test_timeout_s": -1.0},
        {"stdout_compare": "chars"},
        {"code_prelude": "apps"},
    )
    for bad in bad_settings:
        with pytest.raises(ConfigError, match=f"verify.{next(iter(bad))}"):
            PrimeConfig(verify=VerifyConfig(**bad))
    cfg = PrimeConfig(
        verify=VerifyConfig(code_reward="prime", code_test_timeout_s=5.0, stdout_compare="lines", code_prelude="prime")
    )
    for scoring in (row_scoring(cfg), RowScoring.from_config(cfg.data, cfg.verify)):
        assert (scoring.code_reward, scoring.code_test_timeout_s, scoring.stdout_compare) == ("prime", 5.0, "lines")
        assert scoring.code_prelude == "prime"
    default = VerifyConfig()
    assert (default.code_reward, default.code_test_timeout_s, default.stdout_compare) == ("pass_all", None, "tokens")
    assert default.code_prelude == "none" and RowScoring().code_prelude == "none"


def test_the_eurus_recipe_takes_primes_code_reward():
    v = load_config(ROOT / "configs" / "eurus2_7b_prime.yaml").verify
    # prime.py:23,46 (300 s per sample); code_util/__init__.py:21,46 (5 s per test);
    # prime.py:69-79 (partial credit); testing_util.py:415-548 (line by line)
    assert (v.timeout_s, v.code_test_timeout_s, v.code_reward, v.stdout_compare) == (300.0, 5.0, "prime", "lines")
    assert v.code_prelude == "prime"  # testing_util.py:120, before every program (:126, :192)


# ------------------------------------------------------------------ end to end in the sandbox


@needs_sandbox
def test_primes_call_based_row_scores_through_score_row():
    row = code_row(PRIME_ADD)
    right, wrong = py("def add(a, b):\n    return a + b"), py("def add(a, b):\n    return a * b")
    for mode in ("pass_all", "prime"):
        assert score_row(right, row, code_reward=mode) == 1.0
        assert score_row(wrong, row, code_reward=mode) == 0.0  # 1*2 != 3 and 3*4 != 7
    method = py("class Solution:\n    def add(self, a, b):\n        return a + b")
    assert score_row(method, row) == 1.0


@needs_sandbox
def test_two_of_three_stdio_tests_score_two_thirds_under_prime_and_zero_under_pass_all():
    row, response = code_row(STDIO_3), py(TWO_OF_THREE)
    assert score_row(response, row, code_reward="prime") == pytest.approx(2 / 3)
    assert score_row(response, row, code_reward="pass_all") == 0.0
    assert score_row(response, row) == 0.0  # the library default is pass_all
    assert score_row(response, row, RowScoring(code_reward="prime")) == pytest.approx(2 / 3)
    # the keyword wins over the scoring's setting
    assert score_row(response, row, RowScoring(code_reward="prime"), code_reward="pass_all") == 0.0
    result = score_row_detailed(response, row, code_reward="prime")
    assert (result.passed, result.total) == (2, 3) and "test 2 failed: wrong output" in result.reason
    assert [r.score for r in score_rows([response], [row], workers=0, code_reward="prime")] == [pytest.approx(2 / 3)]


@needs_sandbox
def test_call_based_rows_get_partial_credit_too():
    # Not copied: the original's rerun builds {"inputs", "outputs"} without fn_name
    # (code_util/__init__.py:35-38), so run_test runs the function's definition as a stdin program
    # (testing_util.py:105-107) and every rerun test fails: a call-based row scored 1 or 0. Here
    # the same solution scores as its stdin/stdout twin would: 2/3.
    tests = {"fn_name": "add", "inputs": ["1\n2", "3\n4", "5\n6"], "outputs": ["3", "7", "11"]}
    response = py("def add(a, b):\n    return a + b if a < 5 else 0")
    assert score_row(response, code_row(tests), code_reward="prime") == pytest.approx(2 / 3)
    assert score_row(response, code_row(tests), code_reward="pass_all") == 0.0


@needs_sandbox
def test_failing_only_past_the_tenth_test_is_not_a_full_reward():
    tests = {"inputs": [f"{i}\n" for i in range(12)], "outputs": [f"{2 * i}\n" for i in range(12)]}
    only_12th = py("n = int(input())\nprint(2 * n if n != 11 else -1)")
    # the original: 10/10 of the rerun tests pass -> 1.0 (code_util/__init__.py:60-61, prime.py:71-77)
    assert score_row(only_12th, code_row(tests), code_reward="prime") == pytest.approx(0.9)
    third_and_12th = py("n = int(input())\nprint(2 * n if n not in (2, 11) else -1)")
    # 9/10, as the original gives
    assert score_row(third_and_12th, code_row(tests), code_reward="prime") == pytest.approx(0.9)
    third_and_fourth = py("n = int(input())\nprint(2 * n if n not in (2, 3) else -1)")
    assert score_row(third_and_fourth, code_row(tests), code_reward="prime") == pytest.approx(0.8)  # 8/10


@needs_sandbox
def test_a_test_that_times_out_fails_alone_under_prime():
    # Each rerun test is its own check_correctness call with its own time limit
    # (code_util/__init__.py:42-58; utils.py:34-42 kills it at timeout + 1): a slow test fails alone.
    tests = {"inputs": ["1\n", "2\n", "3\n"], "outputs": ["2\n", "3\n", "4\n"]}
    slow_on_2 = py("n = int(input())\nwhile n == 2:\n    pass\nprint(n + 1)")
    prime = RowScoring(code_reward="prime", code_test_timeout_s=1.0, timeout_s=20.0)
    result = score_row_detailed(slow_on_2, code_row(tests), prime)
    assert result.score == pytest.approx(2 / 3) and result.timed_out
    assert "test 1 failed: test timed out after 1s" in result.reason
    pass_all = RowScoring(code_test_timeout_s=1.0, timeout_s=20.0)
    assert score_row(slow_on_2, code_row(tests), pass_all) == 0.0


@needs_sandbox
def test_the_sample_limit_fails_the_tests_it_leaves_unrun_under_prime():
    # test 0 passes; tests 1 and 2 loop (2 s each against a 3 s sample); test 3 never runs
    tests = {"inputs": ["1\n", "2\n", "2\n", "1\n"], "outputs": ["2\n", "3\n", "3\n", "2\n"]}
    slow_on_2 = py("n = int(input())\nwhile n == 2:\n    pass\nprint(n + 1)")
    prime = RowScoring(code_reward="prime", code_test_timeout_s=2.0, timeout_s=3.0)
    result = score_row_detailed(slow_on_2, code_row(tests), prime)
    assert result.score == pytest.approx(1 / 4) and result.passed == 1
    assert result.timed_out and result.reason.startswith("timed out after")
    assert score_row(slow_on_2, code_row(tests), RowScoring(code_test_timeout_s=2.0, timeout_s=3.0)) == 0.0


@needs_sandbox
def test_float_layout_and_extraction_end_to_end():
    half = code_row({"inputs": ["1 2\n"], "outputs": ["0.50000\n"]})
    assert score_row(py("a, b = map(int, input().split())\nprint(a / b)"), half) == 1.0  # prints 0.5
    assert score_row(py("print('%.8f' % 0.5)"), half) == 1.0
    assert score_row(py("print(0.6)"), half) == 0.0
    layout = code_row({"inputs": ["3\n"], "outputs": ["1\n2\n3\n"]})
    one_line = py("print(*range(1, int(input()) + 1))")
    assert score_row(one_line, layout, RowScoring(stdout_compare="tokens")) == 1.0
    assert score_row(one_line, layout, RowScoring(stdout_compare="lines")) == 0.0
    program = "a, b = map(int, input().split())\nprint(a + b)"
    row = code_row(STDIO_3)
    assert score_row(program, row) == 1.0  # no fence
    assert score_row(f"Sure.\n```python\n{program}\n", row) == 1.0  # closing fence cut off
    assert score_row(f"Sure.\n```py\n{program}\n```", row) == 1.0  # the original: 0 (runs "Sure.")


@needs_sandbox
def test_the_code_settings_reach_the_verifier_pool():
    rows, response = [code_row(STDIO_3)], py(TWO_OF_THREE)
    results = score_rows([response], rows, RowScoring(code_reward="prime"), workers=1)
    assert results[0].score == pytest.approx(2 / 3) and (results[0].passed, results[0].total) == (2, 3)


# ------------------------------------------------------------------ the prelude (testing_util.py:120)

# The original's prelude, read off testing_util.py:120: star imports in this order, then these
# modules, then sys.setrecursionlimit(6*10**5).
ORIGINAL_STAR = "string re datetime collections heapq bisect copy math random statistics itertools functools"
ORIGINAL_STAR = (ORIGINAL_STAR + " operator io sys json builtins typing").split()
ORIGINAL_MODULES = ORIGINAL_STAR[:-2]  # all but builtins and typing


@contextlib.contextmanager
def kept_recursion_limit():
    limit = sys.getrecursionlimit()
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def test_the_prime_prelude_is_the_originals():
    lines = PRIME_PRELUDE.splitlines()
    assert lines[: len(ORIGINAL_STAR)] == [f"from {m} import *" for m in ORIGINAL_STAR]
    assert lines[len(ORIGINAL_STAR) :] == ["import " + ", ".join(ORIGINAL_MODULES), "sys.setrecursionlimit(600000)"]
    # only standard-library modules, which any program may import itself
    assert set(ORIGINAL_STAR) <= sys.stdlib_module_names
    namespace: dict = {}
    with kept_recursion_limit():
        exec(PRIME_PRELUDE, namespace)
        assert sys.getrecursionlimit() == 6 * 10**5
    # the order decides which module's name wins, as in the original
    assert namespace["pow"] is builtins.pow  # math's, then operator's, then the builtin
    assert namespace["Counter"] is typing.Counter  # typing's alias, after collections'
    assert namespace["Counter"]("aab") == collections.Counter(a=2, b=1)
    assert namespace["time"] is datetime.time and namespace["datetime"] is datetime  # the module wins
    assert namespace["sub"] is operator.sub  # operator's, after re's
    assert namespace["deque"] is collections.deque and namespace["sys"] is sys
    assert namespace["gcd"](12, 18) == 6 and namespace["inf"] == float("inf")


def test_setup_with_prelude_by_kind():
    stdio = parse_tests(STDIO_3)
    call = parse_tests(PRIME_ADD)
    own_setup = parse_tests({"fn_name": "f", "inputs": [[1]], "outputs": [1], "setup": "K = 3"})
    asserts = parse_tests({"asserts": ["assert f(1) == 1"], "setup": "import math"})
    assert call["setup"] == CALL_PRELUDE
    for tests in (stdio, call, own_setup, asserts):
        assert setup_with_prelude(tests, "none") == tests["setup"]
    assert setup_with_prelude(stdio, "prime") == PRIME_PRELUDE
    # the default call setup stands in for APPS's imports: the original has its prelude alone
    assert setup_with_prelude(call, "prime") == PRIME_PRELUDE
    # a row's own setup runs after the prelude, so that its names win
    assert setup_with_prelude(own_setup, "prime") == PRIME_PRELUDE + "K = 3"
    # PRIME's scorer runs no assert tests; their setup is also the judge's namespace
    assert setup_with_prelude(asserts, "prime") == "import math"
    with pytest.raises(ValueError, match="prelude must be one of"):
        setup_with_prelude(stdio, "apps")


@contextlib.contextmanager
def c_stack_limit(nbytes: int):
    """Run with a C stack limit of at most ``nbytes`` (the sandbox inherits it), as on most hosts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    target = nbytes if hard == resource.RLIM_INFINITY else min(nbytes, hard)
    resource.setrlimit(resource.RLIMIT_STACK, (target if soft == resource.RLIM_INFINITY else min(soft, target), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))


DEPTH = "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"


@needs_sandbox
def test_the_prime_prelude_end_to_end():
    # Counter and sys without imports; a recursion 10,000 deep (Python's default limit is 1,000)
    counts = code_row({"inputs": ["abca\n", "zz\n"], "outputs": ["a 2\n", "z 2\n"]})
    uses_counter = py("print(*Counter(sys.stdin.readline().strip()).most_common(1)[0])")
    deep = code_row({"inputs": ["10000\n", "5\n"], "outputs": ["10000\n", "5\n"]})
    recursive = py(DEPTH + "print(depth(int(input())))")
    for response, row in ((uses_counter, counts), (recursive, deep)):
        assert score_row(response, row, code_prelude="prime") == 1.0
        assert score_row(response, row, RowScoring(code_prelude="prime"), code_reward="prime") == 1.0
        assert score_row(response, row) == 0.0  # the default runs the program as written
    result = score_row_detailed(uses_counter, counts, code_reward="prime")
    assert result.score == 0.0 and "NameError: name 'Counter' is not defined" in result.reason
    # under none the shallow test still passes: 1/2 of PRIME's credit
    result = score_row_detailed(recursive, deep, code_reward="prime")
    assert result.score == 0.5 and "test 0 failed: RecursionError" in result.reason
    # call-based rows: the prelude replaces the default setup, so pow is the builtin there, as in
    # the original (the default's `from math import *` makes it math.pow, which takes 2 arguments)
    call = code_row({"fn_name": "f", "inputs": ["3\n200\n7", "10000\n1\n1"], "outputs": ["2", "10000"]})
    power_then_depth = py(DEPTH + "def f(a, b, m):\n    return pow(a, b, m) if m > 1 else depth(a)")
    assert score_row(power_then_depth, call, code_prelude="prime") == 1.0  # 3**200 % 7 == 2
    result = score_row_detailed(power_then_depth, call, code_reward="prime")
    assert result.score == 0.0 and "pow expected 2 arguments" in result.reason
    # the pool carries the setting to its workers
    results = score_rows([recursive], [deep], RowScoring(code_prelude="prime"), workers=1)
    assert results[0].score == 1.0


@needs_sandbox
def test_a_c_stack_overflow_fails_its_test_alone():
    # Through lru_cache each frame also takes C stack, which the prelude's limit of 600,000 does not
    # guard: 200,000 levels overflow an 8 MiB stack. The test's process dies (SIGSEGV; Python 3.12+
    # stops C recursion itself with a RecursionError), as the original's scorer process did; the
    # sandbox does not raise the stack (docs/security.md).
    row = code_row({"inputs": ["200000\n", "50\n"], "outputs": ["200000\n", "50\n"]})
    memo = py("@lru_cache(None)\n" + DEPTH + "print(depth(int(input())))")
    with c_stack_limit(8 << 20):
        result = score_row_detailed(memo, row, RowScoring(code_prelude="prime", code_reward="prime"))
    assert result.score == 0.5 and (result.passed, result.total) == (1, 2)
    assert "test 0 failed" in result.reason
    if sys.version_info < (3, 12):
        assert "SIGSEGV (crash: a C stack overflow from deep recursion" in result.reason
    else:
        assert "SIGSEGV" in result.reason or "RecursionError" in result.reason
    assert not result.timed_out


@needs_sandbox
def test_the_prelude_keeps_the_programs_line_numbers_and_spares_asserts():
    broken = py("n = int(input())\nprint(n +)\n")
    for prelude in ("none", "prime"):
        result = score_row_detailed(broken, code_row(STDIO_3), code_prelude=prelude)
        assert result.score == 0.0 and '"<solution>", line 2' in result.reason
    # assert rows (which PRIME's scorer never runs) keep their own setup under both settings
    asserts = code_row({"asserts": ["assert top('abca') == 'a'"]})
    top = "def top(s):\n    return Counter(s).most_common(1)[0][0]"
    assert score_row(py(top), asserts, code_prelude="prime") == 0.0
    assert score_row(py("from collections import Counter\n" + top), asserts, code_prelude="prime") == 1.0
