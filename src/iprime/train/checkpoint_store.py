"""Checkpoints on disk: atomic directories, checksummed manifests, finding and cleaning them.

What a checkpoint holds is :mod:`iprime.train.checkpoint`'s business; this module knows only
files. Layout::

    <out>/checkpoints/step-000010/state.pt        (or DCP shards, .metadata and meta.pt under torchrun)
    <out>/checkpoints/step-000010/manifest.json   SHA-256 and size of every file of the checkpoint
    <out>/checkpoints/LATEST                      the name of the newest complete checkpoint

**Written atomically.** A checkpoint is written into ``.tmp-step-*`` (:func:`new_partial_dir`),
each file is fsynced (:func:`write_file`), the manifest is written last, and the directory is
renamed into place (:func:`publish_checkpoint`); ``LATEST`` is then replaced with
``os.replace`` (atomic on POSIX). A run killed at any moment leaves the previous checkpoint
intact; the partial ``.tmp-step-*`` directories it leaves are removed by the next save and on
resume. The newest ``keep`` (2) checkpoints are kept, so a bad newest one has a fallback.

**Verified.** :func:`verify_checkpoint` checks every file against the manifest (missing, empty,
truncated or changed files are reported by name) and raises :class:`CheckpointError`.

**Found without changing anything.** :func:`resume_candidates` lists a run's checkpoints in
the order a resume tries them (``LATEST``, then newest first); :func:`find_checkpoint` resolves
a run directory, a ``step-*`` directory or a ``state.pt`` to a verified checkpoint.

**A full disk** is reported as ``OSError(ENOSPC, "No space left on device: ...")`` naming the
file, not as torch's ``basic_ios::clear: iostream error``; the partial directory is removed and
the previous checkpoint stays as it was.

Plain Python and the standard library: no torch, so the command line can look for a run's
checkpoints without loading it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "iprime-checkpoint"
MANIFEST_VERSION = 1
STEP_DIR = re.compile(r"^step-(\d+)$")
PARTIAL_PREFIXES = (".tmp-step-", ".LATEST.")
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, empty, corrupt, not plain data, or fails its checksum."""


class CheckpointWarning(UserWarning):
    """A bad checkpoint was skipped (resume fell back to an older one), or partial ones removed."""


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


def manifest_files(directory: str | Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``{file: {"bytes", "sha256"}}`` of a checkpoint directory, once the files a
    loadable checkpoint needs (:func:`required_files`) are known to be listed in it."""
    d = Path(directory)
    files = read_manifest(d)["files"]
    for name in required_files(d):
        if name not in files:
            raise CheckpointError(f"{d / name}: not listed in {d / MANIFEST}")
    return files


def verify_checkpoint(directory: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the bad files of a checkpoint directory: no
    manifest, a file missing, empty, of the wrong size or failing its SHA-256. (Under torchrun
    the ranks share the hashing: :func:`iprime.train.checkpoint_dcp.verify_on_ranks`.)"""
    d = Path(directory)
    problems = verify_files(d, manifest_files(d))
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


# ---------------------------------------------------------------------------------------------
# finding checkpoints: nothing on disk is changed
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
