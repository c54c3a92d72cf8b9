"""Per-row rewards: each training row picks its verifier by its ability / data source.

One run can mix math, code and reasoning-gym rows (Eurus-2-RL-Data, verl-style rows)::

    {"ability": "math", "data_source": "numina_olympiads", "reward_model": {"ground_truth": "42"}, ...}
    {"ability": "code", "data_source": "apps",
     "reward_model": {"ground_truth": '{"inputs": ["1 2\\n"], "outputs": ["3\\n"]}'}, ...}

:func:`score_row` is exactly what the trainer applies to one sample, and
:func:`~iprime.verifiers.batch.score_rows` the same over a batch in the
:class:`~iprime.verifiers.VerifierPool`'s worker processes, each sample with a
hard deadline.

**Which verifier.** With ``RowScoring.verifier="auto"`` a row's verifier comes
from the rules of :func:`register_row_verifier`. The row's **data source is
looked up first, then its ability**: a source names one dataset whose format is
known exactly, while an ability is a broad kind, so registering ``"apps"`` makes
APPS rows use your verifier even though they say ``ability: code``. Within each
field an exact key wins over a prefix key, and a longer prefix over a shorter
one. A key ending in ``/`` or ``:`` is a prefix (``"reasoning_gym/"``), and so
is one ending in ``*``, without the ``*`` (``"numina_*"``). Built-in rules:

============================== ==============================================
key                            verifier
============================== ==============================================
``math``                       ``"math"`` (:func:`verify_math`)
``code``                       ``"code"`` (:func:`verify_code`)
``arithmetic``                 ``"arithmetic"`` (the built-in task)
``gym:`` (prefix)              ``"gym:<rest>"``: ability or source ``gym:chain_sum``
``reasoning_gym:`` (prefix)    ``"gym:<rest>"``
``reasoning_gym/`` (prefix)    ``"gym:<rest>"``
============================== ==============================================

A verifier name ending in ``:`` (``"gym:"``) is a family: the part of the row's
value after the matched prefix completes it. A row no rule matches is an error
naming its ability / source and the registered keys. With ``verifier="NAME"``
every row uses that one verifier (:func:`iprime.verifiers.available_verifiers`).

**Which reference.** ``reference_key="auto"``: the row's top-level ``answer``
if present (and not null), else ``reward_model.ground_truth``; dotted keys
follow nested mappings (a literal top-level key with the dots wins). Per
verifier: math takes a string/number or a list of them; code takes tests as a
dict or a JSON string (APPS ``{"inputs", "outputs"}``; call-based with
``"fn_name"``, each input a list of arguments or, PRIME's form, a string of
JSON values one per line with JSON-string outputs; or ``{"asserts", "setup"}``);
a gym row takes its reasoning-gym entry (the row's ``entry`` field as
:class:`~iprime.verifiers.GymTask` writes it, or a reference mapping with
``answer``, or a bare answer plus the row's ``metadata``).

**Refuse, never score a silent 0.** A bad reference (a math reference that is a
dict because ``reference_key`` points at ``reward_model`` instead of
``reward_model.ground_truth``, tests that do not parse, an unknown ability) is
reported by :func:`check_row` before training and raises ``ValueError`` from
:func:`score_row` / :func:`~iprime.verifiers.batch.score_rows`; so does a reward function that returns
anything but a finite number. Only the response decides a 0: no answer, a wrong
answer, failing code, a timeout, or a verifier that crashes on this sample.

**Reward functions** (like TRL's): import paths ``"pkg.module:function"``,
each called as ``fn(response, row) -> float``. With any given, a sample scores::

    score = clip(verifier_score + sum_i w_i * f_i(response, row), 0, 1)

(``w_i`` from ``reward_weights``, 1.0 each by default). Each ``f_i`` must
return a finite real number, of either sign (a penalty may be negative; the
sum is clipped); anything else (``None``, NaN, a string, a tensor), or an
exception, is a :class:`RewardFunctionError` (a ``ValueError``) naming the function:
:func:`score_row` raises it, while a batch (``score_rows``, the trainer) scores that sample 0
with ``"verifier failed: reward function '...' raised ..."`` as its reason, counted like a
verifier's crash (``verify/failed``). ``passed``/``total`` and ``timed_out`` stay the verifier's.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iprime.data.boxed import parse_int_answer

from .code import parse_tests
from .registry import _REGISTRY, SandboxRefusal, Verifier, _resolve, _verify_one, available_verifiers, get_verifier
from .result import VerifyResult
from .sandbox import SandboxUnavailable

__all__ = [
    "RowScoring",
    "check_row",
    "register_row_verifier",
    "row_reference",
    "row_verifier_keys",
    "score_row",
    "score_row_detailed",
    "verifier_for_row",
]


# ----------------------------------------------------------------------------- settings


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
# What training can choose (verify.code_reward, verify.stdout_compare, verify.code_prelude); the
# code verifier itself also takes reward="fraction" (its all_or_nothing=False).
CODE_REWARD_MODES = ("pass_all", "prime")
STDOUT_COMPARE_MODES = ("tokens", "lines")
CODE_PRELUDE_MODES = ("none", "prime")


@dataclass
class RowScoring:
    """How rows are scored; the trainer builds it from ``data.*`` and ``verify.timeout_s``.

    Attributes:
        reference_key: field holding the reference; dotted keys reach nested
            fields. ``"auto"``: ``answer`` if the row has it at top level,
            else ``reward_model.ground_truth``.
        ability_key: field naming the row's kind (``"math"``, ``"code"``).
        source_key: field naming the row's dataset (``"apps"``,
            ``"reasoning_gym/chain_sum"``); looked up before the ability.
        verifier: ``"auto"`` (by row, see the module docstring) or one name
            of :func:`~iprime.verifiers.available_verifiers` for every row.
        reward_functions: import paths ``"pkg.module:function"``, each called
            as ``fn(response, row) -> float``.
        reward_weights: one weight per reward function (default 1.0 each).
        timeout_s: the verifiers' own per-sample timeout (math, code); the
            pool kills a worker at ``timeout_s + max(3, timeout_s / 4)``.
        code_reward: how code rows are rewarded: ``"pass_all"`` (1.0 when every
            test passes, else 0.0) or ``"prime"`` (PRIME's scorer: 1.0 when every
            test passes, else the share of the first ``min(#tests, 10)`` tests
            that pass; :func:`iprime.verifiers.code.prime_code_reward`).
        code_test_timeout_s: the limit of each code test (``None``: the sample's
            ``timeout_s``); a test that runs out fails alone.
        stdout_compare: how a stdin/stdout program's output is compared with the
            expected one: ``"tokens"`` (layout ignored) or ``"lines"`` (PRIME's;
            :func:`iprime.verifiers.code.outputs_match`).
        code_prelude: what runs before a stdin/stdout or call-based program:
            ``"none"`` (nothing: the program as written) or ``"prime"`` (PRIME's
            scorer's star imports and recursion limit of 600,000;
            :data:`iprime.verifiers.code.PRIME_PRELUDE`).
    """

    reference_key: str = "auto"
    ability_key: str = "ability"
    source_key: str = "data_source"
    verifier: str = "auto"
    reward_functions: tuple[str, ...] = ()
    reward_weights: tuple[float, ...] = ()
    timeout_s: float = 10.0
    code_reward: str = "pass_all"
    code_test_timeout_s: float | None = None
    stdout_compare: str = "tokens"
    code_prelude: str = "none"

    def __post_init__(self) -> None:
        for name in ("reference_key", "ability_key", "source_key", "verifier"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"RowScoring.{name} must be a non-empty string, got {value!r}")
        if isinstance(self.reward_functions, str) or isinstance(self.reward_weights, (str, int, float)):
            raise TypeError("RowScoring.reward_functions / reward_weights are sequences (one entry per function)")
        self.reward_functions = tuple(self.reward_functions)
        self.reward_weights = tuple(self.reward_weights)
        for path in self.reward_functions:
            if not isinstance(path, str) or not _IMPORT_PATH.match(path):
                raise ValueError(f"reward function {path!r} is not an import path 'package.module:function'")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_functions):
            raise ValueError(
                f"{len(self.reward_weights)} reward_weights for {len(self.reward_functions)} reward_functions; "
                "give one weight per function (or none: 1.0 each)"
            )
        for w in self.reward_weights:
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
                raise ValueError(f"reward weight {w!r} is not a finite number")
        self.reward_weights = tuple(float(w) for w in self.reward_weights)
        if not (isinstance(self.timeout_s, numbers.Real) and self.timeout_s > 0):
            raise ValueError(f"RowScoring.timeout_s must be > 0, got {self.timeout_s!r}")
        if self.code_reward not in CODE_REWARD_MODES:
            raise ValueError(f"RowScoring.code_reward must be one of {CODE_REWARD_MODES}, got {self.code_reward!r}")
        t = self.code_test_timeout_s
        if t is not None and not (isinstance(t, numbers.Real) and not isinstance(t, bool) and t > 0):
            raise ValueError(f"RowScoring.code_test_timeout_s must be > 0 (or None), got {t!r}")
        if self.stdout_compare not in STDOUT_COMPARE_MODES:
            raise ValueError(
                f"RowScoring.stdout_compare must be one of {STDOUT_COMPARE_MODES}, got {self.stdout_compare!r}"
            )
        if self.code_prelude not in CODE_PRELUDE_MODES:
            raise ValueError(f"RowScoring.code_prelude must be one of {CODE_PRELUDE_MODES}, got {self.code_prelude!r}")

    @property
    def weights(self) -> tuple[float, ...]:
        """The weight of each reward function (``reward_weights``, or 1.0 each)."""
        return self.reward_weights or (1.0,) * len(self.reward_functions)

    @classmethod
    def from_config(cls, data: Any, verify: Any = None) -> RowScoring:
        """From a ``DataConfig`` (and ``VerifyConfig`` for the timeouts and the code reward), or
        anything with those fields."""
        kwargs: dict[str, Any] = {
            "reference_key": data.reference_key,
            "ability_key": data.ability_key,
            "source_key": data.source_key,
            "verifier": data.verifier,
            "reward_functions": tuple(data.reward_functions),
            "reward_weights": tuple(data.reward_weights),
        }
        if verify is not None:
            kwargs["timeout_s"] = verify.timeout_s
            kwargs["code_reward"] = verify.code_reward
            kwargs["code_test_timeout_s"] = verify.code_test_timeout_s
            kwargs["stdout_compare"] = verify.stdout_compare
            kwargs["code_prelude"] = verify.code_prelude
        return cls(**kwargs)


# ----------------------------------------------------------------------------- rows


_MISSING = object()


def _get_field(row: Any, key: str) -> Any:
    """``row[key]``; else follow the dots (``"reward_model.ground_truth"``), a literal key with
    dots winning at each level and a numeric part indexing a list; ``_MISSING`` when absent.

    The same reading as ``iprime.data.sources.get_field`` (the loader's), kept local so that
    dispatch does not change under a data-module edit.
    """
    if isinstance(row, Mapping) and key in row:
        return row[key]
    head, dot, rest = key.partition(".")
    if isinstance(row, Mapping):
        if dot and head in row:
            return _get_field(row[head], rest)
        return _MISSING
    if isinstance(row, (list, tuple)) and head.isdigit() and int(head) < len(row):
        return row[int(head)] if not dot else _get_field(row[int(head)], rest)
    return _MISSING


def _reference_key(row: Mapping[str, Any], scoring: RowScoring) -> str:
    if scoring.reference_key != "auto":
        return scoring.reference_key
    if isinstance(row, Mapping) and row.get("answer") is not None:
        return "answer"
    return "reward_model.ground_truth"


def row_reference(row: Mapping[str, Any], scoring: RowScoring | None = None) -> Any:
    """The row's reference per ``scoring.reference_key`` (see :class:`RowScoring`).

    Raises ``ValueError`` naming the key and the row's keys when it is missing or null.
    """
    scoring = scoring or RowScoring()
    key = _reference_key(row, scoring)
    value = _get_field(row, key)
    if value is _MISSING or value is None:
        what = "missing" if value is _MISSING else "null"
        auto = (
            " (reference_key=auto: 'answer', else 'reward_model.ground_truth')"
            if scoring.reference_key == "auto"
            else ""
        )
        keys = sorted(map(str, row)) if isinstance(row, Mapping) else type(row).__name__
        raise ValueError(f"the reference field {key!r}{auto} is {what}; the row has {keys}: set data.reference_key")
    return value


# ----------------------------------------------------------------------------- dispatch registry


# key (ability / data_source value, or a prefix) -> verifier name, or a picklable Verifier.
_ROW_VERIFIERS: dict[str, str | Verifier] = {
    "math": "math",
    "code": "code",
    "arithmetic": "arithmetic",
    "gym:": "gym:",
    "reasoning_gym:": "gym:",
    "reasoning_gym/": "gym:",
}


def _prefix_of(key: str) -> str | None:
    """The prefix a key matches, or ``None`` for an exact key."""
    if key.endswith("*"):
        return key[:-1]
    if key.endswith(("/", ":")):
        return key
    return None


def register_row_verifier(key: str, verifier: str | Verifier) -> None:
    """Rows whose data source or ability is ``key`` use ``verifier``.

    Args:
        key: an ability value (``"math"``), a data-source value (``"apps"``),
            or a prefix: a key ending in ``/`` or ``:`` (``"reasoning_gym/"``),
            or in ``*`` (``"numina_*"`` matches ``numina_olympiads``).
        verifier: a verifier name (:func:`~iprime.verifiers.available_verifiers`,
            e.g. ``"math"``, ``"gym:chain_sum"``), a family name ending in
            ``:`` (``"gym:"``, prefix keys only: the row's value after the
            prefix completes it), or a ``(response, reference) -> float``
            callable. To run in the worker pool a callable must be picklable
            (a module-level function or an instance of a module-level class).

    Re-registering a key replaces its rule; the data source is looked up
    before the ability (see the module docstring).
    """
    if not isinstance(key, str) or not key or key == "*":
        raise ValueError(f"row verifier key must be a non-empty string, got {key!r}")
    if isinstance(verifier, str):
        if verifier.endswith(":"):
            if _prefix_of(key) is None:
                raise ValueError(
                    f"verifier family {verifier!r} needs a prefix key (ending in '/', ':' or '*'), got {key!r}"
                )
            if verifier != "gym:":
                raise ValueError(f"unknown verifier family {verifier!r}; the only family is 'gym:'")
        elif verifier not in _REGISTRY and not (verifier.startswith("gym:") and len(verifier) > 4):
            raise ValueError(f"unknown verifier {verifier!r}; available: {available_verifiers()}")
    elif not callable(verifier):
        raise TypeError(f"expected a verifier name or a callable, got {type(verifier).__name__}")
    _ROW_VERIFIERS[key] = verifier


def row_verifier_keys() -> list[str]:
    """The registered dispatch keys (exact keys and prefixes)."""
    return sorted(_ROW_VERIFIERS)


def _lookup(value: str) -> tuple[str | Verifier, str] | None:
    """(rule target, verifier name or '') for one ability / source value, or ``None``."""
    target = _ROW_VERIFIERS.get(value)
    if target is not None and (_prefix_of(value) is None or not (isinstance(target, str) and target.endswith(":"))):
        return target, target if isinstance(target, str) else ""
    best: str | None = None
    for key in _ROW_VERIFIERS:
        prefix = _prefix_of(key)
        if prefix and len(value) > len(prefix) and value.startswith(prefix):
            if best is None or len(prefix) > len(_prefix_of(best) or ""):
                best = key
    if best is None:
        return None
    target = _ROW_VERIFIERS[best]
    if isinstance(target, str) and target.endswith(":"):
        return target, target + value[len(_prefix_of(best) or "") :]
    return target, target if isinstance(target, str) else ""


def _callable_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"


_VERIFIERS: dict[tuple, Verifier] = {}


def _code_options(scoring: RowScoring) -> dict[str, Any]:
    """The code verifier's settings that differ from its defaults (a factory registered in
    place of ``"code"`` sees only what was asked of it)."""
    options: dict[str, Any] = {}
    if scoring.code_reward != "pass_all":
        options["reward"] = scoring.code_reward
    if scoring.code_test_timeout_s is not None:
        options["test_timeout_s"] = float(scoring.code_test_timeout_s)
    if scoring.stdout_compare != "tokens":
        options["stdout_compare"] = scoring.stdout_compare
    if scoring.code_prelude != "none":
        options["prelude"] = scoring.code_prelude
    return options


def _verifier_by_name(name: str, scoring: RowScoring) -> Verifier:
    options = _code_options(scoring) if name == "code" else {}
    key = (name, float(scoring.timeout_s), tuple(sorted(options.items())), id(_REGISTRY.get(name)))
    verifier = _VERIFIERS.get(key)
    if verifier is None:
        try:
            if options:
                verifier = get_verifier(name, timeout_s=scoring.timeout_s, **options)
            else:
                verifier = _resolve(name, scoring.timeout_s)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        except TypeError as err:  # a factory registered as "code" that takes no such setting
            if not options:
                raise
            raise ValueError(f"the verifier registered as {name!r} does not take {sorted(options)}: {err}") from None
        _VERIFIERS[key] = verifier
    return verifier


def _field(row: Mapping[str, Any], key: str) -> Any:
    value = _get_field(row, key)
    return None if value is _MISSING else value


def verifier_for_row(row: Mapping[str, Any], scoring: RowScoring | None = None) -> tuple[str, Verifier]:
    """``(name, verifier)`` that scores ``row``: by data source, then ability (module docstring).

    ``name`` is the verifier's registry name (``"math"``, ``"gym:chain_sum"``)
    or, for a registered callable, its ``module:qualname``. A row no rule
    matches raises ``ValueError`` naming its ability / source values and the
    registered keys.
    """
    scoring = scoring or RowScoring()
    if not isinstance(row, Mapping):
        raise ValueError(f"a row must be a mapping, got {type(row).__name__}")
    if scoring.verifier != "auto":
        return scoring.verifier, _verifier_by_name(scoring.verifier, scoring)
    source = _field(row, scoring.source_key)
    ability = _field(row, scoring.ability_key)
    for value in (source, ability):
        if isinstance(value, str) and value:
            found = _lookup(value)
            if found is not None:
                target, name = found
                if name:
                    return name, _verifier_by_name(name, scoring)
                return _callable_name(target), target  # type: ignore[return-value]

    def shown(key: str, value: Any) -> str:
        return f"{key}={value!r}" if value is not None else f"no {key!r} field"

    raise ValueError(
        f"no verifier for this row ({shown(scoring.ability_key, ability)}, {shown(scoring.source_key, source)}); "
        f"registered abilities / sources: {row_verifier_keys()}. Register one with "
        "iprime.verifiers.register_row_verifier(key, verifier), or score every row with one verifier "
        f"(data.verifier=NAME, one of {available_verifiers()})"
    )


# ----------------------------------------------------------------------------- references, per verifier


class _RowProblem(ValueError):
    """A row or setting that cannot be scored: raised, never scored 0."""


class RewardFunctionError(ValueError):
    """A ``reward_functions`` entry raised, or returned anything but a finite number, on one sample.

    :func:`score_row` raises it; in a batch (:func:`~iprime.verifiers.batch.score_rows`, the
    trainer) it fails only its sample: a 0 with ``"verifier failed: <this message>"`` as the
    reason, counted like a verifier's own failure."""


_MATH_TYPES = (str, int, float)


def _math_reference(reference: Any, key: str) -> Any:
    if isinstance(reference, Mapping):
        keys = sorted(map(str, reference))
        inner = [k for k in ("ground_truth", "answer", "solution", "target") if k in reference]
        if inner:
            hint = f": did you mean data.reference_key={key}.{inner[0]}?"
        else:
            hint = ": point data.reference_key at the gold answer (e.g. reward_model.ground_truth)"
        raise _RowProblem(f"the reference is a dict with keys {keys}{hint}")
    items = list(reference) if isinstance(reference, (list, tuple)) else [reference]
    if not items:
        raise _RowProblem("the reference is an empty list: no gold answer to compare with")
    for item in items:
        where = "the reference" if len(items) == 1 and not isinstance(reference, (list, tuple)) else "a reference item"
        if isinstance(item, bool) or not isinstance(item, _MATH_TYPES):
            raise _RowProblem(
                f"{where} is a {type(item).__name__} ({str(item)[:80]!r}); a math reference is a string or a "
                "number, or a list of them"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise _RowProblem(f"{where} is {item!r}")
        if isinstance(item, str) and not item.strip():
            raise _RowProblem(f"{where} is an empty string: every answer would score 0")
    return reference


def _code_reference(reference: Any) -> Any:
    try:
        tests = parse_tests(reference)
    except (ValueError, TypeError) as err:
        raise _RowProblem(str(err)) from None
    if not isinstance(tests, Mapping):
        return tests  # the code verifier's own form; it knows how to read it
    if "asserts" in tests:
        asserts = tests["asserts"]
        if isinstance(asserts, str) or not isinstance(asserts, Sequence) or len(asserts) == 0:
            raise _RowProblem("tests['asserts'] is empty: nothing would be verified")
    elif "inputs" in tests or "outputs" in tests:
        inputs, outputs = tests.get("inputs"), tests.get("outputs")
        if not isinstance(inputs, Sequence) or not isinstance(outputs, Sequence) or isinstance(inputs, str):
            raise _RowProblem("tests need both 'inputs' and 'outputs' lists")
        if len(inputs) == 0:
            raise _RowProblem("tests['inputs'] is empty: nothing would be verified")
        if len(inputs) != len(outputs):
            raise _RowProblem(f"tests have {len(inputs)} inputs but {len(outputs)} outputs")
        if "fn_name" not in tests and not all(isinstance(x, str) for x in inputs):
            raise _RowProblem(
                "tests['inputs'] are not all text (stdin) and there is no 'fn_name': "
                "call-based tests need the function's name in 'fn_name'"
            )
    return tests


def _gym_entry(reference: Any, row: Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(reference, Mapping):
        entry = reference
    elif isinstance(row.get("entry"), Mapping):
        entry = row["entry"]  # what GymTask.row writes beside "answer"
    elif isinstance(reference, (str, int, float)) and not isinstance(reference, bool):
        metadata = row.get("metadata")
        entry = {"answer": str(reference), "metadata": dict(metadata) if isinstance(metadata, Mapping) else {}}
    else:
        raise _RowProblem(
            f"a reasoning-gym reference is its entry (a dict with 'answer') or an answer string, "
            f"got {type(reference).__name__}"
        )
    if "answer" not in entry:
        keys = sorted(map(str, entry))
        hint = "" if "ground_truth" not in entry else " (it has 'ground_truth': set data.reference_key to the entry)"
        raise _RowProblem(f"the reasoning-gym entry has no 'answer'; keys {keys}{hint}")
    return entry


def _arithmetic_reference(reference: Any) -> Any:
    if isinstance(reference, bool) or not (
        isinstance(reference, int) or (isinstance(reference, str) and parse_int_answer(reference) is not None)
    ):
        raise _RowProblem(f"the arithmetic reference must be an integer, got {reference!r}")
    return reference


def _prepare_reference(name: str, reference: Any, row: Mapping[str, Any], key: str) -> Any:
    """The reference as the verifier takes it; ``_RowProblem`` when the row cannot be scored."""
    if reference is None:
        raise _RowProblem(f"the reference ({key!r}) is missing or null")
    if name == "math":
        return _math_reference(reference, key)
    if name == "code":
        return _code_reference(reference)
    if name.startswith("gym:"):
        return _gym_entry(reference, row)
    if name == "arithmetic":
        return _arithmetic_reference(reference)
    return reference


@dataclass(frozen=True)
class _Plan:
    name: str
    verifier: Verifier
    reference: Any


def _plan(row: Mapping[str, Any], scoring: RowScoring, reference: Any = _MISSING) -> _Plan:
    """Verifier and prepared reference of one row; ``ValueError`` when it cannot be scored."""
    name, verifier = verifier_for_row(row, scoring)
    if reference is _MISSING:
        reference = row_reference(row, scoring)
    try:
        prepared = _prepare_reference(name, reference, row, _reference_key(row, scoring))
    except _RowProblem as err:
        raise _RowProblem(f"{name} row: {err}") from None
    return _Plan(name, verifier, prepared)


def _gym_self_check(verifier: Verifier, entry: Mapping[str, Any]) -> list[str]:
    """The entry's own answer must score 1 with its dataset's scorer (else every sample would fail)."""
    try:
        task = verifier._get_task()  # type: ignore[attr-defined]
        score = float(task.dataset.score_answer(str(entry["answer"]), dict(entry)))
    except ImportError as err:
        return [str(err)]
    except Exception as err:  # noqa: BLE001 - any failure means the row cannot be scored
        return [f"reasoning-gym cannot score this entry: {type(err).__name__}: {err}"]
    if score < 1.0:
        return [f"the entry's own answer scores {score:g}, not 1, with its dataset's scorer (missing metadata?)"]
    return []


class FieldProblem(str):
    """A :func:`check_row` problem about another field than the reference: the text, with the
    field (``.field``) that a data check reports it under."""

    field: str

    def __new__(cls, text: str, field: str = "") -> FieldProblem:
        problem = super().__new__(cls, text)
        problem.field = field
        return problem


def check_row(reference: Any, row: Mapping[str, Any], scoring: RowScoring | None = None) -> list[str]:
    """Problems that keep ``row`` from being scored, found before training (empty list: none).

    ``reference`` is the row's reference as the loader read it (``scoring``'s
    ``reference_key``). Checks: a verifier matches the row's ability / source;
    math: the reference is a non-empty string / number, or a list of them (a
    dict is refused with a hint at ``reward_model.ground_truth``); code: the
    tests parse (``iprime.verifiers.code.parse_tests``) into a non-empty test
    list, with ``fn_name`` for call-based tests; reasoning-gym: the dataset
    exists and the entry's own answer scores 1; arithmetic: an integer.
    :func:`score_row` raises ``ValueError`` on the same problems.
    """
    scoring = scoring or RowScoring()
    try:
        name, verifier = verifier_for_row(row, scoring)
    except ValueError as err:  # the row's kind is at fault, not its reference: said under the ability field
        return [FieldProblem(str(err), scoring.ability_key)]
    try:
        prepared = _prepare_reference(name, reference, row, _reference_key(row, scoring))
    except _RowProblem as err:
        return [f"{name} row: {err}"]
    if name.startswith("gym:") and hasattr(verifier, "_get_task"):
        return [f"{name} row: {p}" for p in _gym_self_check(verifier, prepared)]
    return []


# ----------------------------------------------------------------------------- reward functions


_REWARD_FUNCTIONS: dict[str, Callable[[str, Mapping[str, Any]], float]] = {}


def _load_reward_function(path: str) -> Callable[[str, Mapping[str, Any]], float]:
    fn = _REWARD_FUNCTIONS.get(path)
    if fn is not None:
        return fn
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise _RowProblem(f"reward function {path!r}: cannot import {module_name!r}: {err}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _RowProblem(f"reward function {path!r}: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise _RowProblem(f"reward function {path!r} is a {type(obj).__name__}, not a function")
    _REWARD_FUNCTIONS[path] = obj
    return obj


def _reward_functions(scoring: RowScoring) -> list[Callable[[str, Mapping[str, Any]], float]]:
    return [_load_reward_function(p) for p in scoring.reward_functions]


def _with_rewards(result: VerifyResult, response: str, row: Mapping[str, Any], scoring: RowScoring) -> VerifyResult:
    """``clip(verifier score + sum_i w_i f_i(response, row), 0, 1)``; a bad return value raises."""
    total = float(result.score)
    parts = []
    for path, fn, weight in zip(scoring.reward_functions, _reward_functions(scoring), scoring.weights):
        try:
            value = fn(response, row)
        except Exception as err:
            raise RewardFunctionError(f"reward function {path!r} raised {type(err).__name__}: {err}") from err
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise RewardFunctionError(
                f"reward function {path!r} returned {value!r} ({type(value).__name__}); it must return a finite float"
            )
        total += weight * float(value)
        parts.append(f"{path}={float(value):g}x{weight:g}")
    score = min(1.0, max(0.0, total))
    reason = f"{result.reason}; verifier {result.score:g} + rewards {', '.join(parts)} -> {score:g}"
    return dataclasses.replace(result, score=score, reason=reason)


# ----------------------------------------------------------------------------- scoring


def _check_score(result: VerifyResult, name: str) -> VerifyResult:
    score = result.score
    if isinstance(score, bool) or not isinstance(score, numbers.Real) or not (0.0 <= float(score) <= 1.0):
        raise _RowProblem(f"verifier {name!r} returned {score!r}; scores must be numbers in [0, 1]")
    return result


def _score_planned(
    response: str, row: Mapping[str, Any] | None, scoring: RowScoring, name: str, verifier: Verifier, reference: Any
) -> VerifyResult:
    """Verifier + reward functions for one sample (in this process). Row problems raise ``_RowProblem``."""
    result = _check_score(_verify_one(verifier, response, reference), name)
    if scoring.reward_functions:
        assert row is not None
        result = _with_rewards(result, response, row, scoring)
    return result


def reward_failure(err: RewardFunctionError, elapsed_s: float = 0.0) -> VerifyResult:
    """The result of a sample whose reward function failed: 0, the reason starting ``verifier failed:``."""
    return VerifyResult(0.0, 0, 0, f"verifier failed: {err}", elapsed_s)


@dataclass(frozen=True)
class _Refused:
    """A worker's report of a :class:`_RowProblem` (raised again in the parent)."""

    message: str


def _score_task(
    response: str, row: Mapping[str, Any] | None, scoring: RowScoring, name: str, verifier: Verifier, reference: Any
) -> VerifyResult | _Refused | SandboxRefusal:
    """The pool's task (module-level, so picklable). A verifier's own exception fails only its sample."""
    try:
        return _score_planned(response, row, scoring, name, verifier, reference)
    except RewardFunctionError as err:  # this sample's 0, with the reason
        return reward_failure(err)
    except _RowProblem as err:
        return _Refused(str(err))
    except SandboxUnavailable as err:  # raised in the parent by _to_result: never a silent 0
        return SandboxRefusal(str(err))


def _with_code_options(
    scoring: RowScoring | None, code_reward: str | None = None, code_prelude: str | None = None
) -> RowScoring:
    """``scoring`` (default :class:`RowScoring()`) with the keywords that are given replacing its
    fields (validated by :class:`RowScoring`)."""
    scoring = scoring or RowScoring()
    changes = {
        name: value
        for name, value in (("code_reward", code_reward), ("code_prelude", code_prelude))
        if value is not None and value != getattr(scoring, name)
    }
    return dataclasses.replace(scoring, **changes) if changes else scoring


def score_row_detailed(
    response: str,
    row: Mapping[str, Any],
    scoring: RowScoring | None = None,
    *,
    code_reward: str | None = None,
    code_prelude: str | None = None,
) -> VerifyResult:
    """Score ``response`` for ``row`` in this process, exactly as the trainer does; see :func:`score_row`."""
    scoring = _with_code_options(scoring, code_reward, code_prelude)
    plan = _plan(row, scoring)
    return _score_planned(response, row, scoring, plan.name, plan.verifier, plan.reference)


def score_row(
    response: str,
    row: Mapping[str, Any],
    scoring: RowScoring | None = None,
    *,
    code_reward: str | None = None,
    code_prelude: str | None = None,
) -> float:
    """The reward in [0, 1] of ``response`` for ``row``: its verifier's score, plus weighted reward functions.

    The verifier comes from the row's data source / ability
    (:func:`verifier_for_row`), the reference from ``scoring.reference_key``.
    ``code_reward`` (``"pass_all"`` or ``"prime"``) replaces ``scoring.code_reward``
    for code rows: ``"pass_all"`` (the default) scores 1.0 when every test passes, else
    0.0; ``"prime"`` is PRIME's scorer's partial credit (1.0 when every test passes, else
    the share of the first ``min(#tests, 10)`` tests that pass). ``code_prelude``
    (``"none"`` or ``"prime"``) replaces ``scoring.code_prelude``: ``"prime"`` runs
    stdin/stdout and call-based programs after PRIME's star imports and recursion limit
    (:data:`~iprime.verifiers.code.PRIME_PRELUDE`). A row that cannot be
    scored (no rule matches, a bad reference, a reward function returning a non-finite
    value) raises ``ValueError``; a wrong, missing or timed-out answer scores 0. An
    exception of the verifier itself propagates here
    (:func:`~iprime.verifiers.batch.score_rows` scores that sample 0 with the reason).
    """
    return score_row_detailed(response, row, scoring, code_reward=code_reward, code_prelude=code_prelude).score
