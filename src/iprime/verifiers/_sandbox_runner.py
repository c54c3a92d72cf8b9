"""Program that runs *inside* the sandbox (stdlib only; executed as a script).

It is started by :mod:`iprime.verifiers.sandbox`, as root inside fresh
network/PID/mount namespaces when isolation is ``"namespaces"``. It then

1. reads its job (``job.json`` in the working directory, root-only) and
   deletes it, so the untrusted code never sees the result token;
2. makes the Python installation readable for the sandbox user even if
   it lives in a private directory (see ``_expose_paths``), and hides the
   world-writable directories (/tmp, /var/tmp, /dev/shm,
   /run/lock) behind small private tmpfs mounts, so the only persistent place
   the code can write to is its own working directory;
3. drops to the job's unprivileged uid/gid (no supplementary groups), so
   RLIMIT_NPROC is enforced and the host's files are read-only to it;
4. applies the resource limits (CPU, address space, file size, processes,
   open files, no core dumps);
5. runs the candidate code and its tests, each test in a forked child with
   its own process group, and reports one JSON line per test on the report
   pipe whose descriptor number the job names.

Every report line carries a random token that only this runner knows. A
test passes only when the child that ran it sends the token after the test
code finished, so ``exit(0)``/``os._exit(0)`` or printing fake results
cannot pass a test. (Code that digs the token out of this process's memory
could; this guards against reward hacks, not a determined attacker, whose
reach is bounded by the OS isolation above.)
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback

RESULT_FD = -1  # set from the job: the host passes its report pipe under this number


def _mount_private_tmp(dirs: list[str], size_bytes: int, keep: list[str]) -> None:
    """Cover ``dirs`` with private tmpfs mounts, then bind the ``keep`` paths that lived under
    them back in, read-only: the interpreter or this runner may be installed under /tmp (a
    virtualenv in a CI checkout there), and covering them would leave nothing to run."""
    private = [os.path.realpath(d) for d in dirs if os.path.isdir(d)]
    inside = sorted({os.path.realpath(p) for p in keep if os.path.exists(p)})
    inside = [p for p in inside if any(p.startswith(d.rstrip("/") + "/") for d in private)]
    # O_PATH handles keep the originals reachable once the tmpfs covers them.
    handles = [(p, os.open(p, os.O_PATH)) for p in inside]
    for path in private:
        _mount("tmpfs", path, "tmpfs", 0, f"size={size_bytes},mode=1777")
    for path, fd in handles:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC, None)
        _mount("none", path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None)
        os.close(fd)


_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 32, 4096, 16384


def _libc():
    import ctypes
    import ctypes.util

    return ctypes, ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    ctypes, libc = _libc()
    rc = libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags, data.encode() if data else None
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _expose_paths(paths: list[str]) -> None:
    """Make ``paths`` reachable for the unprivileged uid, read-only.

    The interpreter may live under a directory others cannot enter (here
    Python is installed under /root, mode 0700). In our private mount
    namespace we cover that directory with an empty tmpfs, which also hides
    the rest of it (root's home holds credentials), and bind-mount back only
    the needed subpaths, read-only. The host's view is unchanged.
    """
    blocked: dict[str, list[str]] = {}
    for path in sorted(set(os.path.realpath(p) for p in paths)):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:depth])
            if not os.stat(ancestor).st_mode & 0o001:  # others cannot traverse it
                blocked.setdefault(ancestor, []).append(path)
                break
    for ancestor, inner in blocked.items():
        # O_PATH handles keep the originals reachable once the tmpfs covers them.
        handles = [(p, os.open(p, os.O_PATH)) for p in inner]
        _mount("tmpfs", ancestor, "tmpfs", 0, "size=1m,mode=0755")
        for path, fd in handles:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC, None)
            _mount("none", path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None)
            os.close(fd)


def _drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # as root this sets real, effective and saved ids: no way back
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("failed to drop privileges")


def _apply_limits(limits: dict) -> None:
    import resource

    def setl(which, soft, hard=None):
        resource.setrlimit(which, (soft, soft if hard is None else hard))

    cpu = int(limits["cpu_s"])
    setl(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at soft, SIGKILL at hard
    setl(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    setl(resource.RLIMIT_FSIZE, int(limits["file_size_bytes"]))
    setl(resource.RLIMIT_NOFILE, int(limits["max_open_files"]))
    setl(resource.RLIMIT_CORE, 0)
    if limits.get("max_processes") is not None:
        setl(resource.RLIMIT_NPROC, int(limits["max_processes"]))


class Reporter:
    def __init__(self, token: str) -> None:
        self._token = token

    def send(self, **event) -> None:
        event["token"] = self._token
        data = (json.dumps(event) + "\n").encode()
        try:
            os.write(RESULT_FD, data)
        except OSError:
            pass  # host closed the pipe: it is killing us anyway


def _short_exc(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[-500:]


def _run_forked(fn, timeout_s: float, token: str) -> tuple[bool, str]:
    """Run ``fn()`` in a forked child; pass only if it sends ``token`` back.

    ``fn`` returns normally for success or raises. The child gets its own
    process group so everything it spawns is killed with it on timeout.
    """
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        return False, f"could not fork test process: {exc}"
    if pid == 0:  # child: whatever happens, it must end in os._exit below
        code, message = 1, f"{token}:fail:test process failed"
        try:
            os.close(read_fd)
            os.close(RESULT_FD)
            os.setpgid(0, 0)
            fn()
            sys.stdout.flush()
            code, message = 0, token + ":ok"
        except BaseException as exc:  # noqa: BLE001 - reported as the test's failure
            # Drop the frames (and e.g. a memory hog's data) before formatting.
            exc.__traceback__ = None
            try:
                if isinstance(exc, SystemExit):
                    message = f"{token}:fail:SystemExit({exc.code!r}) before the test finished"
                else:
                    message = f"{token}:fail:{_short_exc(exc)}"
            except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
                message = f"{token}:fail:{type(exc).__name__}"
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except BaseException:  # noqa: BLE001
                pass
            try:
                os.write(write_fd, message.encode()[:4000])
            except BaseException:  # noqa: BLE001
                pass
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout_s
    chunks = []
    timed_out = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if not ready:
            continue
        data = os.read(read_fd, 4096)
        if not data:
            break
        chunks.append(data)
        if sum(map(len, chunks)) > 8192:
            break
    os.close(read_fd)
    if timed_out:
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
            except OSError:
                pass
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return False, f"test timed out after {timeout_s:.3g}s"
    message = b"".join(chunks).decode(errors="replace")
    if message == token + ":ok" and os.waitstatus_to_exitcode(status) == 0:
        return True, "passed"
    if message.startswith(token + ":fail:"):
        return False, message[len(token) + 6 :]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return False, f"killed by signal {signal.Signals(sig).name}" + _signal_hint(sig)
    return False, f"test process exited with code {os.waitstatus_to_exitcode(status)} without finishing"


def _signal_hint(sig: int) -> str:
    return {
        signal.SIGXCPU: " (CPU time limit)",
        signal.SIGKILL: " (CPU time limit or killed)",
        signal.SIGXFSZ: " (file size / output limit)",
        signal.SIGSEGV: " (crash, possibly memory limit)",
    }.get(sig, "")


def run_job(job: dict, reporter: Reporter) -> None:
    token = job["token"]
    deadline = time.monotonic() + float(job["deadline_s"])
    test_timeout = float(job["test_timeout_s"])
    stop_on_failure = bool(job["stop_on_failure"])
    mode = job["mode"]

    namespace: dict = {"__name__": "__solution__", "__builtins__": __builtins__}
    try:
        setup_code = compile(job.get("setup") or "", "<setup>", "exec")
        solution_code = compile(job["code"], "<solution>", "exec")
    except SyntaxError as exc:
        reporter.send(event="compile_error", reason=_short_exc(exc))
        return

    if mode == "asserts":
        try:
            exec(setup_code, namespace)
        except BaseException as exc:  # noqa: BLE001
            reporter.send(event="setup_error", reason=_short_exc(exc))
            return
        try:
            exec(solution_code, namespace)
        except SystemExit as exc:
            reporter.send(event="code_error", reason=f"solution called exit({exc.code!r}) at import")
            return
        except BaseException as exc:  # noqa: BLE001
            reporter.send(event="code_error", reason=_short_exc(exc))
            return
        tests = job["asserts"]
        for index, test_src in enumerate(tests):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reporter.send(event="test", index=index, passed=False, reason="not run: sample time limit reached")
                continue
            try:
                test_code = compile(test_src, f"<test {index}>", "exec")
            except SyntaxError as exc:
                reporter.send(
                    event="test", index=index, passed=False, reason=f"test does not compile: {_short_exc(exc)}"
                )
                continue
            passed, reason = _run_forked(lambda: exec(test_code, namespace), min(test_timeout, remaining), token)
            reporter.send(event="test", index=index, passed=passed, reason=reason)
            if stop_on_failure and not passed:
                return
    elif mode == "stdio":
        try:
            exec(setup_code, namespace)
        except BaseException as exc:  # noqa: BLE001
            reporter.send(event="setup_error", reason=_short_exc(exc))
            return
        # The host wrote stdin_<i>.txt before start and compares
        # stdout_<i>.txt itself after the run; here we only run the program.
        for index in range(int(job["num_inputs"])):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reporter.send(event="test", index=index, passed=False, reason="not run: sample time limit reached")
                continue
            in_path, out_path = f"stdin_{index}.txt", f"stdout_{index}.txt"

            def run_program(in_path=in_path, out_path=out_path):
                in_fd = os.open(in_path, os.O_RDONLY)
                out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(in_fd, 0)
                os.dup2(out_fd, 1)
                os.close(in_fd)
                os.close(out_fd)
                program_ns = dict(namespace, __name__="__main__")
                try:
                    exec(solution_code, program_ns)
                except SystemExit as exc:  # exit()/sys.exit() ends a stdio program normally
                    if exc.code not in (None, 0):
                        raise RuntimeError(f"program exited with status {exc.code!r}") from None

            passed, reason = _run_forked(run_program, min(test_timeout, remaining), token)
            reporter.send(event="test", index=index, passed=passed, reason=reason)
            if stop_on_failure and not passed:
                return
    else:
        reporter.send(event="internal_error", reason=f"unknown mode {mode!r}")
        return
    reporter.send(event="done")


def main() -> None:
    # Phase 1, privileged when isolation is "namespaces": read the job,
    # hide shared writable dirs, drop to the sandbox uid, apply limits.
    with open("job.json", "rb") as fh:
        job = json.loads(fh.read())
    os.unlink("job.json")
    global RESULT_FD
    RESULT_FD = int(job["result_fd"])
    reporter = Reporter(job["token"])
    boot = job["boot"]
    try:
        if boot["isolation"] == "namespaces":
            needed = [sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(os.path.abspath(__file__))]
            _mount_private_tmp(boot["private_dirs"], int(boot["tmpfs_bytes"]), keep=needed)
            _expose_paths(needed)
            _drop_privileges(int(boot["uid"]), int(boot["gid"]))
        _apply_limits(job["limits"])
    except BaseException as exc:  # noqa: BLE001
        reporter.send(event="boot_error", reason=_short_exc(exc))
        sys.exit(70)
    reporter.send(event="started", uid=os.getuid(), pid=os.getpid())
    # Phase 2, unprivileged: run the untrusted code.
    run_job(job, reporter)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the candidate's atexit handlers and object
    # finalizers must not get a chance to rewrite the outcome.
    os._exit(0)


if __name__ == "__main__":
    main()
