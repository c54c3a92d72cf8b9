"""A small process pool whose tasks have hard deadlines.

``concurrent.futures.ProcessPoolExecutor`` cannot stop one runaway task: a
sympy simplification stuck in C code keeps its worker busy forever, and a
worker that dies breaks the whole executor (``BrokenProcessPool``).
Verification must never do that to a training run, so this pool keeps one
pipe per worker, kills the single worker whose task overran its deadline (or
that died), records the failure for that task only, and starts a
replacement.

Workers are started with the ``spawn`` method by default: the training
process usually has threads (torch, tokenizers), and ``fork`` from a threaded
process can deadlock the child. As with any spawn-based multiprocessing, the
caller's main script must be import-safe (``if __name__ == "__main__":``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["TaskOutcome", "DeadlinePool"]

# How long a new worker may take to import its modules before we call the
# environment broken. Imports (sympy, math_verify) take ~1-3 s on 2 cores.
_STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to one task: ``value`` when ``ok``, else ``error`` says why."""

    ok: bool
    value: Any = None
    error: str = ""
    elapsed_s: float = 0.0


def _worker_main(conn: Connection, memory_limit_bytes: int | None, warmup: Callable[[], None] | None) -> None:
    """Worker loop: announce readiness, then run ``fn(*args)`` until the pipe closes."""
    # Ctrl-C reaches every process of the terminal's process group: the training process decides
    # what it does (finish the step, checkpoint: iprime.train.signals); a worker killed by it would
    # fail its samples and change that step. SIGTERM keeps its default: multiprocessing stops
    # leftover workers with it at exit (the pool itself closes the pipe, then SIGKILLs).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if memory_limit_bytes is not None:
            import resource  # POSIX only: the pool itself imports on every platform

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
        if warmup is not None:
            warmup()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        try:
            conn.send(("startup-failed", "".join(traceback.format_exception(exc))[-4000:]))
        except OSError:
            pass
        return
    try:
        conn.send(("ready", ""))
    except OSError:
        return  # the pool was closed while we started
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return  # parent is gone or closed us: exit quietly
        try:
            reply = (True, fn(*args), "")
        except MemoryError:
            reply = (False, None, "MemoryError (worker memory limit reached)")
        except BaseException as exc:  # noqa: BLE001 - any failure is the task's, not the pool's
            reply = (False, None, "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:])
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable return value
            conn.send((False, None, f"could not send result back: {exc!r}"))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx, memory_limit_bytes: int | None, warmup) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.conn = parent_conn
        self.process = ctx.Process(
            target=_worker_main,
            args=(child_conn, memory_limit_bytes, warmup),
            daemon=True,  # never outlive the trainer
        )
        self.process.start()
        child_conn.close()
        self.ready = False
        self.startup_deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        self.task_index: int | None = None
        self.started_at = 0.0
        self.deadline = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class DeadlinePool:
    """``workers`` persistent processes running picklable ``fn(*args)`` tasks.

    Args:
        workers: number of worker processes.
        memory_limit_bytes: RLIMIT_AS applied inside each worker, so one huge
            expression cannot push the host into swap; ``None`` for no limit.
        warmup: optional picklable callable each worker runs once at start
            (e.g. importing sympy). Task deadlines only start once a worker
            has finished it, so imports never eat into a task's time.
        start_method: multiprocessing start method (default ``spawn``).

    Not thread-safe: use one pool per thread, or guard it with a lock.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        memory_limit_bytes: int | None = None,
        warmup: Callable[[], None] | None = None,
        start_method: str = "spawn",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._ctx = mp.get_context(start_method)
        self._memory_limit = memory_limit_bytes
        self._warmup = warmup
        self._owner_pid = os.getpid()
        self._workers = [self._spawn() for _ in range(workers)]

    @property
    def size(self) -> int:
        return len(self._workers)

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self._memory_limit, self._warmup)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = self._spawn()

    def _on_startup_message(self, worker: _Worker) -> None:
        try:
            kind, detail = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=5)
            kind, detail = "startup-failed", f"worker exited with code {worker.process.exitcode}"
        if kind != "ready":
            self.close()
            raise RuntimeError(f"verifier worker failed to start:\n{detail}")
        worker.ready = True

    def map(
        self,
        fn: Callable[..., Any],
        arg_tuples: Sequence[tuple],
        timeout_s: float,
    ) -> list[TaskOutcome]:
        """Run ``fn(*args)`` for every tuple; results come back in input order.

        A task that runs past ``timeout_s`` (measured from when a ready
        worker received it) or whose worker dies gets a failed
        ``TaskOutcome``; the other tasks are unaffected.
        """
        if os.getpid() != self._owner_pid:
            raise RuntimeError("DeadlinePool used from a forked child; create a new pool there")
        if not self._workers:
            raise RuntimeError("DeadlinePool is closed")
        results: list[TaskOutcome | None] = [None] * len(arg_tuples)
        pending = list(range(len(arg_tuples)))[::-1]  # pop() yields input order

        def finish(worker: _Worker, outcome: TaskOutcome) -> None:
            assert worker.task_index is not None
            results[worker.task_index] = outcome
            worker.task_index = None

        while True:
            for worker in list(self._workers):
                if worker.ready and worker.task_index is None and pending:
                    index = pending.pop()
                    try:
                        worker.conn.send((fn, arg_tuples[index]))
                    except Exception as exc:  # unpicklable fn/args, or a dead worker
                        results[index] = TaskOutcome(False, error=f"could not send task: {exc!r}")
                        if not worker.process.is_alive():
                            self._replace(worker)
                        continue
                    worker.task_index = index
                    worker.started_at = time.monotonic()
                    worker.deadline = worker.started_at + timeout_s
            busy = [w for w in self._workers if w.task_index is not None]
            if not busy and not pending:
                break
            starting = [w for w in self._workers if not w.ready]
            watched = busy + starting
            now = time.monotonic()
            next_deadline = min([w.deadline for w in busy] + [w.startup_deadline for w in starting])
            ready_conns = {id(c) for c in wait([w.conn for w in watched], timeout=max(0.0, next_deadline - now))}
            now = time.monotonic()
            for worker in watched:
                if id(worker.conn) not in ready_conns:
                    continue
                if not worker.ready:
                    self._on_startup_message(worker)
                    continue
                elapsed = now - worker.started_at
                try:
                    ok, value, error = worker.conn.recv()
                except (EOFError, OSError):
                    worker.process.join(timeout=5)
                    code = worker.process.exitcode
                    finish(worker, TaskOutcome(False, error=f"worker died (exit code {code})", elapsed_s=elapsed))
                    self._replace(worker)
                    continue
                finish(worker, TaskOutcome(ok, value, error, elapsed))
            for worker in list(self._workers):
                if worker.task_index is not None and now >= worker.deadline:
                    finish(
                        worker,
                        TaskOutcome(False, error=f"timed out after {timeout_s:g}s", elapsed_s=now - worker.started_at),
                    )
                    self._replace(worker)
                elif not worker.ready and now >= worker.startup_deadline:
                    self.close()
                    raise RuntimeError(f"verifier worker did not start within {_STARTUP_TIMEOUT_S:g}s")
        return [r if r is not None else TaskOutcome(False, error="internal: no result") for r in results]

    def run(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> TaskOutcome:
        """Run a single task (see :meth:`map`)."""
        return self.map(fn, [args], timeout_s)[0]

    def close(self) -> None:
        """Stop all workers, killing any that are still busy."""
        workers, self._workers = self._workers, []
        for worker in workers:
            try:
                worker.conn.close()  # idle workers see EOF and exit
            except OSError:
                pass
        for worker in workers:
            worker.process.join(timeout=1)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
