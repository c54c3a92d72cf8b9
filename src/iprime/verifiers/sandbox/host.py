"""The host side of the sandbox: start the runner, feed it its job, read what comes back.

:func:`run_tests` starts :mod:`iprime.verifiers.sandbox.runner` and reads what comes back
on three kinds of channel: the runner's stdout/stderr (capped), the *report* pipe (events
of the runner itself: started, verdicts of judged tests, done), and the *values* pipe
(what the candidate's code computed: call results as plain data, program outputs). The
host never opens a path the sandbox could have touched: the job goes in on an unnamed
file, results come back on pipes, and in the namespace modes the sandbox writes only to a
tmpfs that vanishes with its mount namespace. The caller (:mod:`iprime.verifiers.code`)
compares the values with the expected ones, which never enter the sandbox. See
``docs/security.md`` for the threat model.

Isolation (``isolation=`` or the ``IPRIME_SANDBOX`` environment variable):

* ``"auto"`` (default): ``"namespaces"`` as root, ``"userns"`` otherwise.
* ``"namespaces"`` (root): fresh network, PID, mount, IPC and UTS namespaces; a new root
  file system with only the system directories and the Python installation, read-only;
  a quota'd tmpfs as the only writable place; the candidate's code under a fresh random
  uid (the tests' judge under another), with rlimits, no new privileges, a fresh session
  keyring and a seccomp filter (no user namespaces, keyrings, ptrace...).
* ``"userns"`` (non-root): the same inside an unprivileged user namespace, where the
  sandbox processes run with no capabilities at all instead of under other uids. Needs a
  kernel that lets unprivileged users create user namespaces; otherwise
  :class:`SandboxUnavailable` says which setting forbids it.
* ``"rlimits"`` (explicit opt-in, warns): resource limits, a private working directory,
  a minimal environment, and the seccomp filter, nothing more: the code can read and
  write what the caller can and reach the network. For development only.
"""

from __future__ import annotations

import json
import math
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .runner import PlainDataError, encode_plain, loads_plain

__all__ = [
    "SandboxLimits",
    "SandboxError",
    "SandboxUnavailable",
    "InsecureSandboxWarning",
    "TestOutcome",
    "CallOutcome",
    "SandboxRun",
    "run_tests",
    "apply_values",
    "decode_call",
    "check_isolation_available",
    "resolve_isolation",
]

# Executed by path with ``python -I`` (its own directory is not on sys.path), so the runner
# stays one stdlib-only file.
_RUNNER = Path(__file__).with_name("runner.py")
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
ENV_VAR = "IPRIME_SANDBOX"

Isolation = Literal["auto", "namespaces", "userns", "rlimits"]
_ISOLATIONS = ("auto", "namespaces", "userns", "rlimits")


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the code under test)."""


class SandboxUnavailable(SandboxError):
    """The requested isolation cannot be set up on this machine.

    Raised before any sample is scored, by every entry point: a verifier that cannot
    isolate must refuse, never score everything 0.
    """


class InsecureSandboxWarning(UserWarning):
    """Code runs with ``isolation="rlimits"``: resource limits only, no isolation."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run (all tests of one sample).

    ``cpu_s`` defaults to the wall limit rounded up plus one second; it
    applies per process, the wall limit to the whole run. ``tmpfs_bytes`` and
    ``max_files`` are the quota of the sandbox's only writable file system
    (``/tmp``, also its working directory); ``file_size_bytes`` caps each file
    (and each program's stdout), ``result_bytes`` everything the code's values
    and outputs may send back.
    """

    wall_s: float = 10.0
    cpu_s: float | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    max_processes: int = 32
    max_open_files: int = 256
    output_bytes: int = 1 << 20
    tmpfs_bytes: int = 64 << 20
    max_files: int = 4096
    result_bytes: int = 64 << 20

    def effective_cpu_s(self) -> int:
        return int(self.cpu_s if self.cpu_s is not None else math.ceil(self.wall_s) + 1)


@dataclass(frozen=True)
class TestOutcome:
    """A judged test's verdict (from the judge process, relayed by the runner)."""

    index: int
    passed: bool
    reason: str


@dataclass(frozen=True)
class CallOutcome:
    """What one call-test evaluation sent back: the values (decoded plain data) or why not."""

    ok: bool
    values: list[Any] = field(default_factory=list)
    reason: str = ""


@dataclass
class SandboxRun:
    """Everything the host observed about one sandboxed run."""

    tests: list[TestOutcome] = field(default_factory=list)  # judged tests
    calls: dict[int, CallOutcome] = field(default_factory=dict)  # call tests, by index
    outputs: list[str | None] = field(default_factory=list)  # stdio mode: stdout per input (None: never ran)
    output_ok: list[bool] = field(default_factory=list)  # stdio mode: the program ended normally
    output_reasons: list[str] = field(default_factory=list)
    error: str = ""  # compile/setup/solution error that prevented all tests
    timed_out: bool = False
    output_limit_exceeded: bool = False
    completed: bool = False  # the runner reached the end of its job
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    elapsed_s: float = 0.0
    # With ``decode=False`` (run_checked): the values channel's raw bytes, left for the caller to
    # decode where that is bounded (:func:`apply_values`; iprime.verifiers.code does it in a
    # bounded process, iprime.verifiers.bounded); ``calls`` and ``outputs`` are then empty.
    values_data: bytes = field(default=b"", repr=False)


# ----------------------------------------------------------------------------- isolation


def resolve_isolation(isolation: str | None = None) -> str:
    """The concrete isolation for ``isolation`` (``None``: ``$IPRIME_SANDBOX``, else ``"auto"``)."""
    if isolation is None:
        isolation = os.environ.get(ENV_VAR, "").strip() or "auto"
    if isolation not in _ISOLATIONS:
        raise ValueError(f"unknown sandbox isolation {isolation!r} (from {ENV_VAR} or isolation=); use {_ISOLATIONS}")
    if isolation == "auto":
        return "namespaces" if os.geteuid() == 0 else "userns"
    return isolation


_PROBED: dict[tuple[str, int], str | None] = {}

_USERNS_HELP = (
    "Unprivileged user namespaces are off on this machine. They are restricted by "
    "kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 23.10 and later, AppArmor), "
    "kernel.unprivileged_userns_clone=0 (Debian before 11, some hardened kernels), "
    "user.max_user_namespaces=0 (RHEL/CentOS 7, hardened sysctl profiles), or a container's "
    "seccomp profile (Docker's default refuses unshare). Ask an administrator to allow them "
    "(or run as root, which uses isolation='namespaces'), or opt in to resource limits "
    "without isolation with IPRIME_SANDBOX=rlimits / isolation='rlimits' (development only: "
    "the code can then read your files and reach the network)"
)


def _userns_settings() -> str:
    found = []
    for path in (
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ):
        try:
            with open(path) as fh:
                found.append(f"{path[len('/proc/sys/') :].replace('/', '.')}={fh.read().strip()}")
        except OSError:
            continue
    return ", ".join(found) or "no user-namespace sysctls found"


def check_isolation_available(isolation: str | None = None) -> str:
    """Raise :class:`SandboxUnavailable` with the reason if ``isolation`` cannot work here.

    Returns the concrete isolation. The first check per process and isolation starts a
    tiny sandbox and runs a call in it (a fraction of a second), so a machine where the
    namespaces can be created but not used (a restricted user namespace, a masked
    ``/proc``) is refused here rather than failing every sample.
    """
    concrete = resolve_isolation(isolation)
    if concrete == "rlimits":
        who = "your"
        if os.geteuid() == 0:
            who = "a uid of no account's" if _usable_by_others() else "ROOT's (this Python is not usable by others)"
        warnings.warn(
            f"code sandbox isolation='rlimits': resource limits only. The code runs with {who} "
            "permissions and can read what they allow, write wherever they can and use the network; "
            "never use it on untrusted output such as a policy's (see docs/security.md)",
            InsecureSandboxWarning,
            stacklevel=3,
        )
        return concrete
    if concrete == "namespaces" and os.geteuid() != 0:
        raise SandboxUnavailable(
            "isolation='namespaces' needs root (to switch the code to unprivileged uids); as another "
            "user use isolation='userns' (the default, 'auto', picks it)"
        )
    if concrete == "userns" and os.geteuid() == 0:
        raise SandboxUnavailable(
            "isolation='userns' is for non-root users: as root the code would own root's files; "
            "use isolation='namespaces' (the default, 'auto', picks it)"
        )
    if shutil.which("unshare") is None:
        raise SandboxUnavailable(f"isolation={concrete!r} needs the 'unshare' command (util-linux)")
    key = (concrete, os.geteuid())
    if key not in _PROBED:
        _PROBED[key] = _probe(concrete)
    problem = _PROBED[key]
    if problem is not None:
        raise SandboxUnavailable(problem)
    return concrete


def _probe(isolation: str) -> str | None:
    """Start a sandbox and evaluate ``1 + 1`` in it; the reason it failed, or None."""
    try:
        run = _run(
            "",
            "",
            calls=[{"i": 0, "exprs": ["1 + 1"]}],
            stdin_inputs=None,
            judged=None,
            limits=SandboxLimits(wall_s=20.0),
            test_timeout_s=None,
            stop_on_failure=True,
            isolation=isolation,
        )
    except SandboxError as exc:
        problem = str(exc)
    except OSError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        outcome = run.calls.get(0)
        if outcome is not None and outcome.ok and outcome.values == [2]:
            return None
        problem = f"a test sandbox did not compute 1 + 1 ({outcome or run.error or 'no result'})"
    if isolation == "userns":
        return f"isolation='userns' does not work here: {problem[:600]}. {_USERNS_HELP} ({_userns_settings()})"
    return f"isolation={isolation!r} does not work here: {problem[:800]}"


# ----------------------------------------------------------------------------- processes


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
                    if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                        break  # already dead, waiting for its parent (or init) to reap it
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


def remove_tree(path: str) -> bool:
    """Delete ``path`` whatever its depth, width, modes or special files; True if it is gone.

    ``shutil.rmtree`` first; it recurses (RecursionError past ~1,000 levels) and stops at
    directories without permissions, so GNU ``chmod -R``/``rm -rf`` (fts, descriptor
    relative, no depth limit, never follow symlinks) finish the job. Never raises.
    """
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return True
    except (OSError, RecursionError, ValueError):
        pass
    if not os.path.lexists(path):
        return True
    for cmd in (["chmod", "-R", "u+rwx", "--", path], ["rm", "-rf", "--one-file-system", "--", path]):
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass
    gone = not os.path.lexists(path)
    if not gone:
        warnings.warn(f"could not delete the sandbox directory {path}", RuntimeWarning, stacklevel=2)
    return gone


# ----------------------------------------------------------------------------- running


def run_tests(
    code: str,
    *,
    setup: str = "",
    calls: list[dict] | None = None,
    stdin_inputs: list[str] | None = None,
    judged: list[str] | None = None,
    asserts: list[str] | None = None,
    limits: SandboxLimits = SandboxLimits(),
    test_timeout_s: float | None = None,
    stop_on_failure: bool = True,
    isolation: str | None = None,
) -> SandboxRun:
    """Run ``code`` against tests inside the sandbox.

    * ``calls``: host-judged tests, each ``{"i": index, "exprs": [src, ...]}`` (expressions
      evaluated in the code's namespace, in order) or ``{"i": index, "fn": name, "args":
      [...]}`` (``name``, or ``Solution().name``, called with ``args``). Each test runs in a
      forked process; its values come back in ``SandboxRun.calls[index]`` as plain data.
    * ``stdin_inputs``: the code runs as ``__main__`` once per input with that text on
      stdin; its stdout comes back in ``SandboxRun.outputs[i]``.
    * ``judged`` (``asserts`` is an older name): assert snippets run by a judge process
      that holds the test and never the candidate's code; verdicts in ``SandboxRun.tests``.

    ``calls`` and ``stdin_inputs`` exclude each other; ``judged`` combines with ``calls``.
    ``stop_on_failure`` skips the remaining judged tests after the first failure.
    ``test_timeout_s`` bounds each test (default: the whole wall limit).
    Raises :class:`SandboxUnavailable` when the isolation cannot work here and
    :class:`SandboxError` when the sandbox fails to start; anything the code does is
    reported in the returned :class:`SandboxRun`.
    """
    if asserts is not None:
        if judged is not None:
            raise ValueError("give judged= or its older name asserts=, not both")
        judged = asserts
    if calls is not None and stdin_inputs is not None:
        raise ValueError("calls= and stdin_inputs= exclude each other")
    if calls is None and stdin_inputs is None and judged is None:
        raise ValueError("give calls=, stdin_inputs= or judged=")
    concrete = check_isolation_available(isolation)
    return _run(code, setup, calls, stdin_inputs, judged, limits, test_timeout_s, stop_on_failure, concrete)


def run_checked(code: str, *, isolation: str, decode: bool = True, **kwargs) -> SandboxRun:
    """:func:`run_tests` for a caller that already ran :func:`check_isolation_available`.

    ``decode=False``: the values channel is not decoded here but returned raw in
    ``SandboxRun.values_data``, for :func:`apply_values` in a process whose time and memory
    are bounded (decoding untrusted values is the one unbounded step of the host's reading).
    """
    return _run(
        code,
        kwargs.get("setup", ""),
        kwargs.get("calls"),
        kwargs.get("stdin_inputs"),
        kwargs.get("judged"),
        kwargs.get("limits", SandboxLimits()),
        kwargs.get("test_timeout_s"),
        kwargs.get("stop_on_failure", True),
        isolation,
        decode,
    )


def _usable_by_others() -> bool:
    """Whether a uid of no account can run this interpreter (``rlimits`` as root needs it to
    drop to one; an installation under root's home, mode 0700, it cannot)."""
    for prefix in {sys.base_prefix, sys.prefix}:
        path = os.path.realpath(prefix)
        while True:
            try:
                if not os.stat(path).st_mode & 0o001:
                    return False
            except OSError:
                return False
            if path == "/":
                break
            path = os.path.dirname(path)
    return True


# Python startup and the privileged boot happen inside the wall clock of the
# child but are not the candidate's fault; allow for them on top of wall_s.
_STARTUP_ALLOWANCE_S = 2.0


def _temp_file(data: bytes) -> int:
    """An unnamed file holding ``data``, positioned at its start (no path to race on)."""
    fh = tempfile.TemporaryFile()
    fh.write(data)
    fh.flush()
    fh.seek(0)
    fd = os.dup(fh.fileno())
    fh.close()
    return fd


def _run(
    code, setup, calls, stdin_inputs, judged, limits, test_timeout_s, stop_on_failure, isolation, decode=True
) -> SandboxRun:
    start = time.monotonic()
    rng = random.SystemRandom()
    uid_solution = rng.randint(*_UID_RANGE)
    uid_judge = uid_solution + 1 if uid_solution < _UID_RANGE[1] else uid_solution - 1
    switch_uid = os.geteuid() == 0 and (isolation == "namespaces" or isolation == "rlimits" and _usable_by_others())
    mode = "calls" if calls is not None else "stdio" if stdin_inputs is not None else None
    workdir = tempfile.mkdtemp(prefix="iprime-sandbox-")
    try:
        if isolation == "rlimits" and switch_uid:
            os.chown(workdir, uid_solution, uid_solution)
        job = {
            "fds": {},
            "mode": mode,
            "setup": setup,
            "code": code,
            "calls": [dict(c, args=encode_plain(c["args"])) if "fn" in c else c for c in calls or []],
            "stdin_inputs": list(stdin_inputs or []),
            "num_judged": len(judged or []),
            "deadline_s": limits.wall_s,
            "test_timeout_s": test_timeout_s if test_timeout_s is not None else limits.wall_s,
            "stop_on_failure": stop_on_failure,
            "limits": {
                "cpu_s": limits.effective_cpu_s(),
                "memory_bytes": limits.memory_bytes,
                "file_size_bytes": limits.file_size_bytes,
                "max_open_files": limits.max_open_files,
                "max_processes": limits.max_processes,
            },
            "boot": {
                "isolation": isolation,
                "root": workdir,
                "workdir": workdir,
                "tmp_bytes": limits.tmpfs_bytes,
                "max_files": limits.max_files,
                "switch_uid": switch_uid,
                "uid_solution": uid_solution,
                "uid_judge": uid_judge,
            },
        }
        unshare = ["unshare", "--net", "--pid", "--mount", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
        if isolation == "namespaces":
            cmd = [*unshare, sys.executable, "-I", str(_RUNNER)]
        elif isolation == "userns":
            cmd = [unshare[0], "--user", "--map-root-user", *unshare[1:], sys.executable, "-I", str(_RUNNER)]
        else:
            cmd = [sys.executable, "-I", str(_RUNNER)]
        uids = (uid_solution, uid_judge) if switch_uid else ()
        run, values = _supervise(cmd, job, judged, setup, limits, uids)
        if decode:
            apply_values(run, values, None if stdin_inputs is None else len(stdin_inputs))
        else:
            run.values_data = values
        run.elapsed_s = time.monotonic() - start
        return run
    finally:
        remove_tree(workdir)


def _supervise(cmd, job: dict, judged, setup, limits: SandboxLimits, uids) -> tuple[SandboxRun, list[dict]]:
    run = SandboxRun()
    parent_fds: list[int] = []  # ours: closed at the end
    child_fds: list[int] = []  # the sandbox's: closed as soon as it has them
    try:
        report_r, report_w = os.pipe()
        parent_fds.append(report_r)
        child_fds.append(report_w)
        values_r, values_w = os.pipe()
        parent_fds.append(values_r)
        child_fds.append(values_w)
        job["fds"] = {"report": report_w, "values": values_w}
        if judged:
            judged_fd = _temp_file(json.dumps({"setup": setup, "tests": list(judged)}).encode())
            child_fds.append(judged_fd)
            job["fds"]["judged"] = judged_fd
        job_fd = _temp_file(json.dumps(job).encode())
        parent_fds.append(job_fd)
        proc = subprocess.Popen(
            cmd,
            env=dict(_MINIMAL_ENV),  # nothing inherited: no tokens, keys or proxies
            cwd="/",
            stdin=job_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=tuple(child_fds),
            start_new_session=True,  # own session and process group: killpg reaches it all
            close_fds=True,
        )
    except BaseException:
        for fd in parent_fds + child_fds:
            os.close(fd)
        raise
    for fd in child_fds:
        os.close(fd)  # only the sandbox writes to them; EOF tells us it is gone
    deadline = time.monotonic() + limits.wall_s + _STARTUP_ALLOWANCE_S
    sel = selectors.DefaultSelector()
    buffers = {"stdout": bytearray(), "stderr": bytearray(), "report": bytearray(), "values": bytearray()}
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(report_r, selectors.EVENT_READ, "report")
    sel.register(values_r, selectors.EVENT_READ, "values")
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                run.timed_out = True
                break
            for key, _ in sel.select(timeout=remaining):
                fileobj = key.fileobj
                fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
                data = os.read(fd, 1 << 20)
                if not data:
                    sel.unregister(fileobj)
                    continue
                buffers[key.data] += data
            if (
                len(buffers["stdout"]) + len(buffers["stderr"]) > limits.output_bytes
                or len(buffers["values"]) > limits.result_bytes
                or len(buffers["report"]) > 4 << 20
            ):
                run.output_limit_exceeded = True
                break
    finally:
        sel.close()
        _kill_group(proc.pid)
        for uid in uids:
            _kill_uid(uid)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL'd above
            proc.kill()
            proc.wait(timeout=10)
        for uid in uids:
            _reap_uid(uid)  # anything forked while we were killing, until it is gone
        for fd in parent_fds:
            os.close(fd)
        proc.stdout.close()
        proc.stderr.close()
    run.exit_code = proc.returncode
    run.stdout = bytes(buffers["stdout"][: limits.output_bytes])
    run.stderr = bytes(buffers["stderr"][: limits.output_bytes])
    _parse_report(run, bytes(buffers["report"]))
    values = bytes(buffers["values"])
    del buffers
    return run, values


def _parse_report(run: SandboxRun, data: bytes) -> None:
    """Events of the runner itself (no other process holds the report pipe)."""
    started = False
    for line in data.decode(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("event")
        if kind == "started":
            started = True
        elif kind == "boot_error":
            raise SandboxError(f"sandbox failed to start: {event.get('reason')}")
        elif kind == "judged":
            run.tests.append(TestOutcome(int(event["index"]), bool(event["passed"]), str(event.get("reason", ""))))
        elif kind == "timed_out":
            run.timed_out = True
        elif kind == "done":
            run.completed = True
    if not started and not run.timed_out and not run.output_limit_exceeded:
        raise SandboxError(
            f"sandbox did not start (exit code {run.exit_code}): {run.stderr.decode(errors='replace')[-2000:]}"
        )


def apply_values(run: SandboxRun, data: bytes, num_inputs: int | None, *, decode: bool = True) -> None:
    """Decode the values channel ``data`` into ``run``: ``calls`` (call tests) and, in stdin/stdout
    mode (``num_inputs``: how many inputs the run had), ``outputs``, ``output_ok`` and
    ``output_reasons``, the first message for each input. ``decode=False`` leaves each call's
    values encoded (``CallOutcome.values`` is then the JSON text) for :func:`decode_call`."""
    stdio = _parse_values(run, data, decode)
    if num_inputs is None:
        return
    run.outputs = [None] * num_inputs
    run.output_ok = [False] * num_inputs
    run.output_reasons = ["not run"] * num_inputs
    for message in stdio:
        i = message["i"]
        if 0 <= i < num_inputs and run.outputs[i] is None:
            run.outputs[i] = message["stdout"]
            run.output_ok[i] = message["ok"]
            run.output_reasons[i] = message["reason"]


def decode_call(outcome: CallOutcome) -> CallOutcome:
    """A call's outcome as :func:`apply_values` gives it with ``decode=True``, from one it left
    encoded."""
    if not outcome.ok or type(outcome.values) is not str:
        return outcome
    try:
        values = loads_plain(outcome.values)
        if type(values) is not list:
            raise PlainDataError("not a list of values")
    except PlainDataError as exc:
        return CallOutcome(False, [], f"result is not plain data ({exc})")
    return CallOutcome(True, values, "")


def _parse_values(run: SandboxRun, data: bytes, decode: bool = True) -> list[dict]:
    """What the candidate's side sent. Untrusted: any line may be forged or garbage, so
    only well-formed messages count, the first one per test, and values are decoded
    into fresh builtin objects (they can only be wrong answers, never a verdict)."""
    stdio: list[dict] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(message) is not dict:
            continue
        if type(message.get("load_error")) is str and not run.error:
            run.error = message["load_error"][:1000]
            continue
        index = message.get("i")
        if type(index) is not int:
            continue
        if "stdout" in message:
            if type(message["stdout"]) is str and type(message.get("ok")) is bool:
                reason = str(message.get("reason", ""))[:600]
                stdio.append({"i": index, "stdout": message["stdout"], "ok": message["ok"], "reason": reason})
            continue
        if index in run.calls:
            continue
        if type(message.get("v")) is str:
            encoded = CallOutcome(True, message["v"], "")  # type: ignore[arg-type] - decoded below
            run.calls[index] = decode_call(encoded) if decode else encoded
        elif type(message.get("error")) is str:
            run.calls[index] = CallOutcome(False, [], message["error"][:1000])
    return stdio
