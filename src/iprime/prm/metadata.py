"""The settings an implicit PRM's rewards depend on, saved beside its weights.

An implicit PRM's reward ``r_t = beta * log(pi_phi(y_t|.) / pi_ref(y_t|.))`` means something
only together with the ``beta`` it was trained with and the reference ``pi_ref`` it was read
against; its step rewards also need the text that ends a step. ``iprime prm train`` writes
these to ``iprime_prm.json`` in the PRM's directory, and the commands that load a PRM
(``iprime prm score``, ``iprime prm rerank``, ``iprime eval --prm``) read them back through
:func:`resolve_prm_settings`: a value given explicitly wins, else the saved one, else the
default here. The defaults are the one source of truth for ``beta`` and the step delimiter
(:class:`iprime.config.PRMConfig` uses them too). A PRIME run's PRM gets its metadata from
:func:`run_prm_metadata`, whichever writes it: the trainer's ``final/`` or ``iprime export``.

No torch import: :mod:`iprime.config` imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_STEP_DELIMITER",
    "METADATA_FILE",
    "PRMMetadata",
    "load_prm_metadata",
    "portable_reference",
    "prm_reference",
    "resolve_prm_settings",
    "run_prm_metadata",
    "save_prm_metadata",
]

DEFAULT_BETA = 0.05
"""Scale of the implicit reward (the PRIME paper's value)."""

DEFAULT_STEP_DELIMITER = "\n"
"""Text that ends a reasoning step: the built-in task writes one step per line."""

METADATA_FILE = "iprime_prm.json"


@dataclass
class PRMMetadata:
    """beta: the reward scale. reference: path (or hub id) of the reference model the rewards
    are read against, ``None`` if unknown; in the file a reference beside the PRM is written
    relative to the PRM's folder (``../policy``: :func:`portable_reference`), and read back
    resolved against it. step_delimiter: text that ends a step (``""``: the
    whole response is one step). granularity: ``token`` | ``step`` | ``whole``, how the PRM's
    rewards were placed in training. loss: ``ce`` | ``dpo``, the objective it was trained with."""

    beta: float
    reference: str | None
    step_delimiter: str
    granularity: str = "token"
    loss: str = "ce"


# field -> (accepted types, description for errors); bool is excluded from numbers explicitly
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "beta": ((int, float), "a number > 0"),
    "reference": ((str, type(None)), "a string or null"),
    "step_delimiter": ((str,), "a string"),
    "granularity": ((str,), "one of 'token', 'step', 'whole'"),
    "loss": ((str,), "one of 'ce', 'dpo'"),
}
_CHOICES = {"granularity": ("token", "step", "whole"), "loss": ("ce", "dpo")}


def _problems(data: dict) -> list[str]:
    """What is wrong with a metadata mapping (empty: nothing)."""
    names = [f.name for f in dataclasses.fields(PRMMetadata)]
    required = [f.name for f in dataclasses.fields(PRMMetadata) if f.default is dataclasses.MISSING]
    problems = [f"unknown key {k!r} (known: {', '.join(names)})" for k in data if k not in names]
    problems += [f"missing key {k!r}" for k in required if k not in data]
    for key, value in data.items():
        if key not in _TYPES:
            continue
        types, what = _TYPES[key]
        bad = isinstance(value, bool) or not isinstance(value, types)
        bad = bad or (key == "beta" and not value > 0) or (key in _CHOICES and value not in _CHOICES[key])
        if bad:
            problems.append(f"{key!r} must be {what}, got {value!r}")
    return problems


def save_prm_metadata(directory: str | Path, meta: PRMMetadata) -> Path:
    """Write ``meta`` to ``directory/iprime_prm.json`` (atomically: a temporary file, then
    ``os.replace``) and return the file's path."""
    data = dataclasses.asdict(meta)
    problems = _problems(data)
    if problems:
        raise ValueError(f"invalid PRM metadata: {'; '.join(problems)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / METADATA_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{METADATA_FILE}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_prm_metadata(directory: str | Path) -> PRMMetadata | None:
    """The metadata saved in ``directory/iprime_prm.json``; ``None`` when there is no such file
    (a PRM saved by other tools, or a hub id). A file that is not valid JSON, not an object,
    or has unknown keys, missing keys or values of the wrong type is a ``ValueError`` naming it."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    problems = _problems(data)
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    reference = _resolved_reference(data["reference"], Path(directory))
    return PRMMetadata(**{**data, "beta": float(data["beta"]), "reference": reference})


RELATIVE = ("./", "../")
"""How a reference written relative to the PRM's folder starts (a hub id ``org/name`` does not)."""


def portable_reference(reference: str | Path | None, prm_dir: str | Path) -> str | None:
    """``reference`` as ``iprime_prm.json`` stores it, so that a PRM copied elsewhere still finds
    it: a local model inside the folder that holds the PRM's folder (a run's ``final/policy``
    beside ``final/prm``) relative to the PRM's folder (``../policy``), so the two travel
    together; another existing local path made absolute (it means the same from any working
    directory on this machine; elsewhere the PRM's loaders say it is missing and ask for
    ``--ref``); anything else (a hub id) as given. ``None`` stays ``None``."""
    if reference is None:
        return None
    path = Path(reference)
    if not path.exists():
        return str(reference)
    target, home = path.resolve(), Path(prm_dir).resolve()
    if target.is_relative_to(home.parent):
        rel = os.path.relpath(target, home)
        return rel if rel.startswith("..") else f"./{rel}"
    return str(target)


def _resolved_reference(reference: str | None, prm_dir: Path) -> str | None:
    """A stored reference as a loader uses it, tried relative to the PRM's folder first: one
    written so (:data:`RELATIVE`) made absolute against ``prm_dir``, as is any other relative
    path that exists there (a file edited by hand); else as stored (an absolute path, a hub id)."""
    if reference is None or Path(reference).is_absolute():
        return reference
    beside = prm_dir / reference
    if reference.startswith(RELATIVE) or beside.exists():
        return str(beside.resolve())
    return reference


def _check_saved_reference(reference: str | None, prm_dir: str | Path) -> None:
    """A saved local reference that is not on this machine is an error naming what to do (a
    PRM's rewards mean nothing against another model): the PRM was copied without it."""
    if reference is None or not Path(reference).is_absolute() or Path(reference).exists():
        return
    raise ValueError(
        f"{Path(prm_dir) / METADATA_FILE}: the PRM's reference model {reference} (the model its rewards are read "
        "against) is not on this machine: copy it there (a reference saved beside the PRM, as a run's final/policy, "
        "is found relative to the PRM's folder), or give its path with --ref"
    )


def resolve_prm_settings(
    prm_dir: str | Path,
    *,
    beta: float | None = None,
    reference: str | Path | None = None,
    step_delimiter: str | None = None,
) -> PRMMetadata:
    """The settings to use a PRM with: each value given here (not ``None``) wins, else the one
    saved in ``prm_dir``'s metadata, else the default (:data:`DEFAULT_BETA`,
    :data:`DEFAULT_STEP_DELIMITER`; ``reference`` stays ``None`` when given nowhere).
    ``granularity`` and ``loss`` come from the metadata, else their defaults."""
    saved = load_prm_metadata(prm_dir)
    if saved is not None and reference is None:
        _check_saved_reference(saved.reference, prm_dir)
    meta = saved or PRMMetadata(beta=DEFAULT_BETA, reference=None, step_delimiter=DEFAULT_STEP_DELIMITER)
    return dataclasses.replace(
        meta,
        beta=meta.beta if beta is None else float(beta),
        reference=meta.reference if reference is None else str(reference),
        step_delimiter=meta.step_delimiter if step_delimiter is None else step_delimiter,
    )


def prm_reference(cfg, model_source: str | None, directory: str | Path) -> str | None:
    """The model a PRIME run's saved PRM (``directory/prm``) is read against, as
    ``iprime_prm.json`` stores it (:func:`portable_reference`), by ``cfg.model.reference``:
    ``sft``, the policy's starting model ``model_source`` (``None`` when unknown); ``policy``,
    the saved policy beside the PRM, ``../policy``; else the configured path."""
    ref, prm_dir = cfg.model.reference, Path(directory) / "prm"
    if ref == "sft":
        return portable_reference(model_source, prm_dir) if model_source else None
    if ref == "policy":  # written beside the PRM (maybe not yet: the relative path needs no look)
        return "../policy"
    return portable_reference(ref, prm_dir)


def run_prm_metadata(cfg, model_source: str | None, directory: str | Path) -> PRMMetadata:
    """The ``iprime_prm.json`` of the PRM a PRIME run trained, saved as ``directory/prm`` (beside
    ``directory/policy``): the run's ``prm.beta``, ``prm.step_delimiter``, ``prm.granularity`` and
    ``prm.loss``, and the reference its rewards are read against (:func:`prm_reference`).

    ``cfg``: the run's :class:`iprime.config.PrimeConfig` (read, not imported: the config imports
    this module). ``model_source``: where the policy started. The one builder for the trainer's
    ``save_pretrained`` and ``iprime export``, so both write the same file."""
    p = cfg.prm
    return PRMMetadata(
        beta=p.beta,
        reference=prm_reference(cfg, model_source, directory),
        step_delimiter=p.step_delimiter,
        granularity=p.granularity,
        loss=p.loss,
    )
