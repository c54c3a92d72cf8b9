"""verify_code: test formats (parse_tests), host-judged and judged asserts, call-based tests,
reward-hack resistance and sandbox containment. Attacks from the issue-14 audit: test_sandbox_attacks.py."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from iprime.verifiers import SandboxLimits, SandboxUnavailable, verify_code, verify_code_detailed
from iprime.verifiers.code import CALL_PRELUDE, call_output_matches, parse_tests, plan_assert
from iprime.verifiers.extract import extract_code
from iprime.verifiers.rows import LEETCODE_PRELUDE, apps_tests, humaneval_tests, mbpp_tests
from iprime.verifiers.sandbox import _UID_RANGE, check_isolation_available

try:
    check_isolation_available("namespaces")
    HAVE_NAMESPACES = True
except Exception:  # noqa: BLE001 - any reason means the isolation tests cannot run
    HAVE_NAMESPACES = False

needs_sandbox = pytest.mark.skipif(not HAVE_NAMESPACES, reason="namespace sandbox needs root + unshare")

TIMEOUT = 3.0
# Python startup, namespace setup and cleanup on top of the sample's limit.
SLACK = 4.0

ADD_TESTS = {"setup": "", "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
RIGHT_ADD = "def add(a, b):\n    return a + b"
DATA = Path(__file__).resolve().parents[1] / "src" / "iprime" / "eval" / "data"


def py(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


def timed(response: str, tests: dict = ADD_TESTS, **kw):
    start = time.monotonic()
    result = verify_code_detailed(response, tests, timeout_s=TIMEOUT, **kw)
    return result, time.monotonic() - start


def leftover_sandbox_processes() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as fh:
                    status = fh.read()
                if "\nState:\tZ" in status:
                    continue  # dead already: a zombie waiting for init to reap it
                uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
            except (OSError, StopIteration, ValueError):
                continue
            if _UID_RANGE[0] <= uid <= _UID_RANGE[1]:
                pids.append(int(entry))
    return pids


def assert_host_healthy() -> None:
    assert subprocess.run(["true"], timeout=10).returncode == 0
    assert verify_code(py("def add(a, b):\n    return a + b"), ADD_TESTS, timeout_s=TIMEOUT) == 1.0
    deadline = time.monotonic() + 3.0  # killed processes (and their zombies) take a moment on a busy machine
    while leftover_sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftover_sandbox_processes() == []


# ------------------------------------------------------------------ basics


def test_extract_code_prefers_last_python_block() -> None:
    text = "```python\na = 1\n```\ntext\n```\nb = 2\n```\n```py\nc = 3\n```"
    assert extract_code(text) == "c = 3\n"
    assert extract_code("```\nonly = 1\n```") == "only = 1\n"
    assert extract_code("no code here") is None
    assert extract_code("```python\nunterminated") is None


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
    assert verify_code_detailed("def add(a, b): return a + b", ADD_TESTS).reason == "no code block found"
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


# --------------------------------------------------------------- containment


@needs_sandbox
def test_infinite_loop_times_out() -> None:
    result, elapsed = timed(py("def add(a, b):\n    while True:\n        pass"))
    assert result.score == 0.0 and "timed out" in result.reason
    assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + SLACK
    assert_host_healthy()


@needs_sandbox
def test_infinite_loop_at_import_times_out() -> None:
    result, elapsed = timed(py("while True:\n    pass"))
    assert result.score == 0.0 and "timed out" in result.reason
    assert elapsed <= TIMEOUT + SLACK
    assert_host_healthy()


@needs_sandbox
@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "import os\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass",
    ],
)
def test_fork_bomb_is_contained(code: str) -> None:
    result, elapsed = timed(py(code))
    assert result.score == 0.0
    assert elapsed <= TIMEOUT + SLACK
    assert_host_healthy()


@needs_sandbox
@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(8 * 1024 ** 3)\ndef add(a, b):\n    return a + b",
        "def add(a, b):\n    chunks = []\n    while True:\n        chunks.append(bytearray(10 ** 7))",
    ],
)
def test_memory_hog_fails(code: str) -> None:
    result, elapsed = timed(py(code))
    # Filling 1 GiB page by page can outlast the 3 s limit on a loaded
    # machine; either way the hog is stopped and scores 0.
    assert result.score == 0.0 and ("MemoryError" in result.reason or "timed out" in result.reason), result.reason
    assert elapsed <= TIMEOUT + SLACK
    assert_host_healthy()


@needs_sandbox
@pytest.mark.parametrize(
    "code",
    [
        "print('x' * 10 ** 9)\ndef add(a, b):\n    return a + b",
        "import sys\nfor _ in range(10 ** 6):\n    sys.stdout.write('x' * 1000)\ndef add(a, b):\n    return a + b",
    ],
)
def test_gigabyte_print_fails(code: str) -> None:
    result, elapsed = timed(py(code))
    assert result.score == 0.0
    assert elapsed <= TIMEOUT + SLACK
    assert_host_healthy()


@needs_sandbox
def test_gigabyte_print_in_stdio_mode_hits_file_limit() -> None:
    tests = {"inputs": [""], "outputs": ["1"]}
    code = "import sys\nfor _ in range(10 ** 6):\n    sys.stdout.write('x' * 1000)"
    start = time.monotonic()
    result = verify_code_detailed(py(code), tests, timeout_s=TIMEOUT, limits=SandboxLimits(file_size_bytes=1 << 20))
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead.
    assert result.score == 0.0 and "File too large" in result.reason
    assert time.monotonic() - start <= TIMEOUT + SLACK


@needs_sandbox
@pytest.mark.parametrize("correct", [False, True])
def test_killing_the_parent_does_not_reach_the_caller(correct: bool) -> None:
    # getppid() is 0 for the sandbox's init (its parent is outside the PID
    # namespace), so kill(0) hits its own process group; in a test process
    # it is the sandbox init, which ignores signals sent from inside its
    # namespace. The caller's pid does not exist in there.
    body = "return a + b" if correct else "return None"
    code = (
        "import os, signal\n"
        f"for pid in (os.getppid(), {os.getpid()}, 1, -1):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        "def add(a, b):\n"
        "    for pid in (os.getppid(), -1):\n"
        "        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n"
        f"    {body}"
    )
    result, elapsed = timed(py(code))
    # A wrong solution scores 0; a correct one is still scored correctly:
    # the kill attempts neither crashed the verifier nor reached the caller.
    assert result.score == (1.0 if correct else 0.0), result.reason
    assert elapsed <= TIMEOUT + SLACK
    assert_host_healthy()  # and we are still running


@needs_sandbox
def test_cannot_delete_or_write_files_outside_its_directory(tmp_path) -> None:
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    os.chmod(tmp_path, 0o777)  # even a world-writable directory is out of reach
    probe = os.path.join(os.path.dirname(__file__), ".sandbox_write_probe")
    code = (
        "import os, shutil\n"
        f"for f in ({str(sentinel)!r},):\n"
        "    try:\n        os.remove(f)\n    except OSError:\n        pass\n"
        f"shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\n"
        f"open({probe!r}, 'w').write('x')\n"
        "def add(a, b):\n    return a + b"
    )
    try:
        result, elapsed = timed(py(code))
        assert not os.path.exists(probe), "sandbox wrote into the repository"
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    assert sentinel.read_text() == "keep me"
    # denied either way: read-only where the path is visible, absent where it lies under a
    # private tmpfs (a checkout under /tmp)
    assert result.score == 0.0 and ("PermissionError" in result.reason or "FileNotFoundError" in result.reason)
    assert elapsed <= TIMEOUT + SLACK


@needs_sandbox
def test_can_write_in_its_own_directory_and_tmp() -> None:
    code = (
        "open('scratch.txt', 'w').write('ok')\n"
        "open('/tmp/scratch.txt', 'w').write('ok')\n"
        "def add(a, b):\n    return a + b"
    )
    assert verify_code(py(code), ADD_TESTS, timeout_s=TIMEOUT) == 1.0
    assert not os.path.exists("/tmp/scratch.txt")  # the sandbox's /tmp is private


@needs_sandbox
def test_no_network_even_to_localhost() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        code = (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
            "def add(a, b):\n    return a + b"
        )
        result, elapsed = timed(py(code))
        assert result.score == 0.0 and "OSError" in result.reason or "Error" in result.reason
        assert elapsed <= TIMEOUT + SLACK
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


@needs_sandbox
def test_no_inherited_secrets(monkeypatch) -> None:
    monkeypatch.setenv("IPRIME_TEST_SECRET", "hunter2")
    code = "import os\nassert 'IPRIME_TEST_SECRET' not in os.environ\ndef add(a, b):\n    return a + b"
    assert verify_code(py(code), ADD_TESTS) == 1.0
    code = (
        "import os\nassert not os.path.exists('/root/.bashrc') or not os.access('/root', os.R_OK)\n"
        "def add(a, b):\n    return a + b"
    )
    assert verify_code(py(code), ADD_TESTS) == 1.0


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
        ("assert f(1) is None", ["bool(f(1) is None)"], [True], True),  # the sandbox says: no secret
        ("assert f(1) in (2, 3)", ["f(1)"], [3], True),
        ("assert f(1) == (1, 2)", ["f(1)"], [[1, 2]], False),  # a list is not a tuple, as in Python
        ("assert set(f((3, 4), (4, 5))) == set((4, 5))", ["f((3, 4), (4, 5))"], [[5, 4]], True),
        ("assert sorted(f()) == [1, 2]", ["f()"], [(2, 1)], True),
        ("assert math.isclose(v(10), 4188.79, rel_tol=0.001)", ["v(10)"], [4188.790204786391], True),
        ("assert math.isclose(v(10), 4188.79, rel_tol=0.001)", ["v(10)"], [4000.0], False),
        ("assert abs(f(1) - 0.5) < 1e-06", ["f(1)"], [0.5000001], True),
        ("assert f(1) + f(2) == 5", ["f(1)", "f(2)"], [2, 3], True),
        ("assert f(1)[0] == 2", ["f(1)[0]"], [2], True),
        ("assert is_prime(7)", ["bool(is_prime(7))"], [True], True),
        ("assert is_prime(7)", ["bool(is_prime(7))"], [1], False),  # only a real bool counts
        ("assert not is_prime(4)", ["bool(is_prime(4))"], [False], True),
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
        ("assert f(x) == y", ""),  # no constant side: the judge runs it
        ("assert f(1) == g(2)", ""),
        ("assert f(1) == 1 == g(1)", ""),  # chained
        ("x = f(1)\nassert x == 1", ""),  # more than one statement
        ("def check(c):\n    assert c(1) == 2\ncheck(f)", ""),
        ("assert check(f(1), 5)", ""),  # the constant is an argument of a function call
        ("assert verify(3)", "def verify(n):\n    return n == 3"),  # the setup's own checker
        ("assert helper(3)", "from math import *"),  # maybe the setup's (star import)
        ("assert f(1) == 2 or f(1) == 3", ""),
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


@needs_sandbox
def test_isolation_options() -> None:
    with pytest.raises(SandboxUnavailable, match="non-root"):
        verify_code(py(RIGHT_ADD), ADD_TESTS, isolation="userns")  # as root: 'namespaces'
    with pytest.raises(ValueError, match="unknown sandbox isolation"):
        verify_code(py(RIGHT_ADD), ADD_TESTS, isolation="docker")
    assert verify_code(py(RIGHT_ADD), ADD_TESTS, timeout_s=TIMEOUT, isolation="namespaces") == 1.0
