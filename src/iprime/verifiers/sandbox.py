"""Run untrusted Python code and its tests in an isolated child process.

Isolation ``"namespaces"`` (the default; needs root and util-linux's
``unshare``, as on the project's machines):

* ``unshare --net --pid --mount --fork --kill-child --mount-proc``: no
  network at all (a fresh network namespace has only a down loopback, so
  even 127.0.0.1 is unreachable), its own PID space (it cannot see or signal
  the trainer; when its init exits, the kernel kills everything it left
  behind) and its own mount table;
* /tmp, /var/tmp, /dev/shm and /run/lock are covered by small private tmpfs
  mounts, so the only lasting place it can write to is its own working
  directory (a fresh temp dir, deleted afterwards);
* it then runs as a fresh unprivileged uid/gid picked at random from a
  range no real user has, with no supplementary groups. Root ignores
  RLIMIT_NPROC; a non-root uid does not, and a uid of its own means the
  process cap counts only this sandbox's processes (a fork bomb in one
  sample cannot starve another). Every file on the host not writable by
  "others" is read-only to it;
* rlimits: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file size
  (RLIMIT_FSIZE), processes (RLIMIT_NPROC), open files, no core dumps;
* the host side enforces a wall-clock limit, reads stdout/stderr with a cap
  (more output kills the run), gives it a minimal environment (no inherited
  secrets), puts it in its own session, and on timeout or at the end kills
  its process group and then every process still owned by its uid.

Isolation ``"rlimits"`` (opt-in, for non-root development machines): the
same rlimits, session, environment, working directory and output cap, but
no namespaces and no uid change — so no network isolation, RLIMIT_NPROC is
left unset (it would count all of the caller's processes), and the code can
write wherever the caller can. Never use it for training on untrusted
output.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "SandboxLimits",
    "SandboxError",
    "SandboxUnavailable",
    "TestOutcome",
    "SandboxRun",
    "run_tests",
    "check_isolation_available",
]

_RUNNER = Path(__file__).with_name("_sandbox_runner.py")
_PRIVATE_DIRS = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]
# Sandbox uids/gids are drawn from here: far above any real account, so the
# sandbox owns nothing on the host and two concurrent sandboxes (almost
# surely) get different ids. The kernel accepts any 32-bit id for setuid.
_UID_RANGE = (1_000_000, 1_999_999)
_MINIMAL_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    # One thread each: threads count against RLIMIT_NPROC and RLIMIT_AS.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

Isolation = Literal["namespaces", "rlimits"]


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the code under test)."""


class SandboxUnavailable(SandboxError):
    """The requested isolation cannot be set up on this machine."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run (all tests of one sample).

    ``cpu_s`` defaults to the wall limit rounded up plus one second; it
    applies per process, the wall limit to the whole run.
    """

    wall_s: float = 10.0
    cpu_s: float | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    max_processes: int = 32
    max_open_files: int = 256
    output_bytes: int = 1 << 20
    tmpfs_bytes: int = 16 << 20

    def effective_cpu_s(self) -> int:
        return int(self.cpu_s if self.cpu_s is not None else math.ceil(self.wall_s) + 1)


@dataclass(frozen=True)
class TestOutcome:
    index: int
    passed: bool
    reason: str


@dataclass
class SandboxRun:
    """Everything the host observed about one sandboxed run."""

    tests: list[TestOutcome] = field(default_factory=list)
    error: str = ""  # compile/setup/solution error that prevented all tests
    timed_out: bool = False
    output_limit_exceeded: bool = False
    completed: bool = False  # the runner reached the end of its job
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    elapsed_s: float = 0.0
    outputs: list[str | None] = field(default_factory=list)  # stdio mode: stdout per input


def check_isolation_available(isolation: Isolation) -> None:
    """Raise :class:`SandboxUnavailable` with the reason if ``isolation`` cannot work."""
    if isolation == "rlimits":
        return
    if isolation != "namespaces":
        raise ValueError(f"unknown isolation {isolation!r}; use 'namespaces' or 'rlimits'")
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "isolation='namespaces' needs root (to create namespaces and switch to an unprivileged uid); "
            "run as root, or pass isolation='rlimits' for a weaker, development-only sandbox"
        )
    if shutil.which("unshare") is None:
        raise SandboxUnavailable("isolation='namespaces' needs the 'unshare' command (util-linux)")


def _kill_uid(uid: int) -> int:
    """SIGKILL every process whose real uid is ``uid``; returns how many were found.

    The uid belongs to this sandbox alone, so this reaches processes that
    left the process group (``setsid``) without touching anything else.
    """
    found = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found += 1
                            os.kill(int(entry), signal.SIGKILL)
                        break
        except (OSError, ValueError):
            continue  # the process exited while we looked
    return found


def _reap_uid(uid: int, timeout_s: float = 5.0) -> None:
    """Kill the uid's processes until none is left (dying ones take a moment)."""
    deadline = time.monotonic() + timeout_s
    while _kill_uid(uid) and time.monotonic() < deadline:
        time.sleep(0.005)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_tests(
    code: str,
    *,
    setup: str = "",
    asserts: list[str] | None = None,
    stdin_inputs: list[str] | None = None,
    limits: SandboxLimits = SandboxLimits(),
    test_timeout_s: float | None = None,
    stop_on_failure: bool = True,
    isolation: Isolation = "namespaces",
) -> SandboxRun:
    """Run ``code`` against assert tests or stdin inputs inside the sandbox.

    Exactly one of ``asserts`` or ``stdin_inputs`` must be given:

    * ``asserts``: Python snippets; ``setup`` then ``code`` run once, then
      each snippet runs in its own forked process and passes if it finishes.
    * ``stdin_inputs``: ``code`` runs as ``__main__`` once per input with that
      text on stdin; its stdout comes back in ``SandboxRun.outputs[i]``
      (``None`` if it never ran) for the caller to compare.

    ``stop_on_failure`` skips the remaining tests after the first failure.
    ``test_timeout_s`` bounds each test (default: the whole wall limit).
    Raises :class:`SandboxError` only when the sandbox itself cannot start;
    anything the code does is reported in the returned :class:`SandboxRun`.
    """
    if (asserts is None) == (stdin_inputs is None):
        raise ValueError("give exactly one of asserts= or stdin_inputs=")
    check_isolation_available(isolation)
    return _run(code, setup, asserts, stdin_inputs, limits, test_timeout_s, stop_on_failure, isolation)


def _run(code, setup, asserts, stdin_inputs, limits, test_timeout_s, stop_on_failure, isolation) -> SandboxRun:
    start = time.monotonic()
    token = secrets.token_hex(16)
    uid = random.SystemRandom().randint(*_UID_RANGE)
    workdir = tempfile.mkdtemp(prefix="iprime-sandbox-")
    outputs: list[str | None] = []
    result_r, result_w = os.pipe()
    try:
        job = {
            "result_fd": result_w,
            "token": token,
            "mode": "asserts" if asserts is not None else "stdio",
            "setup": setup,
            "code": code,
            "asserts": list(asserts or []),
            "num_inputs": len(stdin_inputs or []),
            "deadline_s": limits.wall_s,
            "test_timeout_s": test_timeout_s if test_timeout_s is not None else limits.wall_s,
            "stop_on_failure": stop_on_failure,
            "limits": {
                "cpu_s": limits.effective_cpu_s(),
                "memory_bytes": limits.memory_bytes,
                "file_size_bytes": limits.file_size_bytes,
                "max_open_files": limits.max_open_files,
                "max_processes": limits.max_processes if isolation == "namespaces" else None,
            },
            "boot": {
                "isolation": isolation,
                "uid": uid,
                "gid": uid,
                "private_dirs": _PRIVATE_DIRS,
                "tmpfs_bytes": limits.tmpfs_bytes,
            },
        }
        job_path = os.path.join(workdir, "job.json")
        # Root-only job file: the runner reads and deletes it before
        # dropping privileges, so the code never sees the token.
        fd = os.open(job_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(job, fh)
        for index, text in enumerate(stdin_inputs or []):
            with open(os.path.join(workdir, f"stdin_{index}.txt"), "w") as fh:
                fh.write(text)
        if isolation == "namespaces":
            os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
            cmd = [
                "unshare",
                "--net",
                "--pid",
                "--mount",
                "--fork",
                "--kill-child",
                "--mount-proc",
                sys.executable,
                "-I",
                str(_RUNNER),
            ]
        else:
            cmd = [sys.executable, "-I", str(_RUNNER)]
        fds, result_r, result_w = (result_r, result_w), -1, -1  # _supervise owns them now
        run = _supervise(cmd, workdir, token, limits, uid if isolation == "namespaces" else None, *fds)
        for index in range(len(stdin_inputs or [])):
            path = os.path.join(workdir, f"stdout_{index}.txt")
            try:
                with open(path, "rb") as fh:
                    outputs.append(fh.read(limits.file_size_bytes + 1).decode(errors="replace"))
            except FileNotFoundError:
                outputs.append(None)
        run.outputs = outputs
        run.elapsed_s = time.monotonic() - start
        return run
    finally:
        for fd in (result_r, result_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(
    cmd: list[str], workdir: str, token: str, limits: SandboxLimits, uid: int | None, result_r: int, result_w: int
) -> SandboxRun:
    run = SandboxRun()
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=dict(_MINIMAL_ENV),  # nothing inherited: no tokens, keys or proxies
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(result_w,),  # the report pipe; its number is in the job file
            start_new_session=True,  # own session and process group: killpg reaches it all
            close_fds=True,
        )
    except BaseException:
        os.close(result_r)
        raise
    finally:
        os.close(result_w)  # only the child writes to it; EOF tells us it is gone
    deadline = time.monotonic() + limits.wall_s + _STARTUP_ALLOWANCE_S
    sel = selectors.DefaultSelector()
    buffers = {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(result_r, selectors.EVENT_READ, "result")
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                run.timed_out = True
                break
            for key, _ in sel.select(timeout=remaining):
                fileobj = key.fileobj
                fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
                data = os.read(fd, 65536)
                if not data:
                    sel.unregister(fileobj)
                    continue
                buffers[key.data] += data
            if (
                len(buffers["stdout"]) + len(buffers["stderr"]) > limits.output_bytes
                or len(buffers["result"]) > 4 << 20
            ):
                run.output_limit_exceeded = True
                break
    finally:
        sel.close()
        _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL'd above
            proc.kill()
            proc.wait(timeout=10)
        if uid is not None:
            _reap_uid(uid)  # anything forked while we were killing, until it is gone
        os.close(result_r)
        proc.stdout.close()
        proc.stderr.close()
    run.exit_code = proc.returncode
    run.stdout = bytes(buffers["stdout"][: limits.output_bytes])
    run.stderr = bytes(buffers["stderr"][: limits.output_bytes])
    _parse_events(run, bytes(buffers["result"]), token)
    return run


# Python startup and the privileged boot happen inside the wall clock of the
# child but are not the candidate's fault; allow for them on top of wall_s.
_STARTUP_ALLOWANCE_S = 2.0


def _parse_events(run: SandboxRun, data: bytes, token: str) -> None:
    started = False
    for line in data.decode(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict) or event.get("token") != token:
            continue  # forged or corrupted line
        kind = event.get("event")
        if kind == "started":
            started = True
        elif kind == "boot_error":
            raise SandboxError(f"sandbox failed to start: {event.get('reason')}")
        elif kind == "test":
            run.tests.append(TestOutcome(int(event["index"]), bool(event["passed"]), str(event.get("reason", ""))))
        elif kind in ("compile_error", "setup_error", "code_error", "internal_error"):
            run.error = f"{kind.replace('_', ' ')}: {event.get('reason', '')}"
        elif kind == "done":
            run.completed = True
    if not started and not run.timed_out and not run.output_limit_exceeded:
        raise SandboxError(
            f"sandbox did not start (exit code {run.exit_code}): {run.stderr.decode(errors='replace')[-2000:]}"
        )
