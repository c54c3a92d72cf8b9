"""Verifier protocol, registry by name, and batch verification over a process pool.

The trainer picks a verifier by name (``"math"``, ``"code"``,
``"gym:<dataset>"``) with :func:`get_verifier` and scores a whole rollout
batch with :func:`verify_batch` (or a long-lived :class:`VerifierPool`). One
sample's crash or timeout scores 0 with a reason (``VerifyResult.timed_out``
marks timeouts); it never fails the batch. Per-row dispatch (each row its own
verifier, by ability / data source) is :mod:`iprime.verifiers.dispatch`, run in
the same pool by :meth:`VerifierPool.score_rows`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._pool import DeadlinePool, TaskOutcome
from .result import VerifyResult, reason_says_timed_out
from .sandbox import SandboxUnavailable

if TYPE_CHECKING:
    from .dispatch import RowScoring

__all__ = [
    "Verifier",
    "MathVerifier",
    "CodeVerifier",
    "register_verifier",
    "get_verifier",
    "available_verifiers",
    "VerifierPool",
    "verify_batch",
    "mark_timeout",
]


@runtime_checkable
class Verifier(Protocol):
    """Anything callable as ``verifier(response, reference) -> float`` in [0, 1].

    Verifiers may also define ``detailed(response, reference) ->
    VerifyResult`` to report reasons; :func:`verify_batch` uses it when
    present. To run in worker processes a verifier must be picklable (a
    module-level function or an instance of a module-level class).
    """

    def __call__(self, response: str, reference: Any) -> float: ...


class MathVerifier:
    """Registry entry ``"math"``: :func:`iprime.verifiers.math.verify_math`."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s

    def __call__(self, response: str, reference: Any) -> float:
        return self.detailed(response, reference).score

    def detailed(self, response: str, reference: Any) -> VerifyResult:
        from .math import verify_math_detailed

        return verify_math_detailed(response, reference, self.timeout_s)


class CodeVerifier:
    """Registry entry ``"code"``: :func:`iprime.verifiers.code.verify_code`."""

    def __init__(self, timeout_s: float = 10.0, all_or_nothing: bool = True) -> None:
        self.timeout_s = timeout_s
        self.all_or_nothing = all_or_nothing

    def __call__(self, response: str, reference: Any) -> float:
        return self.detailed(response, reference).score

    def detailed(self, response: str, reference: Any) -> VerifyResult:
        from .code import verify_code_detailed

        return verify_code_detailed(response, reference, self.timeout_s, self.all_or_nothing)


def _gym_factory(dataset: str, **kwargs: Any) -> Verifier:
    from .gym import GymVerifier

    return GymVerifier(dataset, **kwargs)


def _arithmetic_factory() -> Verifier:
    """Registry entry ``"arithmetic"``: the built-in task's exact boxed-integer check."""
    from iprime.data.boxed import boxed_int_score

    return boxed_int_score


# name -> factory(**kwargs) -> Verifier. "gym:" is a prefix family.
_REGISTRY: dict[str, Callable[..., Verifier]] = {
    "math": MathVerifier,
    "code": CodeVerifier,
    "arithmetic": _arithmetic_factory,
}


def register_verifier(name: str, factory: Callable[..., Verifier]) -> None:
    """Register ``factory(**kwargs) -> Verifier`` under ``name``.

    The factory's verifiers must be picklable to run in :func:`verify_batch`
    workers. Re-registering a name replaces it; ``gym:`` names are reserved.
    """
    if name.startswith("gym:"):
        raise ValueError("names starting with 'gym:' are reserved for reasoning-gym datasets")
    _REGISTRY[name] = factory


def available_verifiers() -> list[str]:
    """Registered names (plus the ``gym:<dataset>`` family)."""
    return sorted(_REGISTRY) + ["gym:<dataset>"]


def get_verifier(name: str, **kwargs: Any) -> Verifier:
    """The verifier registered as ``name``; ``kwargs`` go to its factory.

    ``"gym:basic_arithmetic"`` gives a reasoning-gym verifier for that dataset.
    """
    if name.startswith("gym:"):
        dataset = name[len("gym:") :]
        if not dataset:
            raise ValueError("'gym:' needs a dataset name, e.g. 'gym:basic_arithmetic'")
        return _gym_factory(dataset, **kwargs)
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown verifier {name!r}; available: {available_verifiers()}") from None
    return factory(**kwargs)


def _resolve(kind_or_fn: str | Verifier, timeout_s: float | None) -> Verifier:
    if isinstance(kind_or_fn, str):
        kwargs = {"timeout_s": timeout_s} if timeout_s is not None and kind_or_fn in ("math", "code") else {}
        return get_verifier(kind_or_fn, **kwargs)
    if not callable(kind_or_fn):
        raise TypeError(f"expected a verifier name or a callable, got {type(kind_or_fn).__name__}")
    return kind_or_fn


def mark_timeout(result: VerifyResult) -> VerifyResult:
    """``result`` with ``timed_out`` set when its reason reports a timeout (math's deadline, the sandbox's)."""
    if not result.timed_out and reason_says_timed_out(result.reason):
        return dataclasses.replace(result, timed_out=True)
    return result


@dataclass(frozen=True)
class SandboxRefusal:
    """A worker's report that the code sandbox cannot run here: raised as
    :class:`SandboxUnavailable` in the parent, never scored as a silent 0."""

    message: str


def _pool_verify_one(verifier: Verifier, response: str, reference: Any) -> VerifyResult | SandboxRefusal:
    try:
        return _verify_one(verifier, response, reference)
    except SandboxUnavailable as err:
        return SandboxRefusal(str(err))


def _verify_one(verifier: Verifier, response: str, reference: Any) -> VerifyResult:
    """Run one sample (inside a worker, or inline when workers=0)."""
    start = time.monotonic()
    detailed = getattr(verifier, "detailed", None)
    if detailed is not None:
        result = detailed(response, reference)
        if not isinstance(result, VerifyResult):
            raise TypeError(f"{type(verifier).__name__}.detailed returned {type(result).__name__}, not VerifyResult")
        return mark_timeout(result)
    score = float(verifier(response, reference))
    # a plain callable gives a number only: say what the number means, for samples.jsonl readers
    name = getattr(verifier, "__qualname__", type(verifier).__name__)
    verdict = "correct" if score >= 1.0 else "wrong" if score <= 0.0 else f"partial credit {score:g}"
    return VerifyResult(score, int(score >= 1.0), 1, f"{verdict} ({name})", time.monotonic() - start)


def _warm_worker(preload: tuple[str, ...] = ()) -> None:
    # Import the heavy modules once per worker, before any deadline starts.
    import iprime.verifiers.code  # noqa: F401

    from .math import _warm_math_worker

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
    ) -> list[VerifyResult]:
        """Each response scored by its own row's verifier: :func:`iprime.verifiers.dispatch.score_rows`."""
        from .dispatch import score_rows

        return score_rows(responses, rows, scoring, pool=self, timeout_s=timeout_s)

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
