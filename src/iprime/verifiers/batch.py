"""Batch verification over a process pool: one verifier for all samples, or each row its own.

The trainer picks a verifier by name (``"math"``, ``"code"``,
``"gym:<dataset>"``; :mod:`iprime.verifiers.registry`) and scores a whole
rollout batch with :func:`verify_batch` (or a long-lived :class:`VerifierPool`).
One sample's crash or timeout scores 0 with a reason (``VerifyResult.timed_out``
marks timeouts); it never fails the batch. :func:`score_rows` scores each
sample by its own row's verifier (by ability / data source, decided by
:mod:`iprime.verifiers.dispatch`), in the same pool (:meth:`VerifierPool.score_rows`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._pool import DeadlinePool, TaskOutcome
from .dispatch import (
    _MISSING,
    RewardFunctionError,
    RowScoring,
    _Plan,
    _plan,
    _Refused,
    _reward_functions,
    _RowProblem,
    _score_planned,
    _score_task,
    _with_code_options,
    reward_failure,
)
from .math import _warm_math_worker
from .registry import SandboxRefusal, Verifier, _resolve, _verify_one
from .result import VerifyResult, reason_says_timed_out
from .sandbox import SandboxUnavailable

__all__ = [
    "VerifierPool",
    "verify_batch",
    "score_rows",
]


def _pool_verify_one(verifier: Verifier, response: str, reference: Any) -> VerifyResult | SandboxRefusal:
    try:
        return _verify_one(verifier, response, reference)
    except SandboxUnavailable as err:
        return SandboxRefusal(str(err))


def _warm_worker(preload: tuple[str, ...] = ()) -> None:
    # Load the heavy parts once per worker, before any deadline starts: the worker imported
    # iprime.verifiers (code and math verifiers included) to unpickle this function; math-verify
    # and sympy, which the math verifier keeps lazy, load here.
    _warm_math_worker()
    for module in preload:
        importlib.import_module(module)


def _hard_deadline(verifier: Verifier, timeout_s: float | None) -> float:
    """Deadline after which a worker is killed.

    The verifier's own (soft) timeout fires first and gives a precise
    reason; the hard kill is the backstop for code that ignores signals.
    """
    soft = timeout_s if timeout_s is not None else getattr(verifier, "timeout_s", None)
    if soft is None:
        soft = 30.0
    return soft + max(3.0, 0.25 * soft)


def _to_result(outcome: TaskOutcome) -> VerifyResult:
    if outcome.ok and isinstance(outcome.value, SandboxRefusal):
        raise SandboxUnavailable(outcome.value.message)  # one loud refusal, not a 0 per sample
    if outcome.ok:
        return outcome.value
    reason = f"verifier failed: {outcome.error}"
    # The pool's hard deadline says "timed out after ..."; a worker's exception text never starts so.
    return VerifyResult(0.0, 0, 0, reason, outcome.elapsed_s, timed_out=reason_says_timed_out(reason))


class VerifierPool:
    """Long-lived worker processes for repeated :meth:`verify` / :meth:`score_rows` calls.

    Start one per run and reuse it: each worker imports math-verify/sympy
    and the code sandbox once (3-6 s to the first result on the busy
    2-core machine; ``benchmarks/verifiers.py --inline`` prints it), which
    would otherwise be paid per batch. Workers start in the background when
    the pool is created; the first call waits for them, and no sample's
    deadline starts before its worker is ready.

    Args:
        workers: worker processes.
        memory_limit_bytes: caps each worker's address space (the code
            sandbox has its own limits); ``None`` for no cap.
        preload: extra modules each worker imports at start-up, before any
            deadline runs: ``"reasoning_gym"`` for gym rows (about 2 s to
            import), the modules of user reward functions. Workers are
            spawned with this process's ``sys.path`` at the time the pool is
            created, so modules must be importable then.
    """

    def __init__(
        self, workers: int = 2, memory_limit_bytes: int | None = 4 << 30, *, preload: Sequence[str] = ()
    ) -> None:
        warmup = functools.partial(_warm_worker, tuple(preload)) if preload else _warm_worker
        self._pool = DeadlinePool(workers, memory_limit_bytes=memory_limit_bytes, warmup=warmup)

    @property
    def workers(self) -> int:
        return self._pool.size

    def _map(self, fn: Callable[..., Any], arg_tuples: Sequence[tuple], timeout_s: float) -> list[TaskOutcome]:
        """Run picklable ``fn(*args)`` per tuple in the workers, killed at ``timeout_s`` each."""
        return self._pool.map(fn, arg_tuples, timeout_s)

    def verify(
        self,
        kind_or_fn: str | Verifier,
        responses: Sequence[str],
        references: Sequence[Any],
        *,
        timeout_s: float | None = None,
    ) -> list[VerifyResult]:
        """See :func:`verify_batch`."""
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        verifier = _resolve(kind_or_fn, timeout_s)
        outcomes = self._pool.map(
            _pool_verify_one,
            [(verifier, r, ref) for r, ref in zip(responses, references)],
            _hard_deadline(verifier, timeout_s),
        )
        return [_to_result(o) for o in outcomes]

    def score_rows(
        self,
        responses: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        scoring: RowScoring | None = None,
        *,
        timeout_s: float | None = None,
        code_reward: str | None = None,
        code_prelude: str | None = None,
    ) -> list[VerifyResult]:
        """Each response scored by its own row's verifier: :func:`score_rows`."""
        return score_rows(
            responses,
            rows,
            scoring,
            pool=self,
            timeout_s=timeout_s,
            code_reward=code_reward,
            code_prelude=code_prelude,
        )

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_batch(
    kind_or_fn: str | Verifier,
    responses: Sequence[str],
    references: Sequence[Any],
    *,
    workers: int = 2,
    timeout_s: float | None = None,
    pool: VerifierPool | None = None,
) -> list[VerifyResult]:
    """Verify many samples; results come back in input order.

    Args:
        kind_or_fn: a registry name (``"math"``, ``"code"``,
            ``"gym:<dataset>"``) or a picklable :class:`Verifier` (a
            module-level function, or an instance of a module-level class).
        responses, references: equally long sequences.
        workers: worker processes; ``0`` runs inline in this process (no
            isolation from crashes; for debugging and baselines).
        timeout_s: per-sample time limit. For ``"math"``/``"code"`` it is
            also the verifier's own timeout; workers are killed at
            ``timeout_s + max(3, timeout_s / 4)``.
        pool: reuse a :class:`VerifierPool` instead of starting workers.

    A sample whose verifier raises, crashes its worker or overruns scores
    0.0 with the reason in ``VerifyResult.reason``; ``VerifyResult.timed_out``
    marks the overruns (the verifier's own timeout or the hard kill).
    """
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")
    if pool is not None:
        return pool.verify(kind_or_fn, responses, references, timeout_s=timeout_s)
    if workers == 0:
        verifier = _resolve(kind_or_fn, timeout_s)
        results = []
        for response, reference in zip(responses, references):
            try:
                results.append(_verify_one(verifier, response, reference))
            except SandboxUnavailable:  # no sandbox here: one loud refusal, never a silent 0
                raise
            except Exception as exc:  # one sample's failure is that sample's 0
                results.append(VerifyResult(0.0, 0, 0, f"verifier failed: {exc!r}"))
        return results
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    with VerifierPool(min(workers, max(1, len(responses)))) as tmp:
        return tmp.verify(kind_or_fn, responses, references, timeout_s=timeout_s)


def score_rows(
    responses: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    scoring: RowScoring | None = None,
    *,
    pool: VerifierPool | None = None,
    workers: int = 2,
    timeout_s: float | None = None,
    references: Sequence[Any] | None = None,
    code_reward: str | None = None,
    code_prelude: str | None = None,
) -> list[VerifyResult]:
    """:func:`score_row_detailed` for each ``(response, row)``, in worker processes; input order.

    Args:
        responses, rows: equally long; ``rows[i]`` is the row ``responses[i]``
            answers (the same row object may repeat, K times per prompt).
        scoring: dispatch settings (default :class:`RowScoring()`).
        pool: a running :class:`VerifierPool` to reuse (a trainer keeps one
            for the whole run); else ``workers`` processes are started for
            this call, and ``workers=0`` scores inline in this process (no
            hard deadline, no isolation from a crashing verifier).
        timeout_s: per-sample limit, replacing ``scoring.timeout_s``: the
            verifiers' own timeout; the worker is killed at
            ``timeout_s + max(3, timeout_s / 4)``.
        references: the rows' references if already read (the loader's
            ``data.reference_key``); else read with ``scoring.reference_key``.
        code_reward: ``"pass_all"`` or ``"prime"``, replacing
            ``scoring.code_reward`` (see :func:`~iprime.verifiers.score_row`).
        code_prelude: ``"none"`` or ``"prime"``, replacing ``scoring.code_prelude``.

    Every row is checked here, before any sample is sent: a row that cannot
    be scored raises ``ValueError`` naming its index. A sample whose verifier
    or reward function raises (or returns a bad value), crashes its worker or
    overruns scores 0 with the reason (``"verifier failed: ..."``),
    ``timed_out`` set for overruns; the other samples are unaffected.
    """
    if len(responses) != len(rows):
        raise ValueError(f"{len(responses)} responses but {len(rows)} rows")
    if references is not None and len(references) != len(rows):
        raise ValueError(f"{len(references)} references but {len(rows)} rows")
    scoring = _with_code_options(scoring, code_reward, code_prelude)
    if timeout_s is not None and timeout_s != scoring.timeout_s:
        scoring = dataclasses.replace(scoring, timeout_s=timeout_s)
    if not responses:
        return []
    _reward_functions(scoring)  # import errors surface here, not in every worker
    plans: dict[tuple[int, int], _Plan] = {}  # K samples of a row share one plan (code tests parse once)
    tasks = []
    for i, (response, row) in enumerate(zip(responses, rows)):
        reference = _MISSING if references is None else references[i]
        plan = plans.get((id(row), id(reference)))
        if plan is None:
            try:
                plan = _plan(row, scoring, reference)
            except ValueError as err:
                raise ValueError(f"row {i}: {err}") from None
            plans[(id(row), id(reference))] = plan
        send_row = row if scoring.reward_functions else None  # big code rows travel only when needed
        tasks.append((response, send_row, scoring, plan.name, plan.verifier, plan.reference))

    if pool is None and workers == 0:
        results = []
        for i, task in enumerate(tasks):
            start = time.monotonic()
            try:
                results.append(_score_planned(*task))
            except RewardFunctionError as err:  # this sample's 0, with the reason
                results.append(reward_failure(err, time.monotonic() - start))
            except _RowProblem as err:
                raise ValueError(f"sample {i}: {err}") from err
            except SandboxUnavailable:  # no sandbox here: one loud refusal, never a silent 0
                raise
            except Exception as err:  # a verifier's failure on one sample is that sample's 0
                results.append(VerifyResult(0.0, 0, 0, f"verifier failed: {err!r}", time.monotonic() - start))
        return results
    if pool is None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        with VerifierPool(min(workers, len(tasks))) as own:
            return _run_in_pool(own, tasks, scoring)
    return _run_in_pool(pool, tasks, scoring)


def _run_in_pool(pool: VerifierPool, tasks: list[tuple], scoring: RowScoring) -> list[VerifyResult]:
    outcomes = pool._map(_score_task, tasks, _hard_deadline(None, scoring.timeout_s))
    results = []
    for i, outcome in enumerate(outcomes):
        if outcome.ok and isinstance(outcome.value, _Refused):
            raise ValueError(f"sample {i}: {outcome.value.message}")
        results.append(_to_result(outcome))
    return results
