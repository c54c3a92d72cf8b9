"""One writer per run folder: a lock file held for a run's whole life.

``iprime train`` (fresh, ``--resume`` or ``--overwrite``) and ``iprime sft`` take the lock of
their output folder before they look at it, and hold it until the process ends. A second
process on the same folder is refused with the holder's pid, host and start time; so is
``--overwrite`` of a live run's folder (it would delete the files the live run writes).

The lock is ``fcntl.flock`` on ``<out_dir>/.iprime.lock``, kept open by the process. The kernel
drops a ``flock`` when its process dies, however it dies (``kill -9`` included), so a stale
lock from a dead process needs no detection: the next run takes it over, and the holder's
details written in the file are only there for the message. On a clean exit the file is
removed; a run that takes the lock checks that the file it locked is still the one at the
path (the previous holder may have removed it in between) and tries again if not.

Where the filesystem offers no locks (``flock`` fails with ``ENOLCK``, ``EOPNOTSUPP`` or
``ENOSYS``: some network filesystems) the file alone is the lock, created with ``O_EXCL``; a
file left by a process that is gone is recognised by its pid on the same host (``os.kill(pid,
0)``) and taken over; one written on another host is refused, with the path to delete once
that run is known to be gone.

Under ``torchrun`` only global rank 0 takes the lock (one lock per run, on a filesystem the
hosts share); the other ranks wait for rank 0 in the process group, and stop when ``torchrun``
stops the job after rank 0's refusal (exit 2).

Plain Python: no torch, so the command line takes the lock before anything heavy loads.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".iprime.lock"
"""The lock file inside the run folder (not part of a run's results: ignored by the checks
that ask whether a folder is empty)."""

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class RunLockedError(RuntimeError):
    """The run folder is in use by another live process (a user error: stop it, or use another folder)."""


def holder_info(command: str) -> dict:
    """What the lock file says about its holder: ``{"pid", "host", "started", "command"}``."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": command,
    }


def describe(info: dict | None) -> str:
    """``pid 123 on host gpu01, started 2026-12-06 10:40:00 UTC (iprime train)``."""
    if not info:
        return "a process that has not written its details yet"
    return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')} ({info.get('command')})"


def _read_info(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


@dataclass
class RunLock:
    """A held lock; :meth:`release` removes the file and lets go (idempotent)."""

    path: Path
    fd: int | None
    created_dir: bool = False

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before the fd closes: a waiter re-checks the inode
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None
        if self.created_dir:  # a folder this command made for nothing stays absent
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _refusal(out_dir: Path, info: dict | None, doing: str) -> RunLockedError:
    doing = f" {doing}" if doing else ""
    return RunLockedError(
        f"{out_dir} is in use by a live run: {describe(info)}.{doing} Wait for it to end or stop it "
        f"(its lock is {out_dir / LOCK_NAME}), or choose another folder."
    )


def acquire_run_lock(out_dir: str | Path, command: str, doing: str = "") -> RunLock:
    """Take the lock of ``out_dir`` (created if missing) for this process, or raise
    :class:`RunLockedError` naming the live holder. ``command``: what this process is (written
    for the next one's message); ``doing``: a sentence on what was refused (``--overwrite will
    not delete it.``)."""
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    import fcntl

    for _ in range(10):  # another run may remove the file between our open and our flock
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(out_dir, _read_info(path), doing) from None
        except OSError as err:
            os.close(fd)
            if err.errno in _NO_LOCKS:
                return _acquire_pid_file(out_dir, command, doing, created)
            raise
        if _same_file(fd, path):
            _write_info(fd, holder_info(command))
            return RunLock(path, fd, created)
        os.close(fd)
    raise RunLockedError(f"{path}: could not take the lock (the file keeps changing); is another run starting?")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_info(fd: int, info: dict) -> None:
    data = json.dumps(info).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _alive(info: dict | None) -> bool:
    """Whether the holder named in a lock file may still run: unknown (another host, no pid) counts as alive."""
    if not info or info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return True
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _acquire_pid_file(out_dir: Path, command: str, doing: str, created: bool) -> RunLock:
    """The lock without ``flock``: the file itself, created exclusively; a stale file (its pid
    gone, on this host) is taken over."""
    path = out_dir / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _read_info(path)
            if _alive(info):
                raise _refusal(out_dir, info, doing) from None
            path.unlink(missing_ok=True)  # its process is gone: a stale lock
            continue
        _write_info(fd, holder_info(command))
        return RunLock(path, fd, created)
    raise _refusal(out_dir, _read_info(path), doing)


def lock_holder(out_dir: str | Path) -> str | None:
    """Who holds ``out_dir``'s lock (:func:`describe`), or ``None``; changes nothing on disk
    (for ``--dry-run``)."""
    path = Path(out_dir) / LOCK_NAME
    if not path.is_file():
        return None
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return describe(_read_info(path))
    except OSError:
        info = _read_info(path)
        return describe(info) if _alive(info) else None
    finally:
        os.close(fd)
    return None
