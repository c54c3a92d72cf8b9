"""Honest stdin/stdout programs that must pass (issue 24, items 7 and 8): a program that ends
itself with ``os._exit(0)`` after flushing its output, and a program whose test brings an
input larger than what the program itself may write. The judged-mode counterparts (where
finishing must be proven) must keep failing."""

from __future__ import annotations

import pytest
from sandbox_available import needs_sandbox

from iprime.verifiers import SandboxLimits, verify_code_detailed

TIMEOUT = 5.0


def py(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


SUM_TESTS = {"inputs": ["1 2\n", "10 20\n"], "outputs": ["3\n", "30\n"]}

# ------------------------------------------------------------------ item 7: how a program ends

# Right programs that end themselves after flushing what they printed: exit status 0 and the
# right output pass in stdin/stdout mode.
ENDS_ITSELF = {
    "print_flush_os_exit": (
        "import os, sys\na, b = map(int, input().split())\nprint(a + b)\nsys.stdout.flush()\nos._exit(0)"
    ),
    "print_flush_kw_os_exit": "import os\na, b = map(int, input().split())\nprint(a + b, flush=True)\nos._exit(0)",
    "os_write_os_exit": (
        "import os\na, b = map(int, os.read(0, 100).split())\nos.write(1, b'%d\\n' % (a + b))\nos._exit(0)"
    ),
    "main_guard_os_exit": (
        "import os, sys\ndef main():\n    a, b = map(int, sys.stdin.readline().split())\n"
        "    sys.stdout.write(str(a + b) + '\\n')\n    sys.stdout.flush()\n    os._exit(0)\n"
        "if __name__ == '__main__':\n    main()"
    ),
    # Competitive programmers run main in a thread with a big stack, then end the process.
    "thread_os_exit": (
        "import os, sys, threading\nthreading.stack_size(1 << 26)\nsys.setrecursionlimit(10 ** 6)\n"
        "def main():\n    a, b = map(int, input().split())\n    print(a + b, flush=True)\n    os._exit(0)\n"
        "t = threading.Thread(target=main)\nt.start()\nt.join()"
    ),
    "sys_exit_0": "import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)",
    "sys_exit_none": "import sys\nprint(sum(map(int, input().split())))\nsys.exit()",
    "builtin_exit": "print(sum(map(int, input().split())))\nexit()",
    "raise_system_exit": "print(sum(map(int, input().split())))\nraise SystemExit",
}


@needs_sandbox
class TestStdioProgramThatEndsItself:
    @pytest.mark.parametrize("name", sorted(ENDS_ITSELF))
    def test_passes(self, name: str) -> None:
        result = verify_code_detailed(py(ENDS_ITSELF[name]), SUM_TESTS, timeout_s=TIMEOUT)
        assert result.score == 1.0, result.reason

    @pytest.mark.parametrize(
        "code",
        [
            # The right output, then a failure status: a runtime error, as on a judge.
            "import os\nprint(sum(map(int, input().split())), flush=True)\nos._exit(1)",
            "import sys\nprint(sum(map(int, input().split())))\nsys.exit(3)",
            # Exit status 0 proves nothing about the output: a wrong answer stays wrong.
            "import os\nprint(0, flush=True)\nos._exit(0)",
            # Printed but never flushed: CPython drops its buffer at os._exit (so would a real judge).
            "import os\nprint(sum(map(int, input().split())))\nos._exit(0)",
        ],
    )
    def test_still_fails(self, code: str) -> None:
        assert verify_code_detailed(py(code), SUM_TESTS, timeout_s=TIMEOUT).score == 0.0


@needs_sandbox
class TestJudgedModeStillNeedsFinishing:
    """Where the sandbox evaluates a call, a process that ends before returning proves nothing."""

    @pytest.mark.parametrize(
        "code",
        [
            "import os\ndef add(a, b):\n    os._exit(0)",
            "import os, sys\ndef add(a, b):\n    print(a + b)\n    sys.stdout.flush()\n    os._exit(0)",
            "def add(a, b):\n    raise SystemExit(0)",
        ],
    )
    @pytest.mark.parametrize(
        "tests",
        [
            {"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]},
            {"setup": "", "asserts": ["assert add(1, 2) == 3"]},
            # An assert no pattern judges on the host: the judge process runs it.
            {"setup": "", "asserts": ["assert [add(1, 2)][0] == 3 or add(0, 0) == 99"]},
        ],
    )
    def test_ending_early_fails(self, code: str, tests: dict) -> None:
        assert verify_code_detailed(py(code), tests, timeout_s=TIMEOUT).score == 0.0


# ------------------------------------------------------------------ item 8: inputs the test brings

SMALL = SandboxLimits(file_size_bytes=1 << 20, tmpfs_bytes=2 << 20)
NUMBERS = 700_000  # "1234567 " * 700k: 5.6 MB, over both of SMALL's limits


def big_input(n: int = NUMBERS) -> tuple[str, str]:
    return "1234567 " * n + "\n", f"{1234567 * n}\n"


READERS = {
    "stdin_read": "import sys\nprint(sum(map(int, sys.stdin.read().split())))",
    "buffer_read": "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))",
    # The whole input in one read, sized by fstat: stdin is a regular file, as on a judge.
    "fstat_read": "import os\nprint(sum(map(int, os.read(0, os.fstat(0).st_size).split())))",
    "open_0": "print(sum(map(int, open(0).read().split())))",
    "input_line": "print(sum(map(int, input().split())))",
    # The program may still write up to its own limits while reading a big input.
    "writes_its_own_file": (
        "import sys\ndata = sys.stdin.buffer.read()\n"
        "with open('scratch.bin', 'wb') as fh:\n    fh.write(b'x' * ((1 << 20) - 4096))\n"
        "print(sum(map(int, data.split())))"
    ),
}


@needs_sandbox
class TestInputsLargerThanTheProgramsLimits:
    @pytest.mark.parametrize("name", sorted(READERS))
    def test_right_program_passes(self, name: str) -> None:
        text, expected = big_input()
        tests = {"inputs": [text, "5 6\n"], "outputs": [expected, "11\n"]}
        result = verify_code_detailed(py(READERS[name]), tests, timeout_s=10.0, limits=SMALL)
        assert result.score == 1.0, result.reason

    def test_several_big_inputs(self) -> None:
        pairs = [big_input(NUMBERS - k) for k in range(3)]
        tests = {"inputs": [p[0] for p in pairs], "outputs": [p[1] for p in pairs]}
        result = verify_code_detailed(py(READERS["buffer_read"]), tests, timeout_s=10.0, limits=SMALL)
        assert result.score == 1.0, result.reason

    def test_default_limits_20_mb_input(self) -> None:
        text, expected = big_input(2_600_000)  # 20.8 MB: over the default 16 MiB file size limit
        tests = {"inputs": [text], "outputs": [expected]}
        result = verify_code_detailed(py(READERS["buffer_read"]), tests, timeout_s=10.0)
        assert result.score == 1.0, result.reason

    def test_input_cannot_be_changed_by_the_program(self) -> None:
        # stdin is read-only (sealed): a program cannot rewrite its input.
        code = (
            "import os\ntry:\n    os.write(0, b'9')\n    print('wrote')\nexcept OSError:\n"
            "    print(os.read(0, 10).decode().strip())"
        )
        result = verify_code_detailed(py(code), {"inputs": ["ab\n"], "outputs": ["ab\n"]}, timeout_s=TIMEOUT)
        assert result.score == 1.0, result.reason

    def test_the_programs_own_writes_stay_limited(self) -> None:
        code = "import sys\nsys.stdin.read()\nwith open('f', 'wb') as fh:\n    fh.write(b'x' * (2 << 20))\nprint(1)"
        text, _ = big_input()
        result = verify_code_detailed(py(code), {"inputs": [text], "outputs": ["1\n"]}, timeout_s=10.0, limits=SMALL)
        assert result.score == 0.0 and "File too large" in result.reason
