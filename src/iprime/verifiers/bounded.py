"""Host-side work on untrusted data, bounded in time and memory (issue 24, item 3).

What the candidate's code sends back (up to ``SandboxLimits.result_bytes`` of values and its
programs' stdout) is decoded and compared on the host. Done in the caller's own process, a
value could make that work unbounded: integers that all hash alike turn building a set into
quadratic work, two 31-million-bit integers multiplied by the test's expression take minutes,
a format string with a huge width makes ``%`` build gigabytes, and a 64 MiB payload of tiny
containers decodes to 25 times its size. Checks per case (bit lengths, widths, counts) would
each close one door; this module closes the class: the work runs in a fresh process with

* an address-space limit (``RLIMIT_AS``: its size when it starts plus ``memory_bytes``; past
  it allocation fails, and a ``MemoryError`` is reported as such),
* a CPU-time limit (``RLIMIT_CPU``) and a wall-clock timer (``ITIMER_REAL``, whose
  ``SIGALRM`` kills the process even inside one long C call such as a multiplication),
* a caller that stops waiting at the deadline (plus :data:`REPLY_GRACE_S`) whatever happens.

A fresh Python per task would cost ~0.2 s of imports; instead one *helper* process per caller
process (started on first use, ``python -I``, with the verifier modules imported once) forks
one child per task. The helper is single-threaded, so forking it is safe where forking the
caller (which usually has torch's threads) is not. A task is a module-level function named
``"module:function"`` with picklable arguments (the caller's own data, trusted) and an
optional ``blob`` of raw bytes (the untrusted data, never unpickled: handed to the function
as ``bytes``); it returns JSON-ready data, the only thing that comes back. The job goes to
the child in an unnamed in-memory file, its reply on a pipe; both are passed over a Unix
socket, so nothing is named on disk.

:func:`call_bounded` raises :class:`HostLimitExceeded` with the reason when a limit stops the
task; any exception of the task itself is reported as ``HostLimitExceeded`` too (with its
type and message), since the caller scores such a sample 0 either way.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import math
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["HostLimitExceeded", "call_bounded", "warm", "DEFAULT_MEMORY_BYTES", "REPLY_GRACE_S"]

# What a task may allocate above the helper's own size (~30 MiB resident after its imports).
# An honest call's values are at most PLAIN_MAX_NODES (1M) parts and file_size_bytes (16 MiB) of
# JSON, decoded one call at a time: judging three calls of a million strings each, or a call of
# 500,000 one-element lists against its expected value, peaked at 240-270 MiB resident (sampled).
DEFAULT_MEMORY_BYTES = 768 << 20
# How long past a task's wall limit the caller waits for its reply: the fork, writing the reply.
REPLY_GRACE_S = 0.5
# The modules the helper imports once, so a task's child starts with them loaded.
_PRELOAD = ("iprime.verifiers.code",)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding ``iprime``


class HostLimitExceeded(RuntimeError):
    """A bounded task did not return a result: it ran past its time or memory limit, or failed."""


# ----------------------------------------------------------------------------- the caller's side


class _Helper:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        boot = (
            "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
            "from iprime.verifiers.bounded import serve; serve(int(sys.argv[2]), json.loads(sys.argv[3]))"
        )
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-c",
                    boot,
                    json.dumps([_PACKAGE_ROOT]),
                    str(theirs.fileno()),
                    json.dumps(_PRELOAD),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the caller's terminal is the caller's to handle
            )
        finally:
            theirs.close()
        self.sock = ours
        self.owner = os.getpid()

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def close(self) -> None:
        self.sock.close()  # EOF: the helper exits
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - it exits on EOF
            self.proc.kill()
            self.proc.wait()


_lock = threading.Lock()
_helper: _Helper | None = None


def _close_helper() -> None:
    global _helper
    with _lock:
        if _helper is not None and _helper.owner == os.getpid():
            _helper.close()
        _helper = None


atexit.register(_close_helper)


def _ensure_helper() -> _Helper:
    global _helper
    if _helper is None or not _helper.alive():
        if _helper is not None and _helper.owner == os.getpid():
            _helper.sock.close()
        _helper = _Helper()
    return _helper


def warm() -> None:
    """Start the helper now (~0.2 s, once per process), so that no task's time pays for it."""
    with _lock:
        _ensure_helper()


def _send(job_fd: int, reply_w: int) -> None:
    with _lock:
        for attempt in (0, 1):
            helper = _ensure_helper()
            try:
                socket.send_fds(helper.sock, [b"j"], [job_fd, reply_w])
                return
            except OSError:  # the helper died (killed from outside): start another once
                if attempt:
                    raise
                helper.sock.close()
                helper.proc.kill()
                helper.proc.wait()


def call_bounded(
    target: str,
    args: tuple = (),
    *,
    wall_s: float,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    blob: bytes | bytearray | None = None,
    what: str = "host-side work",
) -> Any:
    """``target(*args)`` (``target`` is ``"module:function"``; with ``blob``, ``target(*args,
    blob)``) in a fresh child of the helper, limited to ``wall_s`` seconds of wall clock and CPU
    and ``memory_bytes`` of address space above the helper's; its JSON-ready return value.

    Returns within ``wall_s + REPLY_GRACE_S`` (plus the helper's start, ~0.2 s, on the first
    call of a process; :func:`warm` starts it ahead). Raises :class:`HostLimitExceeded` naming
    ``what`` when the task ran out of time or memory or raised.
    """
    if not wall_s > 0:
        raise HostLimitExceeded(f"{what}: no time left")
    job = pickle.dumps(
        {"target": target, "args": args, "wall_s": wall_s, "memory_bytes": memory_bytes, "blob": blob is not None}
    )
    job_fd = os.memfd_create("iprime-bounded-job", os.MFD_CLOEXEC)
    reply_r, reply_w = os.pipe()
    try:
        with os.fdopen(os.dup(job_fd), "wb") as fh:
            fh.write(len(job).to_bytes(8, "little"))
            fh.write(job)
            if blob is not None:
                fh.write(blob)
        os.lseek(job_fd, 0, os.SEEK_SET)
        deadline = time.monotonic() + wall_s + REPLY_GRACE_S
        _send(job_fd, reply_w)
        os.close(reply_w)
        reply_w = -1
        data, finished = _read_reply(reply_r, deadline, limit=len(job) + (len(blob) if blob else 0) + (8 << 20))
    finally:
        os.close(job_fd)
        os.close(reply_r)
        if reply_w >= 0:
            os.close(reply_w)
    if not finished:
        raise HostLimitExceeded(f"{what} did not finish within {wall_s:.1f}s (stopped)")
    if not data:
        raise HostLimitExceeded(f"{what} was stopped by its time limit ({wall_s:.1f}s of wall clock or CPU)")
    status, value = json.loads(data)
    if status == "ok":
        return value
    raise HostLimitExceeded(f"{what}: {value}")


def _read_reply(fd: int, deadline: float, limit: int) -> tuple[bytes, bool]:
    """The pipe's bytes up to EOF; ``finished`` is False when the deadline came first."""
    chunks: list[bytes] = []
    size = 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(timeout=remaining):
                return b"", False
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks), True
            size += len(chunk)
            if size > limit:
                return b"", True  # our own task never replies this much: treat as no reply
            chunks.append(chunk)


# ----------------------------------------------------------------------------- the helper's side


def serve(fd: int, preload: list[str]) -> None:
    """The helper's loop: for each job received on socket ``fd``, fork a child that runs it."""
    for module in preload:
        importlib.import_module(module)
    gc.freeze()  # the children's collections leave the preloaded objects (and their pages) alone
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    sock = socket.socket(fileno=fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1, 2)
        except OSError:
            return
        if not msg:
            return  # the caller is gone
        if len(fds) != 2:
            for extra in fds:
                os.close(extra)
            continue
        job_fd, reply_fd = fds
        try:
            pid = os.fork()
        except OSError as exc:
            _write_reply(reply_fd, ["error", f"could not start: {exc}"])
            pid = 1
        if pid == 0:
            try:
                sock.close()
                _child(job_fd, reply_fd)
            except BaseException as exc:  # noqa: BLE001 - setting up the task failed: say so
                try:
                    _write_reply(reply_fd, ["error", f"could not run: {type(exc).__name__}: {str(exc)[:300]}"])
                except BaseException:  # noqa: BLE001 - the caller then reports no reply
                    pass
            finally:
                os._exit(0)
        os.close(job_fd)
        os.close(reply_fd)


def _write_reply(fd: int, reply: list) -> None:
    data = json.dumps(reply).encode()
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _child(job_fd: int, reply_fd: int) -> None:
    import resource

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    with os.fdopen(job_fd, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        job = pickle.loads(fh.read(size))
        # The wall clock starts now: SIGALRM's default action ends the process, inside C code too.
        signal.setitimer(signal.ITIMER_REAL, float(job["wall_s"]))
        blob = fh.read()
    cpu = math.ceil(float(job["wall_s"])) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    with open("/proc/self/status") as status:
        vm_size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_size + len(blob) + int(job["memory_bytes"])  # the blob is already held
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    module, name = job["target"].split(":")
    fn = getattr(importlib.import_module(module), name)
    args = tuple(job["args"]) + ((blob,) if job["blob"] else ())
    try:
        reply = ["ok", fn(*args)]
    except MemoryError:
        reply = ["error", f"ran out of its memory limit ({int(job['memory_bytes']) >> 20} MiB)"]
    except RecursionError:
        reply = ["error", "nested too deep (RecursionError)"]
    except BaseException as exc:  # noqa: BLE001 - any failure is the task's: reported, the child exits
        reply = ["error", f"{type(exc).__name__}: {str(exc)[:500]}"]
    _write_reply(reply_fd, reply)
    os.close(reply_fd)
