"""Training data from files and datasets: one reader, one row check, errors that say where.

:func:`read_records` reads jsonl (``.jsonl``, ``.jsonl.gz``), ``.json`` (a list of objects, or
jsonl), ``.parquet``, a directory of such files, or a Hugging Face dataset (``hf:NAME`` /
``hf:NAME:SPLIT``) into :class:`Record` s, each remembering where it came from
(``"data/train.jsonl line 12"``, ``"data/train.parquet row 3"``, ``"hf:NAME[train] row 5"``;
jsonl lines count from 1, rows from 0). A jsonl line longer than ``max_row_bytes`` is refused
after reading at most ``max_row_bytes + 1`` bytes of it, so a stray 100 MB line can neither
hang the trainer nor fill its memory.

:func:`prepare_rows` turns records into prompts and references: the prompt (a string or a list
of ``{"role", "content"}`` messages) and the reference (``data.reference_key``, dotted keys
reach nested fields such as verl's ``reward_model.ground_truth``) are checked for every row, the
verifier's own row check runs on each, and every problem of every row is reported in one
:class:`DataError`. With a tokenizer, prompts longer than ``max_prompt_tokens`` are dropped (and
listed) or refused.

This module imports no torch: ``iprime data check`` stays fast.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .chat import render_prompt

__all__ = [
    "DEFAULT_MAX_ROW_BYTES",
    "DataError",
    "DataFileNotFound",
    "MissingField",
    "PreparedData",
    "Record",
    "get_field",
    "iter_jsonl_lines",
    "problem_message",
    "prepare_rows",
    "prompt_problems",
    "read_records",
    "resolve_reference_key",
    "with_system",
]

DEFAULT_MAX_ROW_BYTES = 16 << 20
"""Largest jsonl line / row read by default (``data.max_row_bytes``)."""

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
"""File kinds :func:`read_records` reads (also the files it takes from a directory)."""

MAX_LISTED_PROBLEMS = 20
"""Problems spelled out in one :class:`DataError`; the rest are counted."""


class DataWarning(UserWarning):
    """Something in the data was left out on purpose (files a data directory does not read)."""


class DataError(ValueError):
    """Training data that cannot be used; the message names the file, the line (jsonl, 1-based)
    or row (parquet / ``.json`` list / dataset, 0-based) and the field.

    ``where``: the location (``"data/train.jsonl line 12"``) when there is one; ``field``: the
    field at fault, if any; ``problem``: the message without its location; ``path`` / ``line``:
    the file and jsonl line, when known; ``problems``: every ``(where, field, problem)`` found
    when :func:`prepare_rows` refuses several rows at once (empty otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        field: str | None = None,
        problem: str | None = None,
        path: str | None = None,
        line: int | None = None,
        problems: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.where, self.field, self.problem = where, field, problem
        self.path, self.line = path, line
        self.problems = list(problems)


class DataFileNotFound(DataError, FileNotFoundError):
    """The data file or directory does not exist (both a :class:`DataError` and a
    ``FileNotFoundError``)."""


class MissingField(KeyError):
    """A (dotted) field is absent from a row. ``key``: the key asked for; ``missing``: the
    leading part of it that was not found (``"reward_model"`` when the row has no
    ``reward_model``, ``"reward_model.ground_truth"`` when only the inner key is missing)."""

    def __init__(self, key: str, missing: str, available: Sequence[str] = ()) -> None:
        super().__init__(key)
        self.key, self.missing, self.available = key, missing, list(available)

    def __str__(self) -> str:
        has = f" (has {sorted(map(str, self.available))})" if self.available else ""
        if self.missing == self.key:
            return f"field {self.key!r} is missing{has}"
        return f"field {self.key!r} is missing: no {self.missing!r}{has}"


@dataclass
class Record:
    """One row and where it came from (``"data/train.jsonl line 12"``, ``"x.parquet row 3"``)."""

    row: dict
    where: str


# --------------------------------------------------------------------------------- reading


def read_records(
    spec: str | Path, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES, limit: int | None = None
) -> list[Record]:
    """Every row of ``spec``, in order, with its location.

    ``spec``: a ``.jsonl`` / ``.jsonl.gz`` file; a ``.json`` file holding a list of objects (or
    jsonl); a ``.parquet`` file; a directory (each such file in it, sorted by name, not
    recursive); or ``hf:NAME`` / ``hf:NAME:SPLIT`` (default split ``train``), read with
    ``datasets`` (an optional dependency): NAME is a local data file, a local dataset directory
    (``save_to_disk`` or a directory of data files) or a hub id (which needs the network).

    A jsonl line over ``max_row_bytes`` bytes is refused without reading the rest of it; other
    rows are refused when their JSON form is larger. Non-UTF-8 bytes, malformed JSON, a
    line that is not an object and a file or directory without rows all raise
    :class:`DataError` naming the file and line (or row). ``limit``: stop after that many rows.
    """
    if max_row_bytes < 1:
        raise ValueError(f"max_row_bytes must be >= 1, got {max_row_bytes}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    text = str(spec)
    out: list[Record] = []
    if limit == 0:
        return out
    if isinstance(spec, str) and text.startswith("hf:"):
        sources: list[Iterator[Record]] = [_iter_hf(text[3:], max_row_bytes)]
    else:
        path = Path(spec)
        if not path.exists():
            raise DataFileNotFound(f"data file {text!r} does not exist", path=text)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _kind(p) is not None
            )
            if not files:
                listing = sorted(p.name for p in path.iterdir())[:10]
                raise DataError(
                    f"data directory {text!r} holds no {', '.join(SUFFIXES)} files (has {listing})", path=text
                )
            skipped = skipped_entries(path)
            if skipped:  # a README or a plot beside the data is fine; a data file in a subfolder is not read
                warnings.warn(
                    f"data directory {text}: read {len(files)} data file(s), skipped {len(skipped)} other entries: "
                    f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''} (only {', '.join(SUFFIXES)} "
                    "files directly in it are read)",
                    DataWarning,
                    stacklevel=2,
                )
        else:
            if _kind(path) is None:
                raise DataError(
                    f"data file {text!r}: unsupported kind; expected {', '.join(SUFFIXES)}, a directory of them, "
                    "or hf:NAME[:SPLIT]",
                    path=text,
                )
            files = [path]
        sources = [_iter_file(p, max_row_bytes) for p in files]
    for source in sources:
        for record in source:
            out.append(record)
            if limit is not None and len(out) >= limit:
                return out
    if not out:
        raise DataError(f"{text} has no rows", path=text)
    return out


def skipped_entries(directory: Path) -> list[str]:
    """The entries of a data directory that :func:`read_records` does not read, sorted: files of
    another kind (``README.md``, ``plot.png``) and subfolders (named with a trailing ``/``);
    hidden entries are left out."""
    names = []
    for p in directory.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_dir():
            names.append(p.name + "/")
        elif _kind(p) is None:
            names.append(p.name)
    return sorted(names)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def _iter_file(path: Path, max_row_bytes: int) -> Iterator[Record]:
    kind = _kind(path)
    if kind == ".parquet":
        yield from _iter_parquet(path, max_row_bytes)
    elif kind == ".json" and _first_byte(path) == b"[":
        yield from _iter_json_list(path, max_row_bytes)
    else:
        hint = " (a .json file holds a list of objects or one object per line)" if kind == ".json" else ""
        for lineno, row in iter_jsonl_lines(path, max_row_bytes=max_row_bytes, hint=hint):
            yield Record(row, f"{path} line {lineno}")


def _first_byte(path: Path) -> bytes:
    """The first non-whitespace byte of a file (b"" if none), skipping a UTF-8 byte order mark."""
    with path.open("rb") as f:
        head = f.read(3)
        if head != b"\xef\xbb\xbf":
            f.seek(0)
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1]
    return b""


def iter_jsonl_lines(
    path: str | Path, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES, hint: str = ""
) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a jsonl file (``.gz`` read
    transparently), read in binary, one line at a time, at most ``max_row_bytes + 1`` bytes at
    a time: a longer line stops the read with a :class:`DataError` naming the line and the
    limit, before the rest of it is read. Non-UTF-8 bytes, malformed JSON and a line that is not
    a JSON object raise :class:`DataError` naming the file and line (``path`` / ``line`` /
    ``problem`` attributes set). ``hint`` is appended to JSON errors."""
    path = Path(path)
    opener: Callable[..., BinaryIO] = gzip.open if path.name.lower().endswith(".gz") else open  # type: ignore[assignment]
    try:
        f = opener(path, "rb")
    except FileNotFoundError:
        raise DataFileNotFound(f"data file {str(path)!r} does not exist", path=str(path)) from None
    with f:
        lineno = 0
        while True:
            try:
                raw = f.readline(max_row_bytes + 1)
            except (OSError, EOFError) as err:  # a corrupt or truncated .gz
                raise _line_error(path, lineno + 1, f"cannot read the file ({err})") from None
            if not raw:
                return
            lineno += 1
            content = raw[:-1] if raw.endswith(b"\n") else raw
            if len(content) > max_row_bytes:
                raise _line_error(
                    path,
                    lineno,
                    f"line is longer than max_row_bytes={max_row_bytes} bytes (data.max_row_bytes); "
                    "refused before parsing",
                )
            if lineno == 1 and content.startswith(b"\xef\xbb\xbf"):
                content = content[3:]  # a UTF-8 byte order mark
            if not content.strip():
                continue
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = content[err.start : err.start + 1].hex()
                raise _line_error(
                    path,
                    lineno,
                    f"not valid UTF-8 (byte 0x{bad} at byte {err.start + 1} of the line); re-encode as UTF-8",
                ) from None
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise _line_error(path, lineno, f"invalid JSON ({err.msg} at column {err.colno}){hint}") from None
            except RecursionError:
                raise _line_error(path, lineno, "invalid JSON (nested too deeply)") from None
            if not isinstance(row, dict):
                raise _line_error(path, lineno, f"expected a JSON object, got {type(row).__name__}{hint}")
            yield lineno, row


def _line_error(path: Path, lineno: int, problem: str) -> DataError:
    where = f"{path} line {lineno}"
    return DataError(f"{where}: {problem}", where=where, problem=problem, path=str(path), line=lineno)


def _row_error(where: str, problem: str, path: str) -> DataError:
    return DataError(f"{where}: {problem}", where=where, problem=problem, path=path)


def _check_size(row: Mapping, where: str, max_row_bytes: int, path: str) -> None:
    # The JSON form's length is a cheap, close-enough measure of a row's size.
    size = len(json.dumps(row, default=str))
    if size > max_row_bytes:
        raise _row_error(where, f"row is larger than max_row_bytes={max_row_bytes} bytes (data.max_row_bytes)", path)


def _iter_json_list(path: Path, max_row_bytes: int) -> Iterator[Record]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise _line_error(path, lineno, f"not valid UTF-8 (byte 0x{data[err.start : err.start + 1].hex()})") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise _line_error(path, err.lineno, f"invalid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON (nested too deeply)", path=str(path)) from None
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        if not isinstance(row, dict):
            raise _row_error(where, f"expected a JSON object, got {type(row).__name__}", str(path))
        _check_size(row, where, max_row_bytes, str(path))
        yield Record(row, where)


def _iter_parquet(path: Path, max_row_bytes: int) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from err
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=256)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                where = f"{path} row {index}"
                _check_size(row, where, max_row_bytes, str(path))
                yield Record(row, where)
                index += 1
    except DataError:
        raise
    except Exception as err:  # pyarrow's ArrowInvalid, OSError, ...: a file that is not parquet
        raise DataError(f"{path}: cannot read parquet ({type(err).__name__}: {err})", path=str(path)) from None


def _iter_hf(name_split: str, max_row_bytes: int) -> Iterator[Record]:
    """``hf:NAME`` / ``hf:NAME:SPLIT`` through ``datasets``."""
    name, split = name_split, "train"
    if not Path(name).exists() and ":" in name:
        name, split = name.rsplit(":", 1)
    if not name or not split:
        raise DataError(f"hf:{name_split}: expected hf:NAME or hf:NAME:SPLIT")
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"reading hf:{name_split} needs the Hugging Face `datasets` package: pip install datasets "
            "(or convert the data to jsonl / parquet)"
        ) from err
    label = f"hf:{name}[{split}]"
    local = Path(name)
    try:
        if local.is_file():
            kind = _kind(local)
            builder = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".jsonl.gz": "json"}.get(kind or "")
            if builder is None:
                raise DataError(f"{label}: unsupported data file kind; expected {', '.join(SUFFIXES)}")
            ds = datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
        elif local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{label}: no split {split!r} (has {sorted(ds)})")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{label}: cannot load the dataset ({type(err).__name__}: {err})") from None
    for i, row in enumerate(ds):
        where = f"{label} row {i}"
        if not isinstance(row, dict):
            row = dict(row)
        _check_size(row, where, max_row_bytes, label)
        yield Record(row, where)


# ---------------------------------------------------------------------------------- fields


def get_field(row: Mapping, dotted_key: str) -> Any:
    """``row[dotted_key]``, following nested mappings for dotted keys
    (``"reward_model.ground_truth"``); a key that exists literally (dots and all) wins at each
    level. A list is indexed by a numeric part (``"prompt.0.content"``). A missing field raises
    :class:`MissingField` (a ``KeyError``) naming the part that was missing."""
    return _get(row, dotted_key, dotted_key, "")


def _get(obj: Any, key: str, full: str, prefix: str) -> Any:
    if isinstance(obj, Mapping) and key in obj:
        return obj[key]
    head, dot, rest = key.partition(".")
    here = f"{prefix}{head}"
    if isinstance(obj, Mapping):
        if dot and head in obj:
            return _get(obj[head], rest, full, here + ".")
        raise MissingField(full, here, list(obj))
    if isinstance(obj, (list, tuple)) and head.isdigit() and int(head) < len(obj):
        return obj[int(head)] if not dot else _get(obj[int(head)], rest, full, here + ".")
    raise MissingField(full, here)


def resolve_reference_key(rows: Sequence[Mapping], key: str) -> str:
    """``key`` itself, unless it is ``"auto"``: then ``"answer"`` if the first row has a
    top-level ``answer``, else ``"reward_model.ground_truth"`` if it has that (verl /
    Eurus-2-RL-Data rows), else a :class:`DataError` listing the first row's keys."""
    if key != "auto":
        return key
    if len(rows) == 0:
        raise DataError("no rows to detect data.reference_key from")
    first = rows[0]
    if isinstance(first, Mapping) and "answer" in first:
        return "answer"
    try:
        get_field(first, "reward_model.ground_truth")
        return "reward_model.ground_truth"
    except MissingField:
        pass
    keys = sorted(map(str, first)) if isinstance(first, Mapping) else type(first).__name__
    raise DataError(
        f"data.reference_key=auto: the first row has neither 'answer' nor 'reward_model.ground_truth' "
        f"(has {keys}); set data.reference_key to the field holding the reference",
        field="reference_key",
    )


# ------------------------------------------------------------------------------ preparing


@dataclass
class PreparedData:
    """Rows ready for training, index-aligned: ``rows[i]`` (unchanged), its ``prompts[i]`` (the
    prompt value, or a message list when a system prompt was put before a string prompt),
    ``references[i]`` and ``where[i]``. ``dropped_overlong``: where the rows over
    ``max_prompt_tokens`` were; ``prompt_tokens``: rendered prompt lengths (with a tokenizer)."""

    rows: list[dict]
    prompts: list[str | list[dict]]
    references: list
    where: list[str]
    reference_key: str
    dropped_overlong: list[str] = field(default_factory=list)
    prompt_tokens: list[int] | None = None


@dataclass
class _Examined:
    """What :func:`_examine` found: the usable rows and every problem of the others."""

    reference_key: str
    records: list[Record]
    prompts: list[str | list[dict]]
    references: list
    problems: list[tuple[str, str, str]]
    bad: set[str]


def prompt_problems(prompt: Any, prompt_key: str) -> list[tuple[str, str]]:
    """``(field, problem)`` for a prompt that is neither a non-empty string nor a non-empty list
    of ``{"role", "content"}`` messages with string contents."""
    if isinstance(prompt, str):
        return [] if prompt.strip() else [(prompt_key, "empty prompt")]
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            return [(prompt_key, "empty message list")]
        out = []
        for i, msg in enumerate(prompt):
            at = f"{prompt_key}[{i}]"
            if not isinstance(msg, Mapping):
                out.append((at, f"expected a {{'role', 'content'}} message, got {type(msg).__name__}"))
                continue
            role, content = msg.get("role"), msg.get("content")
            if not isinstance(role, str) or not role:
                out.append((f"{at}.role", "missing" if role is None else f"must be a non-empty string, got {role!r}"))
            if not isinstance(content, str):
                got = "missing" if "content" not in msg else f"must be a string, got {type(content).__name__}"
                out.append((f"{at}.content", got))
        return out
    if prompt is None:
        return [(prompt_key, "is null")]
    return [(prompt_key, f"must be a string or a list of {{'role', 'content'}} messages, got {type(prompt).__name__}")]


def with_system(prompt: str | Sequence[Mapping], system_prompt: str | None) -> str | list[dict]:
    """A string prompt with ``system_prompt`` before it as a system message (two messages), or
    as it is without one; a message list as it is (it says its own system message, if any)."""
    if isinstance(prompt, str):
        if system_prompt is None:
            return prompt
        return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
    return prompt if isinstance(prompt, list) else list(prompt)


def _examine(
    records: Sequence[Record],
    *,
    prompt_key: str,
    reference_key: str,
    system_prompt: str | None,
    check_row: Callable[[Any, Mapping], list[str]] | None,
) -> _Examined:
    if len(records) == 0:
        raise DataError("no rows")
    key = resolve_reference_key([records[0].row], reference_key)
    found = _Examined(key, [], [], [], [], set())
    for record in records:
        row, where = record.row, record.where
        problems: list[tuple[str, str]] = []
        prompt = reference = None
        if not isinstance(row, Mapping):
            problems.append(("(row)", f"expected a mapping, got {type(row).__name__}"))
        else:
            try:
                prompt = get_field(row, prompt_key)
            except MissingField as err:
                problems.append((prompt_key, str(err)))
            else:
                problems += prompt_problems(prompt, prompt_key)
            try:
                reference = get_field(row, key)
            except MissingField as err:
                problems.append((key, str(err)))
            else:
                if reference is None:
                    problems.append((key, "reference is null"))
                elif isinstance(reference, str) and not reference.strip():
                    problems.append((key, "reference is an empty string"))
                elif check_row is not None:
                    try:
                        # a problem may name its own field (an unknown ability is not the reference's fault)
                        problems += [(getattr(p, "field", key), str(p)) for p in check_row(reference, row) or ()]
                    except Exception as err:  # a verifier's check must not hide the other rows' problems
                        problems.append((key, f"row check failed: {type(err).__name__}: {err}"))
        if problems:
            found.bad.add(where)
            found.problems += [(where, f, p) for f, p in problems]
            continue
        found.records.append(record)
        found.prompts.append(with_system(prompt, system_prompt))
        found.references.append(reference)
    return found


def _count_tokens(
    tokenizer, prompts: Sequence[str | list[dict]], where: Sequence[str], prompt_key: str, batch: int = 256
) -> tuple[list[int | None], list[tuple[str, str, str]]]:
    """Rendered prompt lengths in tokens (``None`` where the chat template failed) and the
    failures as problems."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("tokenizer has no chat_template; prompts are rendered with it")
    texts: list[str | None] = []
    problems = []
    for prompt, w in zip(prompts, where):
        try:
            texts.append(render_prompt(tokenizer, prompt))
        except Exception as err:  # e.g. a template that insists on alternating roles
            texts.append(None)
            problems.append((w, prompt_key, f"chat template failed: {type(err).__name__}: {err}"))
    counts: list[int | None] = [None] * len(texts)
    todo = [i for i, t in enumerate(texts) if t is not None]
    for start in range(0, len(todo), batch):
        idx = todo[start : start + batch]
        ids = tokenizer([texts[i] for i in idx], add_special_tokens=False)["input_ids"]
        for i, seq in zip(idx, ids):
            counts[i] = len(seq)
    return counts, problems


def problem_message(problems: Sequence[tuple[str, str, str]], n_rows: int, n_bad: int) -> str:
    head = f"{len(problems)} problem(s) in {n_bad} of {n_rows} rows:"
    lines = [f"  {w}: {f}: {p}" for w, f, p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return "\n".join([head, *lines])


def prepare_rows(
    records: Sequence[Record],
    *,
    prompt_key: str = "prompt",
    reference_key: str = "auto",
    system_prompt: str | None = None,
    check_row: Callable[[Any, Mapping], list[str]] | None = None,
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    overlong: str = "drop",
) -> PreparedData:
    """Check every record and pull out its prompt and reference.

    Each row needs a prompt (``prompt_key``, dotted keys allowed): a non-empty string or a
    non-empty list of ``{"role", "content"}`` messages with string contents; and a reference
    (``reference_key``; ``"auto"``: :func:`resolve_reference_key`) that is not null or an empty
    string. ``check_row(reference, row) -> list[str]`` (the verifiers' check, e.g. "a math
    reference must be a string") adds its problems. All problems of all rows are collected and
    raised as one :class:`DataError` (the first :data:`MAX_LISTED_PROBLEMS` spelled out as
    ``"{where}: {field}: {problem}"``, the rest counted; ``err.problems`` holds them all).

    ``system_prompt`` is put before string prompts as a system message (message lists are left
    as they are). With a ``tokenizer`` each prompt is rendered with its chat template
    (:func:`iprime.data.chat.render_prompt`) and its tokens counted; rows over
    ``max_prompt_tokens`` are dropped and listed in ``dropped_overlong`` (``overlong="drop"``)
    or refused (``"error"``). Rows are never modified.
    """
    if overlong not in ("drop", "error"):
        raise ValueError(f"overlong must be 'drop' or 'error', got {overlong!r}")
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs a tokenizer to count prompt tokens")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    found = _examine(
        records, prompt_key=prompt_key, reference_key=reference_key, system_prompt=system_prompt, check_row=check_row
    )
    where = [r.where for r in found.records]
    counts: list[int | None] | None = None
    if tokenizer is not None:
        counts, failed = _count_tokens(tokenizer, found.prompts, where, prompt_key)
        found.problems += failed
        found.bad |= {w for w, _, _ in failed}
        if max_prompt_tokens is not None and overlong == "error":
            over = [(w, n) for w, n in zip(where, counts) if n is not None and n > max_prompt_tokens]
            found.problems += [
                (w, prompt_key, f"prompt is {n} tokens, over max_prompt_tokens={max_prompt_tokens}") for w, n in over
            ]
            found.bad |= {w for w, _ in over}
    if found.problems:
        raise DataError(
            problem_message(found.problems, len(records), len(found.bad)),
            where=found.problems[0][0],
            field=found.problems[0][1],
            problems=found.problems,
        )
    keep = list(range(len(found.records)))
    dropped: list[str] = []
    if counts is not None and max_prompt_tokens is not None:
        dropped = [where[i] for i in keep if counts[i] > max_prompt_tokens]  # type: ignore[operator]
        keep = [i for i in keep if counts[i] <= max_prompt_tokens]  # type: ignore[operator]
        if not keep:
            raise DataError(
                f"all {len(records)} rows have prompts over max_prompt_tokens={max_prompt_tokens} tokens "
                f"(shortest: {min(c for c in counts if c is not None)}); raise data.max_prompt_tokens",
                field=prompt_key,
            )
    return PreparedData(
        rows=[found.records[i].row for i in keep],
        prompts=[found.prompts[i] for i in keep],
        references=[found.references[i] for i in keep],
        where=[where[i] for i in keep],
        reference_key=found.reference_key,
        dropped_overlong=dropped,
        prompt_tokens=None if counts is None else [counts[i] for i in keep],  # type: ignore[misc]
    )
