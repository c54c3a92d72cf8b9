"""The code sandbox (:mod:`iprime.verifiers.sandbox`): containment of hostile programs
(timeouts, fork bombs, memory and output hogs, signals, files, network, secrets), the
isolation options, and the layout the runner relies on. Judging (what a test's verdict is):
test_verifiers_code.py; the issue-14 attacks: test_sandbox_attacks.py."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sandbox_available import needs_sandbox

import iprime
from iprime.verifiers import SandboxLimits, SandboxUnavailable, verify_code, verify_code_detailed
from iprime.verifiers.sandbox import runner
from iprime.verifiers.sandbox.host import _RUNNER, _UID_RANGE

TIMEOUT = 3.0
# Python startup, namespace setup and cleanup on top of the sample's limit.
SLACK = 4.0

ADD_TESTS = {"setup": "", "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
RIGHT_ADD = "def add(a, b):\n    return a + b"


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


# ------------------------------------------------------------------ layout


def test_the_runner_is_a_script_beside_the_host_that_hides_the_iprime_package() -> None:
    """The host starts the runner by path; the runner hides the directory of the installed
    iprime package (its benchmark data holds answers), found from its own location."""
    assert _RUNNER.is_file() and _RUNNER == Path(runner.__file__)
    assert runner.iprime_package_dir() == os.path.dirname(os.path.realpath(iprime.__file__))


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


@needs_sandbox
def test_isolation_options() -> None:
    with pytest.raises(SandboxUnavailable, match="non-root"):
        verify_code(py(RIGHT_ADD), ADD_TESTS, isolation="userns")  # as root: 'namespaces'
    with pytest.raises(ValueError, match="unknown sandbox isolation"):
        verify_code(py(RIGHT_ADD), ADD_TESTS, isolation="docker")
    assert verify_code(py(RIGHT_ADD), ADD_TESTS, timeout_s=TIMEOUT, isolation="namespaces") == 1.0
