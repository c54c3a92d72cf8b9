"""A corpus of right programs, written as a policy writes its responses (issue 24, "Must show").

Each :class:`Case` is a whole response (prose, Markdown fences, the program) and the tests of one
of the three formats the code verifier reads: asserts (HumanEval/MBPP/LeetCode), stdin/stdout
(APPS/CodeContests) and call-based (``fn_name``, in the list form or PRIME's JSON-lines form).
Every program is right: :mod:`tests.test_right_programs` scores each through the public
``score_rows`` and asserts 1.0, except the cases with a ``limit``, which are documented limits
(README, "What a right program may do") and are asserted to score 0 so that the documentation
stays true. A ``wrong`` twin (the same response with one bug) must score 0, proving that the
test can fail.

What counts as right in stdin/stdout mode: stdout is the answer, so debugging output belongs on
stderr (as on every contest judge); a program that prints its debugging lines to stdout prints a
wrong answer, and appears here only as the wrong twin of its stderr variant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One response and its tests.

    ``form``: the family (the report's rows); ``name``: unique within the corpus. ``limit``: why a
    right program scores 0 by design (then it is asserted to score 0), else None. ``wrong``: a
    twin response with one bug, asserted to score 0.
    """

    form: str
    name: str
    response: str
    tests: dict
    limit: str | None = None
    wrong: str | None = None


def md(code: str, lang: str = "python", before: str = "Here is my solution.", after: str = "") -> str:
    """A response: prose, one fenced block, optional prose after it."""
    text = f"{before}\n\n```{lang}\n{code.strip(chr(10))}\n```\n"
    return text + (f"\n{after}\n" if after else "")


ADD_ASSERTS = {"asserts": ["assert add(1, 2) == 3", "assert add(-5, 5) == 0", "assert add(10, 20) == 30"]}
SUM_STDIO = {"inputs": ["1 2\n", "10 20\n", "-3 3\n"], "outputs": ["3\n", "30\n", "0\n"]}
ADD_CALL = {"fn_name": "add", "inputs": [[1, 2], [10, 20], [-3, 3]], "outputs": [3, 30, 0]}
ADD_PRIME_CALL = {"fn_name": "add", "inputs": ["1\n2", "10\n20", "-3\n3"], "outputs": ["3", "30", "0"]}

ADD = "def add(a, b):\n    return a + b\n"
ADD_WRONG = "def add(a, b):\n    return a - b\n"

CASES: list[Case] = []


def case(form: str, name: str, response: str, tests: dict, *, limit: str | None = None, wrong: str | None = None):
    CASES.append(Case(form, name, response, tests, limit, wrong))


# ------------------------------------------------------------------ chatty debugging output

F = "chatty debugging output"
CHATTY_ADD = """
import sys

def add(a, b):
    print(f"DEBUG: add called with a={a}, b={b}")
    result = a + b
    print("DEBUG: result =", result, file=sys.stderr)
    return result

print("Testing my function...")
print(add(1, 2))  # should be 3
"""
case(F, "asserts_print_stdout_and_stderr", md(CHATTY_ADD), ADD_ASSERTS, wrong=md(CHATTY_ADD.replace("a + b", "a * b")))
case(
    F,
    "asserts_module_level_self_test",
    md(ADD + "\n# quick self-check\nassert add(2, 2) == 4\nfor x in range(3):\n    print(x, add(x, x))\n"),
    ADD_ASSERTS,
)
case(
    F,
    "asserts_main_guard_reads_input",
    md(ADD + '\nif __name__ == "__main__":\n    a, b = map(int, input().split())\n    print(add(a, b))\n'),
    ADD_ASSERTS,
)
case(
    F,
    "asserts_logging_debug",
    md(
        "import logging\nlogging.basicConfig(level=logging.DEBUG)\nlog = logging.getLogger(__name__)\n\n"
        "def add(a, b):\n    log.debug('adding %s and %s', a, b)\n    return a + b\n"
    ),
    ADD_ASSERTS,
)
case(
    F,
    "asserts_pprint_and_unicode",
    md(
        "from pprint import pprint\n\ndef add(a, b):\n    pprint({'a': a, 'b': b, 'note': 'héllo ✓'})\n"
        "    print('→ sum:', a + b, flush=True)\n    return a + b\n"
    ),
    ADD_ASSERTS,
)
case(
    F,
    "asserts_chatty_100_kib",
    md(
        "def add(a, b):\n    for i in range(1000):\n        print('step', i, 'of a long trace' * 2)\n    return a + b\n"
    ),
    ADD_ASSERTS,
)
case(
    F,
    "asserts_chatty_over_output_cap",
    md("def add(a, b):\n    print('x' * (2 << 20))\n    return a + b\n"),
    ADD_ASSERTS,
    limit="stdout and stderr together are capped at 1 MiB per sample (SandboxLimits.output_bytes); "
    "a flood of output scores 0 whatever the answer",
)
case(F, "call_prints", md("def add(a, b):\n    print('calling add', a, b)\n    return a + b\n"), ADD_CALL)
case(
    F,
    "prime_call_prints_stderr",
    md("import sys\n\ndef add(a, b):\n    sys.stderr.write(f'{a}+{b}\\n')\n    print('ok')\n    return a + b\n"),
    ADD_PRIME_CALL,
)
STDIO_STDERR = """
import sys

def debug(*args):
    print(*args, file=sys.stderr)

a, b = map(int, input().split())
debug("read", a, b)
print(a + b)
debug("done")
"""
case(
    F,
    "stdio_debug_to_stderr",
    md(STDIO_STDERR),
    SUM_STDIO,
    wrong=md(STDIO_STDERR.replace("file=sys.stderr", "file=sys.stdout")),
)
case(
    F,
    "stdio_logging_default_stderr",
    md(
        "import logging\nlogging.basicConfig(level=logging.INFO)\nn = sum(map(int, input().split()))\n"
        "logging.info('computed %d', n)\nprint(n)\n"
    ),
    SUM_STDIO,
)
case(
    F,
    "stdio_stderr_write_and_traceback_print",
    md(
        "import sys, traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    traceback.print_exc()\n"
        "sys.stderr.write('about to answer\\n')\nprint(sum(map(int, sys.stdin.read().split())))\n"
    ),
    SUM_STDIO,
)

# ------------------------------------------------------------------ floats printed their own way

F = "floats printed their own way"
AVG_STDIO = {"inputs": ["0.1 0.2\n", "1 2\n"], "outputs": ["0.15\n", "1.5\n"]}
case(
    F,
    "stdio_repr_of_float_sum",
    md("a, b = map(float, input().split())\nprint((a + b) / 2)\n"),
    AVG_STDIO,
    wrong=md("a, b = map(float, input().split())\nprint(a + b)\n"),
)
case(F, "stdio_many_decimals", md("a, b = map(float, input().split())\nprint(f'{(a + b) / 2:.10f}')\n"), AVG_STDIO)
case(F, "stdio_scientific", md("a, b = map(float, input().split())\nprint(f'{(a + b) / 2:e}')\n"), AVG_STDIO)
case(F, "stdio_rounded_6", md("a, b = map(float, input().split())\nprint('%.6f' % ((a + b) / 2))\n"), AVG_STDIO)
THIRD_STDIO = {"inputs": ["1 3\n", "2 3\n"], "outputs": ["0.333333333\n", "0.666666667\n"]}
case(
    F, "stdio_fewer_digits_than_expected", md("a, b = map(int, input().split())\nprint(round(a / b, 6))\n"), THIRD_STDIO
)
case(F, "stdio_sum_0_1_plus_0_2", md("print(0.1 + 0.2)\n"), {"inputs": [""], "outputs": ["0.3"]})
case(F, "stdio_tiny_as_exponent", md("print(1.5 / 10**7)\n"), {"inputs": [""], "outputs": ["0.00000015"]})
case(F, "stdio_int_for_expected_decimal", md("print(3)\n"), {"inputs": [""], "outputs": ["3.0"]})
case(F, "stdio_negative_zero", md("print(-0.0)\n"), {"inputs": [""], "outputs": ["0.0"]})
case(
    F,
    "stdio_float_for_expected_integer",
    md("a, b = map(int, input().split())\nprint((a + b) / 1)\n"),
    SUM_STDIO,
    limit="an expected integer must be printed as one: '3.0' does not pass for '3' (PRIME's np.allclose would "
    "pass it), so that a wrong 1000001 or 5.0 never passes for 1000000 or 5 (outputs_match)",
)
case(F, "call_float_for_int", md("def add(a, b):\n    return float(a + b)\n"), ADD_CALL)
case(
    F,
    "call_int_for_float",
    md("def half(x):\n    return x // 2\n"),
    {"fn_name": "half", "inputs": [[4], [10]], "outputs": [2.0, 5.0]},
)
case(
    F,
    "call_float_rounding_differs",
    md("def total(xs):\n    return sum(xs)\n"),
    {"fn_name": "total", "inputs": [[[0.1, 0.2]]], "outputs": [0.3]},
    limit="call-based return values compare exactly, as in PRIME's scorer (testing_util.py:289): 0.1 + 0.2 "
    "is 0.30000000000000004, not 0.3",
)
case(
    F,
    "asserts_isclose",
    md("import math\n\ndef area(r):\n    return math.pi * r * r\n"),
    {"asserts": ["assert math.isclose(area(2), 12.566370614359172)", "assert abs(area(1) - 3.14159) < 1e-5"]},
    wrong=md("def area(r):\n    return 3.14 * r * r\n"),
)
case(
    F,
    "asserts_int_equals_float",
    md("def mean(xs):\n    return sum(xs) // len(xs)\n"),
    {"asserts": ["assert mean([1, 2, 3]) == 2.0", "assert round(mean([4, 4]), 2) == 4"]},
)
case(
    F,
    "asserts_float_via_str_format",
    md("def fmt(x):\n    return f'{x:.2f}'\n"),
    {"asserts": ["assert fmt(3.14159) == '3.14'", "assert float(fmt(2)) == 2.0"]},
)

# ------------------------------------------------------------------ exceptions the test expects

F = "exceptions the test expects"
SQRT = """
def safe_sqrt(x):
    if x < 0:
        raise ValueError("negative input")
    return x ** 0.5
"""
SQRT_TESTS = {
    "asserts": [
        "assert safe_sqrt(4) == 2",
        "try:\n    safe_sqrt(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no ValueError')",
    ]
}
case(F, "try_except_valueerror", md(SQRT), SQRT_TESTS, wrong=md(SQRT.replace("raise ValueError", "return None #")))
case(
    F,
    "message_checked",
    md(SQRT),
    {
        "asserts": [
            "try:\n    safe_sqrt(-1)\n    assert False\nexcept ValueError as e:\n    assert str(e) == 'negative input'"
        ]
    },
)
case(
    F,
    "custom_subclass_of_valueerror",
    md("class NegativeError(ValueError):\n    pass\n\n" + SQRT.replace("raise ValueError", "raise NegativeError")),
    SQRT_TESTS,
)
case(
    F,
    "pytest_raises",
    md(SQRT),
    {"asserts": ["import pytest\nwith pytest.raises(ValueError):\n    safe_sqrt(-1)"]},
)
case(
    F,
    "setup_helper_assert_raises",
    md(SQRT),
    {
        "setup": "def raises(exc, fn, *args):\n    try:\n        fn(*args)\n    except exc:\n        return True\n"
        "    return False\n",
        "asserts": ["assert raises(ValueError, safe_sqrt, -4)", "assert not raises(ValueError, safe_sqrt, 4)"],
    },
)
STACK = """
class Stack:
    def __init__(self):
        self.items = []

    def push(self, x):
        self.items.append(x)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()
"""
case(
    F,
    "indexerror_from_class_method",
    md(STACK),
    {
        "asserts": [
            "s = Stack()\ns.push(1)\nassert s.pop() == 1\ntry:\n    s.pop()\nexcept IndexError:\n    pass\n"
            "else:\n    assert False"
        ]
    },
)
case(
    F,
    "keyerror_and_args",
    md("def lookup(d, k):\n    return d[k]\n"),
    {
        "asserts": [
            "try:\n    lookup({'a': 1}, 'b')\nexcept KeyError as e:\n    assert e.args == ('b',)\nelse:\n"
            "    assert False",
            "assert lookup({'a': 1}, 'a') == 1",
        ]
    },
)
case(
    F,
    "unittest_assertraises",
    md(SQRT),
    {"asserts": ["import unittest\nunittest.TestCase().assertRaises(ValueError, safe_sqrt, -2)"]},
)

# ------------------------------------------------------------------ generators and in-place changes

F = "generators and in-place changes"
GEN = "def first_n(n):\n    i = 0\n    while i < n:\n        yield i\n        i += 1\n"
case(
    F,
    "list_of_generator",
    md(GEN),
    {"asserts": ["assert list(first_n(3)) == [0, 1, 2]", "assert list(first_n(0)) == []"]},
    wrong=md(GEN.replace("i += 1", "i += 2")),
)
case(
    F,
    "sum_of_map_object",
    md("def squares(xs):\n    return map(lambda x: x * x, xs)\n"),
    {"asserts": ["assert sum(squares([1, 2, 3])) == 14", "assert sorted(squares([3, 1])) == [1, 9]"]},
)
case(
    F,
    "set_of_dict_keys",
    md("def uniq(xs):\n    return dict.fromkeys(xs).keys()\n"),
    {"asserts": ["assert set(uniq([1, 1, 2])) == {1, 2}", "assert tuple(uniq('aab')) == ('a', 'b')"]},
)
case(F, "next_then_list", md(GEN), {"asserts": ["g = first_n(3)\nassert next(g) == 0\nassert list(g) == [1, 2]"]})
case(
    F,
    "comprehension_over_generator",
    md(GEN),
    {"asserts": ["assert [x * 2 for x in first_n(3)] == [0, 2, 4]", "assert list(map(str, first_n(2))) == ['0', '1']"]},
)
case(
    F,
    "call_returns_generator",
    md(GEN),
    {"fn_name": "first_n", "inputs": [[3]], "outputs": [[0, 1, 2]]},
    limit="a call-based return value is compared as it is, as in PRIME's scorer (testing_util.py:279-289, where "
    "json.dumps of a generator raises): a generator is not the list the test expects",
)
case(
    F,
    "call_returns_tuple_for_list",
    md("def pair(a, b):\n    return a, b\n"),
    {"fn_name": "pair", "inputs": [[1, 2]], "outputs": [[1, 2]]},
)
SORT_IN_PLACE = "def sort_in_place(a):\n    a.sort()\n"
case(
    F,
    "in_place_list",
    md(SORT_IN_PLACE),
    {"asserts": ["a = [3, 1, 2]\nsort_in_place(a)\nassert a == [1, 2, 3]"]},
    wrong=md("def sort_in_place(a):\n    a = sorted(a)\n"),
)
case(
    F,
    "in_place_dict",
    md("def add_item(d, k, v):\n    d[k] = v\n"),
    {"asserts": ["d = {'x': 0}\nadd_item(d, 'a', 1)\nassert d == {'x': 0, 'a': 1}"]},
)
case(
    F,
    "in_place_matrix_rotate",
    md("def rotate(m):\n    n = len(m)\n    m[:] = [list(r) for r in zip(*m[::-1])]\n"),
    {"asserts": ["m = [[1, 2], [3, 4]]\nrotate(m)\nassert m == [[3, 1], [4, 2]]"]},
)
case(
    F,
    "in_place_nested_rows",
    md("def zero_first_column(m):\n    for row in m:\n        row[0] = 0\n"),
    {"asserts": ["m = [[1, 2], [3, 4]]\nzero_first_column(m)\nassert m == [[0, 2], [0, 4]]"]},
)
case(
    F,
    "in_place_leetcode_solution",
    md(
        "class Solution:\n    def moveZeroes(self, nums):\n        k = 0\n        for x in nums:\n"
        "            if x:\n                nums[k] = x\n                k += 1\n"
        "        for i in range(k, len(nums)):\n            nums[i] = 0\n"
    ),
    {"asserts": ["nums = [0, 1, 0, 3, 12]\nSolution().moveZeroes(nums)\nassert nums == [1, 3, 12, 0, 0]"]},
)
case(
    F,
    "in_place_row_alias_kept",
    md("def zero_first_column(m):\n    for row in m:\n        row[0] = 0\n"),
    {"asserts": ["m = [[1, 2], [3, 4]]\nrow = m[1]\nzero_first_column(m)\nassert row == [0, 4] and m[1] is row"]},
)
case(
    F,
    "in_place_and_return_count",
    md(
        "class Solution:\n    def removeDuplicates(self, nums):\n        k = 0\n        for x in nums:\n"
        "            if k == 0 or nums[k - 1] != x:\n                nums[k] = x\n                k += 1\n"
        "        return k\n"
    ),
    {
        "asserts": [
            "nums = [1, 1, 2, 3, 3]\nk = Solution().removeDuplicates(nums)\nassert k == 3\nassert nums[:k] == [1, 2, 3]"
        ]
    },
    wrong=md("class Solution:\n    def removeDuplicates(self, nums):\n        return len(set(nums))\n"),
)
case(
    F,
    "in_place_keyword_argument",
    md("def fill(a, *, value):\n    for i in range(len(a)):\n        a[i] = value\n"),
    {
        "asserts": [
            "a = [1, 2]\nfill(a, value=7)\nassert a == [7, 7]",
            "d = {'a': [0]}\nfill(d['a'], value=1)\nassert d == {'a': [1]}",
        ]
    },
)
case(
    F,
    "in_place_set",
    md("def add_all(s, xs):\n    s.update(xs)\n"),
    {"asserts": ["s = {1}\nadd_all(s, [2, 3])\nassert s == {1, 2, 3}"]},
)
case(
    F,
    "in_place_returns_none_too",
    md("def reverse(a):\n    a.reverse()\n    return None\n"),
    {"asserts": ["a = [1, 2, 3]\nassert reverse(a) is None\nassert a == [3, 2, 1]"]},
)

# A call's in-place changes land when the test statement that made the call ends (the judge's
# _Deferred): from the next statement on, in a function of the test, after a loop, in the block
# after a header that made the call, in the handler of the exception the call raised.
REMOVE_DUPLICATES = md(
    "class Solution:\n    def removeDuplicates(self, nums):\n        k = 0\n        for x in nums:\n"
    "            if k == 0 or nums[k - 1] != x:\n                nums[k] = x\n                k += 1\n"
    "        return k\n"
)
case(
    F,
    "in_place_in_check_candidate",
    md(SORT_IN_PLACE),
    {
        "asserts": [
            "def check(candidate):\n    a = [3, 1, 2]\n    candidate(a)\n    assert a == [1, 2, 3]\n\n"
            "check(sort_in_place)"
        ]
    },
    wrong=md("def sort_in_place(a):\n    a.reverse()\n"),
)
case(
    F,
    "in_place_in_a_loop_then_assert",
    md(SORT_IN_PLACE),
    {
        "asserts": [
            "rows = [[3, 1], [2, 1, 0]]\nfor r in rows:\n    sort_in_place(r)\nassert rows == [[1, 3], [0, 1, 2]]"
        ]
    },
    wrong=md("def sort_in_place(a):\n    a.sort(reverse=True)\n"),
)
case(
    F,
    "in_place_count_in_if_header",
    REMOVE_DUPLICATES,
    {
        "asserts": [
            "nums = [1, 1, 2]\nif Solution().removeDuplicates(nums) == 2:\n"
            "    assert nums[:2] == [1, 2]\nelse:\n    assert False"
        ]
    },
)
case(
    F,
    "in_place_in_a_test_helper",
    REMOVE_DUPLICATES,
    {
        "asserts": [
            "def run(nums):\n    k = Solution().removeDuplicates(nums)\n    return nums[:k]\n\n"
            "assert run([1, 1, 2, 2, 3]) == [1, 2, 3]"
        ]
    },
)
case(
    F,
    "in_place_through_a_returning_wrapper",
    md(SORT_IN_PLACE),
    {"asserts": ["def run(a):\n    return sort_in_place(a)\n\na = [2, 1]\nrun(a)\nassert a == [1, 2]"]},
)
case(
    F,
    "in_place_in_a_while_condition",
    md("def pop_min(a):\n    a.sort()\n    return a.pop(0)\n"),
    {"asserts": ["a = [5, 1, 3]\nout = []\nwhile a:\n    out.append(pop_min(a))\nassert out == [1, 3, 5] and a == []"]},
)
case(
    F,
    "in_place_then_raise",
    md("def drain(a):\n    a.clear()\n    raise ValueError('empty')\n"),
    {"asserts": ["a = [1]\ntry:\n    drain(a)\nexcept ValueError:\n    assert a == []\nelse:\n    assert False"]},
)
case(
    F,
    "in_place_read_in_the_same_statement",
    md(SORT_IN_PLACE),
    {"asserts": ["a = [3, 1, 2]\nassert sort_in_place(a) is None and a == [1, 2, 3]"]},
    limit="a call's in-place changes reach the test when the statement that made the call ends: within it the "
    "test sees its arguments as it built them, so that no expected value it computes from them after the call "
    "(assert f(d) == sorted(d)) is in the candidate's reach; read them on the next statement",
)

# ------------------------------------------------------------------ code blocks: lists, fences, backticks

F = "code blocks in lists, fences, backticks"
case(
    F,
    "numbered_list_indented_fence",
    "Steps:\n\n1. Define the function:\n\n   ```python\n   def add(a, b):\n       return a + b\n   ```\n\n2. Done.\n",
    ADD_ASSERTS,
    wrong="Steps:\n\n1. Define the function:\n\n   ```python\n   def add(a, b):\n       return a - b\n   ```\n",
)
case(
    F,
    "bullet_list_indented_fence",
    "- Here is the code:\n  ```python\n  def add(a, b):\n      return a + b\n  ```\n- It runs in O(1).\n",
    ADD_ASSERTS,
)
case(F, "fence_python3", md(ADD, "python3"), ADD_ASSERTS)
case(F, "fence_py", md(ADD, "py"), ADD_ASSERTS)
case(F, "fence_Python_with_info", md(ADD, "Python title=solution.py"), ADD_ASSERTS)
case(F, "fence_untagged", md(ADD, ""), ADD_ASSERTS)
case(F, "fence_tildes", "Solution:\n\n~~~python\n" + ADD + "~~~\n", ADD_ASSERTS)
case(F, "fence_four_backticks", "Solution:\n\n````python\n" + ADD + "````\n", ADD_ASSERTS)
case(F, "closing_fence_glued", "Solution:\n```python\ndef add(a, b):\n    return a + b```\n", ADD_ASSERTS)
case(F, "no_fence_bare_code", ADD, ADD_ASSERTS)
case(
    F,
    "draft_then_final_block",
    "First attempt:\n```python\ndef add(a, b):\n    return a - b\n```\nThat is wrong; fixed:\n```python\n"
    + ADD
    + "```\n",
    ADD_ASSERTS,
    wrong="First attempt:\n```python\n" + ADD + "```\nHmm, let me change it:\n```python\n" + ADD_WRONG + "```\n",
)
case(F, "solution_then_output_block", md(ADD) + "\nOutput:\n```text\n3\n```\n", ADD_ASSERTS)
case(F, "solution_then_shell_block", md(ADD) + "\nRun it with:\n```bash\npython solution.py\n```\n", ADD_ASSERTS)
case(
    F,
    "solution_then_python_usage_block",
    md(ADD) + "\nExample usage:\n```python\nprint(add(1, 2))  # 3\n```\n",
    ADD_ASSERTS,
    limit="the program is the last ```python block, as in PRIME's scorer (code_util/__init__.py:8): a usage "
    "example in its own later Python block replaces the solution",
)
case(
    F,
    "explanation_after_code",
    md(
        ADD,
        after="This works because `+` adds integers; complexity O(1).\n\n**Edge cases:** negative numbers are fine.",
    ),
    ADD_ASSERTS,
)
case(
    F,
    "think_block_with_drafts",
    "<think>\nMaybe:\n```python\ndef add(a, b): return 0\n```\nno...\n</think>\n\nFinal answer:\n" + md(ADD, before=""),
    ADD_ASSERTS,
)
BACKTICKS = 'def fence(lang):\n    return "```" + lang\n\ndef quote(s):\n    return "`" + s + "`"\n'
BACKTICK_TESTS = {"asserts": ["assert fence('py') == '```py'", "assert quote('x') == '`x`'"]}
case(
    F,
    "triple_backticks_in_string",
    md(BACKTICKS),
    BACKTICK_TESTS,
    wrong=md(BACKTICKS.replace('"```" + lang', '"``" + lang')),
)
case(
    F,
    "markdown_builder_in_code",
    md("def code_block(src):\n    return '```python\\n' + src + '\\n```'\n"),
    {"asserts": ["assert code_block('x') == '```python\\nx\\n```'"]},
)
case(
    F,
    "backticks_in_comment_and_fstring",
    md("def wrap(s):\n    # wrap in `backticks` like ``this``\n    return f'`{s}`'\n"),
    {"asserts": ["assert wrap('a') == '`a`'"]},
)
case(F, "windows_line_endings", md(ADD).replace("\n", "\r\n"), ADD_ASSERTS)
case(
    F,
    "windows_line_endings_stdio",
    md("a, b = map(int, input().split())\nprint(a + b)\n").replace("\n", "\r\n"),
    SUM_STDIO,
)
case(F, "tabs", md("def add(a, b):\n\tif a:\n\t\treturn a + b\n\treturn b\n"), ADD_ASSERTS)
case(
    F,
    "unicode_identifiers",
    md("def add(a, b):\n    résultat = a + b\n    π = 3.14159\n    return résultat\n"),
    ADD_ASSERTS,
)
case(F, "unicode_output_stdio", md("n = sum(map(int, input().split()))\nprint(f'{n} ✓'.split()[0])\n"), SUM_STDIO)
case(F, "trailing_spaces_in_code", md("def add(a, b):   \n    return a + b   \n\n\n"), ADD_ASSERTS)

# ------------------------------------------------------------------ program shapes

F = "program shapes"
case(
    F,
    "recursion_deep",
    md("import sys\nsys.setrecursionlimit(10000)\n\ndef tri(n):\n    return 0 if n == 0 else n + tri(n - 1)\n"),
    {"asserts": ["assert tri(3000) == 4501500", "assert tri(0) == 0"]},
)
case(
    F,
    "recursion_lru_cache",
    md(
        "from functools import lru_cache\n\n@lru_cache(maxsize=None)\ndef fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    ),
    {"asserts": ["assert fib(80) == 23416728348467685"]},
)
case(
    F,
    "class_with_helpers",
    md(STACK),
    {"asserts": ["s = Stack()\nfor x in (1, 2, 3):\n    s.push(x)\nassert [s.pop(), s.pop()] == [3, 2]"]},
)
case(
    F,
    "dataclass",
    md(
        "from dataclasses import dataclass, field\n\n@dataclass\nclass Box:\n    w: int\n    h: int\n"
        "    tags: list = field(default_factory=list)\n\n    def area(self):\n"
        "        return self.w * self.h\n\ndef area(w, h):\n    return Box(w, h).area()\n"
    ),
    {"asserts": ["assert area(2, 3) == 6"]},
)
case(
    F,
    "helper_functions_and_nested",
    md(
        "def _gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n\n"
        "def lcm(a, b):\n    def g():\n        return _gcd(a, b)\n"
        "    return a * b // g()\n"
    ),
    {"asserts": ["assert lcm(4, 6) == 12", "assert lcm(7, 3) == 21"]},
)
case(
    F,
    "imports_inside_function",
    md(
        "def perms(s):\n    from itertools import permutations\n"
        "    return sorted(''.join(p) for p in permutations(s))\n"
    ),
    {"asserts": ["assert perms('ab') == ['ab', 'ba']"]},
)
case(
    F,
    "typing_annotations",
    md(
        "from typing import List, Optional\n\ndef first(xs: List[int]) -> Optional[int]:\n"
        "    return xs[0] if xs else None\n"
    ),
    {"asserts": ["assert first([5, 6]) == 5", "assert first([]) is None"]},
)
case(
    F,
    "pickle_candidate_object",
    md(
        "import pickle\n\nclass P:\n    def __init__(self, v):\n        self.v = v\n\n"
        "def roundtrip(v):\n    return pickle.loads(pickle.dumps(P(v))).v\n"
    ),
    {"asserts": ["assert roundtrip(5) == 5"]},
)
POOL = """
from multiprocessing import Pool

def square(x):
    return x * x

def squares(xs):
    with Pool(2) as pool:
        return pool.map(square, xs)
"""
case(F, "multiprocessing_pool_asserts", md(POOL), {"asserts": ["assert squares([1, 2, 3]) == [1, 4, 9]"]})
case(
    F,
    "multiprocessing_pool_stdio",
    md(
        "import sys\nfrom multiprocessing import Pool\n\ndef sq(x):\n    return x * x\n\n"
        "if __name__ == '__main__':\n    xs = list(map(int, sys.stdin.read().split()))\n    with Pool(2) as p:\n"
        "        print(sum(p.map(sq, xs)))\n"
    ),
    {"inputs": ["1 2\n", "3\n"], "outputs": ["5\n", "9\n"]},
)
case(
    F,
    "threading_big_stack_stdio",
    md(
        "import sys, threading\n\ndef main():\n    a, b = map(int, sys.stdin.readline().split())\n    print(a + b)\n\n"
        "threading.stack_size(1 << 26)\nt = threading.Thread(target=main)\nt.start()\nt.join()\n"
    ),
    SUM_STDIO,
)
case(
    F,
    "asyncio_run",
    md(
        "import asyncio\n\nasync def _add(a, b):\n    await asyncio.sleep(0)\n    return a + b\n\n"
        "def add(a, b):\n    return asyncio.run(_add(a, b))\n"
    ),
    ADD_ASSERTS,
)
case(
    F,
    "solution_class_call",
    md(
        "class Solution:\n    def add(self, a: int, b: int) -> int:\n"
        "        return self._plus(a, b)\n\n    def _plus(self, a, b):\n        return a + b\n"
    ),
    ADD_CALL,
)
case(
    F,
    "prime_call_json_lines",
    md("def add(a, b):\n    return a + b\n"),
    ADD_PRIME_CALL,
    wrong=md("def add(a, b):\n    return str(a + b)\n"),
)
case(
    F,
    "call_wrapped_expected_value",
    md("def evens(xs):\n    return [x for x in xs if x % 2 == 0]\n"),
    {"fn_name": "evens", "inputs": [[[1, 2, 3, 4]]], "outputs": [[[2, 4]]]},
)
case(
    F,
    "call_dict_with_int_keys",
    md("def count(xs):\n    from collections import Counter\n    return dict(Counter(xs))\n"),
    {"fn_name": "count", "inputs": ["[1, 1, 2]"], "outputs": ['{"1": 2, "2": 1}']},
)

# ------------------------------------------------------------------ how a stdin/stdout program reads and ends

F = "stdin/stdout reading and layout"
case(
    F,
    "input",
    md("a, b = map(int, input().split())\nprint(a + b)\n"),
    SUM_STDIO,
    wrong=md("a, b = map(int, input().split())\nprint(a - b)\n"),
)
case(F, "sys_stdin_read", md("import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"), SUM_STDIO)
case(
    F,
    "sys_stdin_readline",
    md("import sys\ninput = sys.stdin.readline\na, b = map(int, input().split())\nprint(a + b)\n"),
    SUM_STDIO,
)
case(
    F,
    "for_line_in_stdin",
    md("import sys\nfor line in sys.stdin:\n    if line.strip():\n        print(sum(map(int, line.split())))\n"),
    SUM_STDIO,
)
case(
    F,
    "stdin_buffer",
    md("import sys\ndata = sys.stdin.buffer.read().split()\nprint(int(data[0]) + int(data[1]))\n"),
    SUM_STDIO,
)
case(F, "open_0", md("print(sum(map(int, open(0).read().split())))\n"), SUM_STDIO)
case(
    F,
    "main_guard",
    md(
        "def main():\n    a, b = map(int, input().split())\n    print(a + b)\n\n"
        "if __name__ == '__main__':\n    main()\n"
    ),
    SUM_STDIO,
)
case(
    F,
    "sys_stdout_write_no_newline",
    md("import sys\nsys.stdout.write(str(sum(map(int, input().split()))))\n"),
    SUM_STDIO,
)
case(F, "trailing_spaces_and_blank_lines", md("print(sum(map(int, input().split())), end=' \\n\\n\\n')\n"), SUM_STDIO)
case(
    F,
    "lines_one_per_token",
    md("xs = input().split()\nfor x in xs:\n    print(x)\n"),
    {"inputs": ["1 2 3\n"], "outputs": ["1 2 3\n"]},
)
case(F, "exit_after_print", md("import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)\n"), SUM_STDIO)
case(
    F,
    "input_without_trailing_newline",
    md("print(sum(map(int, input().split())))\n"),
    {"inputs": ["4 5"], "outputs": ["9"]},
)

# ------------------------------------------------------------------ benchmark-shaped tests

F = "benchmark-shaped tests"
HE_PROMPT = (
    'from typing import List\n\n\ndef evens(xs: List[int]) -> List[int]:\n    """Even numbers of xs, in order."""\n'
)
HE_TESTS = {
    "setup": HE_PROMPT,
    "asserts": [
        "def check(candidate):\n    assert candidate([1, 2, 3, 4]) == [2, 4]\n    assert candidate([]) == []\n"
        "    assert list(candidate([6])) == [6]\n\ncheck(evens)"
    ],
}
case(
    F,
    "humaneval_check_chatty_with_helper",
    md(
        "from typing import List\n\ndef _is_even(x):\n    return x % 2 == 0\n\n"
        "def evens(xs: List[int]) -> List[int]:\n    out = [x for x in xs if _is_even(x)]\n"
        "    print('evens ->', out)\n    return out\n"
    ),
    HE_TESTS,
    wrong=md("def evens(xs):\n    return [x for x in xs if x % 2]\n"),
)
case(
    F,
    "humaneval_body_only_completion",
    "```python\n    return [x for x in xs if x % 2 == 0]\n```",
    HE_TESTS,
    limit="a response that is only the body of the prompt's function (an indented block) is dedented and runs "
    "as a module, where `return` is outside a function: the program must define the function, as the "
    "prompt's stub is the test's setup and not joined to the response",
)
case(
    F,
    "mbpp_with_test_imports",
    md("import math\n\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b)\n"),
    {"setup": "import math", "asserts": ["assert math.isclose(hyp(3, 4), 5.0)", "assert hyp(5, 12) == 13"]},
)
case(
    F,
    "leetcode_block",
    md(
        "from typing import List\n\nclass Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
        "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return [seen[target - x], i]\n            seen[x] = i\n        return []\n"
    ),
    {
        "setup": "from typing import *",
        "asserts": [
            "my_solution = Solution()\nassert my_solution.twoSum([2, 7, 11, 15], 9) == [0, 1]\n"
            "assert sorted(my_solution.twoSum([3, 2, 4], 6)) == [1, 2]"
        ],
    },
)
