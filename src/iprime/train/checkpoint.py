"""Checkpoints that load safely: atomic, checksummed, plain data only, with a fallback.

Layout::

    <out>/checkpoints/step-000010/state.pt        (or DCP shards, .metadata and meta.pt under torchrun)
    <out>/checkpoints/step-000010/manifest.json   SHA-256 and size of every file of the checkpoint
    <out>/checkpoints/LATEST                      the name of the newest complete checkpoint

**Written atomically.** A checkpoint is written into ``.tmp-step-*``, each file is fsynced, the
manifest is written last, and the directory is renamed into place; ``LATEST`` is then replaced
with ``os.replace`` (atomic on POSIX). A run killed at any moment leaves the previous checkpoint
intact; the partial ``.tmp-step-*`` directories it leaves are removed by the next save and on
resume. The newest ``keep`` (2) checkpoints are kept, so a bad newest one has a fallback.

**Plain data only.** Files are read with ``torch.load(weights_only=True)``: tensors and plain
Python data (dicts, lists, tuples, str, numbers, None), nothing that runs code when unpickled. On
save every value is converted to plain data (:func:`to_plain`): the rollout buffer
(:class:`~iprime.rollout.types.RolloutBatch`) becomes a tagged dict of its fields, numpy arrays
tensors; a value of any other type is refused at save time, naming its key. :func:`from_plain`
rebuilds them on load. No ``add_safe_globals`` is needed.

**Verified on load.** :func:`verify_checkpoint` checks every file against the manifest (missing,
empty, truncated or changed files are reported by name). :func:`load_run_checkpoint` tries
``LATEST`` first, then older checkpoints, newest first: a bad one is reported in a
:class:`CheckpointWarning` naming the file and what is wrong, and the previous good one is
loaded. When none is usable it raises :class:`CheckpointError` listing each.

**Read outside a run.** :func:`find_checkpoint` resolves a run directory, a ``step-*``
directory or a ``state.pt`` to a verified checkpoint without changing anything on disk;
:func:`read_checkpoint` gives its plain data (the run's config under ``"config"``) and
:func:`load_model_weights` its model weights alone, from either format, in one process
(``iprime export``, :mod:`iprime.train.export`).

**A full disk** is reported as ``OSError(ENOSPC, "No space left on device: ...")`` naming the
file, not as torch's ``basic_ios::clear: iostream error``; the partial directory is removed and
the previous checkpoint stays as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "iprime-checkpoint"
MANIFEST_VERSION = 1
STEP_DIR = re.compile(r"^step-(\d+)$")
PARTIAL_PREFIXES = (".tmp-step-", ".LATEST.")
_TAG = "__iprime_type__"
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, empty, corrupt, not plain data, or fails its checksum."""


class CheckpointWarning(UserWarning):
    """A bad checkpoint was skipped (resume fell back to an older one), or partial ones removed."""


# ---------------------------------------------------------------------------------------------
# RNG state as plain data
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain data: python's is a tuple of ints, numpy's
    ``(name, keys as an int64 tensor, pos, has_gauss, cached_gaussian)``, torch's a uint8 tensor."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (
        str(name),
        torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        int(pos),
        int(has_gauss),
        float(cached),
    )
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (also accepts numpy's own ``get_state()`` tuple)."""
    random.setstate(_python_rng(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])


def _python_rng(state: Any) -> tuple:
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)


# ---------------------------------------------------------------------------------------------
# plain data: what torch.load(weights_only=True) reads back
def rollout_batch_to_state(batch) -> dict[str, Any]:
    """A :class:`~iprime.rollout.types.RolloutBatch` as a dict of tensors, lists and ints (its
    public fields); :func:`rollout_batch_from_state` rebuilds it."""
    return {
        "prompt_ids": batch.prompt_ids,
        "prompt_mask": batch.prompt_mask,
        "response_ids": batch.response_ids,
        "response_mask": batch.response_mask,
        "sampling_logprobs": batch.sampling_logprobs,
        "truncated": batch.truncated,
        "prompt_index": batch.prompt_index,
        "texts": list(batch.texts),
        "prompt_texts": list(batch.prompt_texts),
        "pad_id": int(batch.pad_id),
        "tensors": dict(batch.tensors),
        "meta": {k: list(v) for k, v in batch.meta.items()},
    }


def rollout_batch_from_state(state: dict[str, Any]):
    from iprime.rollout.types import RolloutBatch

    fields = dict(state)
    fields["tensors"], fields["meta"] = dict(fields.get("tensors", {})), dict(fields.get("meta", {}))
    return RolloutBatch(**fields)


def _is_rollout_batch(obj: Any) -> bool:
    from iprime.rollout.types import RolloutBatch

    return isinstance(obj, RolloutBatch)


_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


def to_plain(obj: Any, where: str = "state") -> Any:
    """``obj`` with every value made plain data for ``torch.load(weights_only=True)``: tensors,
    containers (dict, list, tuple) and scalars stay; a ``RolloutBatch`` becomes a tagged dict, a
    numpy array a tagged tensor, a numpy scalar a Python number, a ``Path`` a string. Any other
    type is a ``TypeError`` naming its key (``where``), raised before anything is written."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN_SCALARS):
        return obj
    if isinstance(obj, dict):
        if _TAG in obj:
            raise TypeError(f"{where}: a dict key may not be {_TAG!r} (reserved by the checkpoint format)")
        return _same_mapping(obj, {k: to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return {_TAG: "ndarray_list", "data": to_plain(obj.tolist(), where)}
        return {_TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(obj)).clone()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if _is_rollout_batch(obj):
        return {_TAG: "RolloutBatch", "state": to_plain(rollout_batch_to_state(obj), where)}
    raise TypeError(
        f"{where}: cannot checkpoint a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold "
        "tensors and plain data only (convert it to a dict of tensors, lists and numbers)"
    )


def _same_mapping(original: dict, items: dict) -> dict:
    """``items`` as a plain dict, or as an ``OrderedDict`` keeping ``_metadata`` (the module
    versions ``load_state_dict`` reads) when ``original`` is a state dict."""
    if not isinstance(original, OrderedDict):
        return items
    out = OrderedDict(items)
    metadata = getattr(original, "_metadata", None)
    if metadata is not None:
        out._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())  # type: ignore[attr-defined]
    return out


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`: tagged dicts become ``RolloutBatch`` / numpy arrays again."""
    if isinstance(obj, dict):
        tag = obj.get(_TAG)
        if tag == "RolloutBatch":
            return rollout_batch_from_state(from_plain(obj["state"]))
        if tag == "ndarray":
            return obj["data"].numpy()
        if tag == "ndarray_list":
            return np.array(from_plain(obj["data"]), dtype=object)
        return _same_mapping(obj, {k: from_plain(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------
# writing: fsynced files, full disks named as such
def _error_chain(err: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint's CheckpointException
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]


def _disk_is_full(err: BaseException, path: Path) -> bool:
    for e in _error_chain(err):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
    if any("iostream error" in str(e) or "file write failed" in str(e) for e in _error_chain(err)):
        # torch's C++ writer loses the errno; a (nearly) full filesystem explains it
        try:
            return shutil.disk_usage(_existing_parent(path)).free < (1 << 20)
        except OSError:
            return False
    return False


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_error(err: BaseException, path: Path, what: str = "checkpoint file") -> OSError:
    """The ``OSError`` to raise for a failed write of ``path``: ``ENOSPC`` with "No space left on
    device" when the disk is full (whatever torch's message says), else the error, naming the path."""
    if _disk_is_full(err, path):
        return OSError(
            errno.ENOSPC,
            f"No space left on device: cannot write the {what} {path}; the previous checkpoint is intact, "
            "free some space and resume",
        )
    code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
    return OSError(code, f"cannot write the {what} {path}: {err}")


def write_file(path: str | Path, write: Callable[[BinaryIO], None], what: str = "checkpoint file") -> None:
    """``write(fh)`` into ``path``, flushed and fsynced; a failure raises :func:`write_error`'s
    ``OSError``. Writing through a Python file object keeps the real errno (``ENOSPC``) in the
    exception chain, which torch's own path-based writer loses."""
    path = Path(path)
    try:
        with path.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except (OSError, RuntimeError) as err:
        raise write_error(err, path, what) from err


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# checksums
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digests(directory: str | Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hex}}`` for files ``names`` under ``directory``."""
    d = Path(directory)
    return {n: {"bytes": (d / n).stat().st_size, "sha256": sha256_file(d / n)} for n in names}


def checkpoint_files(directory: str | Path) -> list[str]:
    """Every regular file under ``directory`` (relative, sorted) except the manifest."""
    d = Path(directory)
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: str | Path, step: int, digests: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``manifest.json`` (SHA-256 and size of each file) into a checkpoint directory: the
    last file written, so a directory with a manifest is complete. ``digests`` (from
    :func:`file_digests`) skips hashing files already hashed elsewhere (other ranks)."""
    d = Path(directory)
    files = checkpoint_files(d)
    known = dict(digests or {})
    known.update(file_digests(d, [f for f in files if f not in known]))
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "step": int(step),
        "files": {f: known[f] for f in files},
    }
    path = d / MANIFEST
    write_file(path, lambda fh: fh.write(json.dumps(manifest, indent=1).encode()), what="checkpoint manifest")
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (an incomplete checkpoint, or one written by an older iprime)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path}: not an iprime checkpoint manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
        for v in files.values()
    ):
        raise CheckpointError(f"{path}: malformed 'files' entry")
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{path}: lists a file outside the checkpoint ({name!r})")
    return manifest


def verify_files(directory: str | Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """Problems (one line each, naming the file) of ``files`` against their manifest entries."""
    d, problems = Path(directory), []
    for name, entry in sorted(files.items()):
        path = d / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            what = "empty" if size == 0 else "truncated" if size < entry["bytes"] else "longer than written"
            problems.append(f"{path}: {what} ({size} bytes, the manifest says {entry['bytes']})")
            continue
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            problems.append(
                f"{path}: checksum mismatch (SHA-256 {digest[:16]}..., the manifest says {entry['sha256'][:16]}...)"
            )
    return problems


_CHECKPOINT_FILES = ("state.pt", ".metadata", "meta.pt")


def is_checkpoint_dir(path: str | Path) -> bool:
    """Whether ``path`` is one checkpoint directory: it holds ``state.pt``, or DCP's files."""
    d = Path(path)
    return d.is_dir() and any((d / name).exists() for name in _CHECKPOINT_FILES)


def checkpoint_kind(directory: str | Path) -> str:
    """``"dcp"`` (``torch.distributed.checkpoint`` shards + ``meta.pt``) or ``"torch"`` (``state.pt``)."""
    d = Path(directory)
    return "dcp" if (d / ".metadata").exists() or (d / "meta.pt").exists() else "torch"


def required_files(directory: str | Path) -> list[str]:
    """The files a loadable checkpoint must have: ``state.pt``, or DCP's ``.metadata`` + ``meta.pt``."""
    return [".metadata", "meta.pt"] if checkpoint_kind(directory) == "dcp" else ["state.pt"]


def verify_checkpoint(directory: str | Path, dist=None) -> None:
    """Raise :class:`CheckpointError` naming the first bad file of a checkpoint directory:
    no manifest, a file missing, empty, of the wrong size or failing its SHA-256. Under torchrun
    (``dist`` enabled) each rank hashes a share of the files and all ranks get the same answer."""
    d = Path(directory)
    manifest = read_manifest(d)
    files = manifest["files"]
    for name in required_files(d):
        if name not in files:
            raise CheckpointError(f"{d / name}: not listed in {d / MANIFEST}")
    names = sorted(files)
    if dist is not None and getattr(dist, "enabled", False):
        from iprime.train import distributed as D

        share = {n: files[n] for n in names[dist.rank :: dist.world_size]}
        problems = sorted(p for part in D.all_gather_objects(verify_files(d, share), dist) for p in part)
    else:
        problems = verify_files(d, files)
    if problems:
        raise CheckpointError("; ".join(problems))


# ---------------------------------------------------------------------------------------------
# the checkpoints directory
def step_of(path: str | Path) -> int | None:
    m = STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete-looking checkpoint directories under ``root``, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(dirs, key=lambda p: step_of(p), reverse=True)


def clean_partial_checkpoints(root: str | Path) -> list[Path]:
    """Remove what a killed save leaves in ``root``: ``.tmp-step-*`` directories and ``.LATEST.*``
    files. Returns the removed paths (reported in a :class:`CheckpointWarning`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(PARTIAL_PREFIXES):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        warnings.warn(
            f"removed partial checkpoint data left by an interrupted save: {', '.join(p.name for p in removed)}",
            CheckpointWarning,
            stacklevel=3,
        )
    return removed


def new_partial_dir(root: str | Path, step: int, suffix: str | None = None) -> Path:
    """Clean leftovers and create ``.tmp-step-<step>-<suffix>`` under ``root``."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_partial_checkpoints(root)
        tmp = root / f".tmp-step-{step:06d}-{suffix or os.getpid()}"
        tmp.mkdir()
    except OSError as err:
        raise write_error(err, root, "checkpoint directory") from err
    return tmp


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` (plain data after :func:`to_plain`) as ``step-<step>/state.pt`` with its
    manifest, atomically; keep the newest ``keep`` checkpoints. On any failure the partial
    directory is removed and the previous checkpoint is left as it was."""
    root = Path(out_dir) / "checkpoints"
    plain = to_plain(state)  # a type error is raised before anything is written
    tmp = new_partial_dir(root, step)
    try:
        write_file(tmp / "state.pt", lambda fh: torch.save(plain, fh))
        write_manifest(tmp, step)
        return publish_checkpoint(tmp, root / f"step-{step:06d}", keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_checkpoint(tmp: Path, final: Path, keep: int = 2) -> Path:
    """Rename a complete checkpoint directory into place, point ``LATEST`` at it (both with
    ``os.replace``, atomic on POSIX) and keep only the newest ``keep`` checkpoints.

    Checkpoints of *later* steps than ``final`` are removed too: they belong to a timeline that
    a resume abandoned (it fell back from a bad newest checkpoint to an older one)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = final.parent
    try:
        old = None
        if final.exists():  # re-saving a step: move the old one aside first, never lose both
            old = root / f".tmp-step-replaced-{final.name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        latest_tmp = root / f".LATEST.{os.getpid()}"
        write_file(latest_tmp, lambda fh: fh.write(final.name.encode()), what="checkpoint marker")
        os.replace(latest_tmp, root / "LATEST")
        _fsync_dir(root)
    except OSError as err:
        if old is not None and not final.exists():
            os.replace(old, final)  # put the checkpoint being replaced back
        raise write_error(err, final) from err
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    step = step_of(final)
    checkpoints = list_checkpoints(root)
    newer = [p for p in checkpoints if step is not None and step_of(p) > step]
    older = [p for p in checkpoints if p not in newer and p != final]
    for p in newer + older[keep - 1 :]:  # ``older`` is newest first: keep final and keep-1 before it
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """``state.pt`` of a checkpoint directory, checked against its manifest (``verify``) and read
    as plain data (``weights_only=True``). A bad file raises :class:`CheckpointError` naming it."""
    directory = Path(path)
    file = directory / "state.pt"
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(file)!r}")
    if verify:
        verify_checkpoint(directory)
    return load_torch_file(file)


def load_torch_file(file: str | Path) -> Any:
    """``torch.load(file, weights_only=True)`` then :func:`from_plain`; errors name the file."""
    file = Path(file)
    try:
        size = file.stat().st_size
    except OSError as err:
        raise CheckpointError(f"{file}: cannot be read ({err})") from None
    if size == 0:
        raise CheckpointError(f"{file}: empty file (0 bytes): the save that wrote it was cut short")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises, name the file
        if "Weights only load failed" in str(err):
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else "")
            raise CheckpointError(
                f"{file}: refused: it holds objects other than tensors and plain data, which could run "
                f"code when loaded ({detail})"
            ) from None
        raise CheckpointError(f"{file}: corrupt or unreadable ({type(err).__name__}: {err})") from None
    return from_plain(state)


# ---------------------------------------------------------------------------------------------
# a training run's checkpoints
def save_run_checkpoint(
    out_dir: str | Path,
    step: int,
    fmt: str,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    dist,
    *,
    keep: int = 2,
) -> Path:
    """A training run's state: ``models`` and ``optimizers`` by role (``policy``, ``prm``,
    ``value``) plus ``meta`` (step, scheduler, prompt stream, buffer, RNG, config).

    ``fmt="torch"``: one ``state.pt`` holding ``meta``, each model's state dict under its role
    and each optimizer's under ``<role>_optimizer``. ``fmt="dcp"``: sharded
    ``torch.distributed.checkpoint`` files plus ``meta.pt``, loadable at any world size. Both
    get a ``manifest.json`` of SHA-256 checksums and keep the newest ``keep`` checkpoints."""
    from iprime.train import distributed as D

    if fmt == "dcp":
        return D.save_dcp_checkpoint(out_dir, step, models, optimizers, meta, dist, keep=keep)
    state = dict(meta)
    for role, model in models.items():
        state[role], state[f"{role}_optimizer"] = model.state_dict(), optimizers[role].state_dict()
    return save_checkpoint(out_dir, step, state, keep=keep)


def _latest_name(root: Path) -> str | None:
    marker = root / "LATEST"
    if not marker.is_file():
        return None
    try:
        name = marker.read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if step_of(name) is None:
        warnings.warn(
            f"{marker}: does not name a checkpoint ({name[:40]!r}); using the newest one found",
            CheckpointWarning,
            stacklevel=3,
        )
        return None
    if not (root / name).is_dir():
        warnings.warn(
            f"{marker} names {name}, which does not exist; using the newest one found", CheckpointWarning, stacklevel=3
        )
        return None
    return name


def resume_candidates(out_dir: str | Path) -> list[Path]:
    """Checkpoints to try on resume, in order: the one ``LATEST`` names, then the others, newest first."""
    root = Path(out_dir) / "checkpoints"
    found = list_checkpoints(root)
    latest = _latest_name(root)
    if latest is not None:
        found = [root / latest] + [p for p in found if p.name != latest]
    return found


def load_run_checkpoint(
    out_dir: str | Path,
    models: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    dist,
) -> dict[str, Any] | None:
    """Load the newest *good* checkpoint under ``out_dir`` into ``models`` and ``optimizers``;
    returns its ``meta`` (``None`` when there is none). A DCP checkpoint loads at any world
    size, a ``state.pt`` in a single process.

    Each candidate (``LATEST`` first, then older ones, newest first) is verified against its
    manifest and read as plain data; a bad one is reported in a :class:`CheckpointWarning`
    naming the file and what is wrong, and the next older one is tried. Partial ``.tmp-step-*``
    directories are removed first. When every checkpoint is bad: :class:`CheckpointError`."""
    from iprime.train import distributed as D

    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    if dist.is_main:
        clean_partial_checkpoints(root)
    D.barrier(dist)
    candidates = resume_candidates(out_dir)
    if dist.enabled:  # every rank must try the same list (rank 0's view of the directory)
        candidates = [Path(p) for p in D.all_gather_objects([str(p) for p in candidates], dist)[0]]
    problems: list[str] = []
    for path in candidates:
        try:
            meta = _load_candidate(path, models, optimizers, dist)
        except CheckpointError as err:
            problems.append(str(err))
            warnings.warn(f"skipping bad checkpoint {path.name}: {err}", CheckpointWarning, stacklevel=2)
            continue
        if problems:
            warnings.warn(
                f"resumed from {path} instead of the newest checkpoint, which is bad (see above)",
                CheckpointWarning,
                stacklevel=2,
            )
        return meta
    if problems:
        raise CheckpointError(f"no usable checkpoint in {root}: " + " | ".join(problems))
    return None


def _load_candidate(path: Path, models, optimizers, dist) -> dict[str, Any]:
    """Load one checkpoint directory; a bad file raises :class:`CheckpointError`."""
    from iprime.train import distributed as D

    if checkpoint_kind(path) == "dcp":
        return D.load_dcp_checkpoint(path, models, optimizers, dist=dist)
    if not (path / "state.pt").exists():
        raise CheckpointError(f"{path}: holds neither state.pt nor DCP files (.metadata, meta.pt)")
    if dist.enabled:
        raise ValueError(
            f"{path} is a single-process (state.pt) checkpoint; resume it with one process, "
            'or write it with train.checkpoint_format="dcp" to resume at another world size'
        )
    state = load_checkpoint(path)
    for role, model in models.items():
        model.load_state_dict(state[role])
        # "optimizer": the policy's optimizer in checkpoints written before the roles were uniform
        optimizers[role].load_state_dict(state.get(f"{role}_optimizer", state.get("optimizer")))
    return state


# ---------------------------------------------------------------------------------------------
# reading a checkpoint outside a run (``iprime export``): nothing on disk is changed
def find_checkpoint(path: str | Path) -> Path:
    """The verified checkpoint directory ``path`` names, read-only (nothing is cleaned or rewritten).

    ``path`` is a run directory (its newest good checkpoint, in the order a resume tries them:
    ``LATEST``, then newest first; a bad one is skipped with a :class:`CheckpointWarning`), its
    ``checkpoints/`` directory, one ``checkpoints/step-*`` directory, or a ``state.pt`` file.
    Raises ``FileNotFoundError`` when nothing there is a checkpoint, :class:`CheckpointError`
    when the checkpoint named is incomplete or corrupt (or every one of a run is)."""
    p = Path(path)
    if p.is_file():
        if p.name != "state.pt":
            raise CheckpointError(f"{p}: not a checkpoint (expected state.pt, a checkpoint or a run directory)")
        p = p.parent
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}: the path does not exist")
    if is_checkpoint_dir(p):
        verify_checkpoint(p)
        return p
    if step_of(p) is not None:
        raise CheckpointError(
            f"{p}: an incomplete checkpoint (it holds neither state.pt nor DCP's .metadata and meta.pt)"
        )
    return _newest_good(p.parent if list_checkpoints(p) else p)


def _newest_good(out_dir: Path) -> Path:
    """The first checkpoint of :func:`resume_candidates` that passes :func:`verify_checkpoint`."""
    candidates = resume_candidates(out_dir)
    if not candidates:
        raise FileNotFoundError(
            f"no checkpoint in {out_dir}: expected a run directory with checkpoints/step-*, "
            "a checkpoints/step-* directory or a state.pt file"
        )
    problems: list[str] = []
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            warnings.warn(f"skipping bad checkpoint {path.name}: {err}", CheckpointWarning, stacklevel=3)
            continue
        return path
    raise CheckpointError(f"no usable checkpoint in {out_dir / 'checkpoints'}: " + " | ".join(problems))


def read_checkpoint(directory: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The plain data of one checkpoint directory, checked against its manifest (``verify``).

    ``state.pt``: the whole state (the run's ``meta`` keys, each role's model state dict under
    its role and its optimizer's under ``<role>_optimizer``). DCP: ``meta.pt`` only; the weights
    stay in the shards until :func:`load_model_weights`. Either way ``["config"]`` is the run's
    config as plain data and ``["step"]`` its step."""
    d = Path(directory)
    if checkpoint_kind(d) == "torch":
        return load_checkpoint(d, verify=verify)
    if verify:
        verify_checkpoint(d)
    return load_torch_file(d / "meta.pt")


def load_model_weights(
    directory: str | Path, models: dict[str, torch.nn.Module], state: dict[str, Any] | None = None
) -> None:
    """Load each role's saved weights into ``models`` (``{"policy": module, ...}``), no optimizer
    state, in one process. ``state``: what :func:`read_checkpoint` returned for a ``state.pt``
    checkpoint (saves reading it twice). A role the checkpoint lacks is a :class:`CheckpointError`;
    weights that do not fit the module are ``load_state_dict``'s ``RuntimeError``."""
    d = Path(directory)
    if checkpoint_kind(d) == "dcp":
        _load_dcp_weights(d, models)
        return
    state = read_checkpoint(d) if state is None else state
    for role, model in models.items():
        if not isinstance(state.get(role), dict):
            raise CheckpointError(f"{d / 'state.pt'}: holds no {role!r} model (saved roles: {_saved_roles(state)})")
        model.load_state_dict(state[role])


def _saved_roles(state: dict[str, Any]) -> str:
    return ", ".join(sorted(k for k in state if f"{k}_optimizer" in state)) or "none"


def _load_dcp_weights(directory: Path, models: dict[str, torch.nn.Module]) -> None:
    """Model state dicts from DCP shards, read in this process without a process group (DCP
    reshards to whatever asks: here one process holding full tensors)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    saved = {key.split(".", 1)[0] for key in dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata}
    for role in models:
        if role not in saved:
            roles = ", ".join(sorted(r for r in saved if not r.endswith("_optimizer"))) or "none"
            raise CheckpointError(f"{directory}: holds no {role!r} model (saved roles: {roles})")
    state = {role: get_model_state_dict(model) for role, model in models.items()}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... assuming ... a single process": it is
        warnings.filterwarnings("ignore", message=".*torch.distributed.*single process", category=UserWarning)
        dcp.load(state, checkpoint_id=str(directory))
    for role, model in models.items():
        set_model_state_dict(model, state[role])
