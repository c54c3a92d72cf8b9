"""Verifiers by name, and one sample through one verifier.

:func:`get_verifier` turns a name (``"math"``, ``"code"``, ``"arithmetic"``,
``"gym:<dataset>"``) into a :class:`Verifier`; :func:`register_verifier` adds
names. :func:`_verify_one` runs one sample, in a worker or inline; the batch
layer over it (worker processes, per-row dispatch in them) is
:mod:`iprime.verifiers.batch`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .result import VerifyResult, reason_says_timed_out

__all__ = [
    "Verifier",
    "MathVerifier",
    "CodeVerifier",
    "register_verifier",
    "get_verifier",
    "available_verifiers",
    "mark_timeout",
    "SandboxRefusal",
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
    """Registry entry ``"code"``: :func:`iprime.verifiers.code.verify_code`.

    ``reward``: ``"pass_all"``, ``"prime"`` or ``"fraction"`` (``None``: from
    ``all_or_nothing``); ``test_timeout_s``: each test's limit (``None``: the sample's
    ``timeout_s``); ``stdout_compare``: ``"tokens"`` or ``"lines"``; ``prelude``:
    ``"none"`` or ``"prime"`` (PRIME's imports and recursion limit before the program). See
    :func:`~iprime.verifiers.code.verify_code_detailed`.
    """

    def __init__(
        self,
        timeout_s: float = 10.0,
        all_or_nothing: bool = True,
        *,
        reward: str | None = None,
        test_timeout_s: float | None = None,
        stdout_compare: str = "tokens",
        prelude: str = "none",
    ) -> None:
        self.timeout_s = timeout_s
        self.all_or_nothing = all_or_nothing
        self.reward = reward
        self.test_timeout_s = test_timeout_s
        self.stdout_compare = stdout_compare
        self.prelude = prelude

    def __call__(self, response: str, reference: Any) -> float:
        return self.detailed(response, reference).score

    def detailed(self, response: str, reference: Any) -> VerifyResult:
        from .code import verify_code_detailed

        return verify_code_detailed(
            response,
            reference,
            self.timeout_s,
            self.all_or_nothing,
            reward=self.reward,
            test_timeout_s=self.test_timeout_s,
            stdout_compare=self.stdout_compare,
            prelude=self.prelude,
        )


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
