"""``iprime data check``: the typer sub-app (registered in :mod:`iprime.cli` as ``iprime data``).

``iprime data check PATH`` reads training data the way a run does (:func:`read_records`,
:func:`prepare_rows`'s checks, the verifiers' row check) and prints what it found: rows read,
rows per verifier, per ability and per data source, prompt lengths, and every bad row with its
location and problem. Exit code 0 when every row is usable, 2 when any row is bad or the data
cannot be read.

It sits at the top of the import map, beside :mod:`iprime.cli`, because it uses both
:mod:`iprime.data` and :mod:`iprime.verifiers` (which is built on :mod:`iprime.data`): the
verifiers' row check is :func:`iprime.verifiers.check_row` with the command's keys
(:class:`iprime.verifiers.RowScoring`), and each row's verifier name is
:func:`iprime.verifiers.verifier_for_row`'s. Both are imported when the check runs, as is the
tokenizer (transformers, only with ``--tokenizer``), so ``iprime --help`` stays fast: the
verifiers' sandbox and process-pool modules would add a quarter to it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from iprime.data.sources import (
    DEFAULT_MAX_ROW_BYTES,
    DataError,
    MissingField,
    _count_tokens,
    _examine,
    get_field,
    read_records,
)

CHECK_EXAMPLES = """Examples:
iprime data check data/train.parquet
iprime data check data/ --tokenizer runs/sft --max-prompt-tokens 1024
iprime data check hf:PRIME-RL/Eurus-2-RL-Data:train --limit 1000 --show 20"""

data_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training data: check a file, directory or dataset before a run.",
    epilog=CHECK_EXAMPLES,
)

PERCENTILES = (50, 90, 99)


@data_app.callback()
def _data() -> None:
    """Training data: check a file, directory or dataset before a run."""


@dataclass
class VerifierHooks:
    """The verifiers' part of the check: ``check_row(reference, row) -> list[str]`` (``None``:
    no per-row check) and ``name_of(row) -> str``, the verifier that would score the row."""

    check_row: Callable[[Any, Mapping], list[str]] | None
    name_of: Callable[[Mapping], str]


def verifier_hooks(
    *,
    reference_key: str = "auto",
    ability_key: str = "ability",
    source_key: str = "data_source",
    verifier: str = "auto",
) -> VerifierHooks:
    """The verifiers' row check and per-row verifier lookup, bound to these keys. With one
    ``verifier`` for every row there is no per-row check (as in training)."""
    from iprime.verifiers import RowScoring, check_row, verifier_for_row

    scoring = RowScoring(reference_key=reference_key, ability_key=ability_key, source_key=source_key, verifier=verifier)

    def name_of(row: Mapping) -> str:
        try:
            return verifier_for_row(row, scoring)[0]
        except ValueError:
            return "(no verifier)"

    return VerifierHooks(partial(check_row, scoring=scoring) if verifier == "auto" else None, name_of)


def verifier_counts(rows: Sequence[Mapping], hooks: VerifierHooks, source_key: str, ability_key: str) -> Counter:
    """Rows per verifier name. Rows alike in (source, ability) share a verifier: one lookup per pair."""
    kinds = Counter((_label(r, source_key), _label(r, ability_key)) for r in rows)
    first_of: dict = {}
    for r in rows:
        first_of.setdefault((_label(r, source_key), _label(r, ability_key)), r)
    verifiers: Counter = Counter()
    for pair, n in kinds.items():
        verifiers[hooks.name_of(first_of[pair])] += n
    return verifiers


@dataclass
class DataScan:
    """What :func:`scan_data` found: rows read, rows per verifier, and the bad rows as the data
    check lists them (``(where, field, problem)``)."""

    path: str
    rows: int
    verifiers: Counter
    bad_rows: int
    problems: list[tuple[str, str, str]]


def scan_data(cfg) -> DataScan:
    """Read and check a run's training data (``cfg.data``, a :class:`~iprime.config.PrimeConfig`
    section) as ``iprime data check`` does without a tokenizer: every row's prompt and
    reference, each against its verifier. Raises :class:`DataError` (or ``FileNotFoundError``,
    ``ValueError``) when the data cannot be read at all."""
    d = cfg.data
    records = read_records(d.train_path, max_row_bytes=d.max_row_bytes)
    hooks = verifier_hooks(
        reference_key=d.reference_key, ability_key=d.ability_key, source_key=d.source_key, verifier=d.verifier
    )
    found = _examine(
        records,
        prompt_key=d.prompt_key,
        reference_key=d.reference_key,
        system_prompt=d.system_prompt,
        check_row=hooks.check_row,
    )
    counts = verifier_counts([r.row for r in records], hooks, d.source_key, d.ability_key)
    return DataScan(str(d.train_path), len(records), counts, len(found.bad), found.problems)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (``p`` in (0, 100])."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _label(row: Mapping, key: str) -> str | None:
    try:
        value = get_field(row, key)
    except MissingField:
        return None
    return None if value is None else str(value)


def _chars(prompt: str | Sequence[Mapping]) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m["content"]) for m in prompt)


def _count_table(title: str, column: str, counts: Counter) -> Table:
    table = Table(title=title)
    table.add_column(column)
    table.add_column("rows", justify="right")
    for value, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        table.add_row(Text("(none)" if value is None else value), str(n))
    return table


def prompt_kinds_line(prompts: Sequence, rows: int) -> str:
    """What the usable rows' prompts are: ``prompts of 12 usable rows: 4 strings, 8 chat
    message lists``; with no usable row, says so and points at the bad rows instead of
    counting zeros."""
    if not prompts:
        return f"prompts: none usable: all {rows} rows are bad (the table below says why)"

    def count(n: int, what: str) -> str:
        return f"{n} {what}" + ("" if n == 1 else "s")

    n_str = sum(isinstance(p, str) for p in prompts)
    kinds = [count(n, what) for n, what in ((n_str, "string"), (len(prompts) - n_str, "chat message list")) if n]
    return f"prompts of {count(len(prompts), 'usable row')}: {', '.join(kinds)}"


@data_app.command("check", epilog=CHECK_EXAMPLES)
def check(
    path: str = typer.Argument(
        ..., help="a .jsonl(.gz) / .json / .parquet file, a directory of them, or hf:NAME[:SPLIT]"
    ),
    prompt_key: str = typer.Option("prompt", help="field holding the prompt (dotted keys reach nested fields)"),
    reference_key: str = typer.Option(
        "auto", help="field holding the reference; auto: 'answer', else 'reward_model.ground_truth'"
    ),
    ability_key: str = typer.Option("ability", help="field naming a row's kind (math, code, ...)"),
    source_key: str = typer.Option("data_source", help="field naming a row's source dataset"),
    verifier: str = typer.Option("auto", help="auto: each row's verifier by its source / ability; or one name"),
    tokenizer: str = typer.Option(None, help="tokenizer / model directory: prompt lengths in tokens"),
    max_prompt_tokens: int = typer.Option(None, help="longest rendered prompt in tokens (needs --tokenizer)"),
    overlong: str = typer.Option("drop", help="rows over --max-prompt-tokens: drop (reported) | error (bad rows)"),
    system_prompt: str = typer.Option(None, help="system message put before string prompts"),
    max_row_bytes: int = typer.Option(DEFAULT_MAX_ROW_BYTES, help="largest jsonl line / row in bytes"),
    limit: int = typer.Option(None, help="check the first N rows only"),
    show: int = typer.Option(50, help="bad rows listed at most"),
) -> None:
    """Read training data as a run would and report rows, verifiers, prompt lengths and bad rows.

    Exit code 0: every row is usable; 2: some row is bad, or the data cannot be read.
    """
    console = Console()

    def fail(message: str) -> NoReturn:
        console.print(Text.assemble(("error: ", "red"), message))
        raise typer.Exit(2)

    if overlong not in ("drop", "error"):
        fail(f"--overlong must be drop or error, got {overlong!r}")
    if max_prompt_tokens is not None and tokenizer is None:
        fail("--max-prompt-tokens needs --tokenizer (prompt lengths are counted in its tokens)")
    try:
        records = read_records(path, max_row_bytes=max_row_bytes, limit=limit)
        hooks = verifier_hooks(
            reference_key=reference_key, ability_key=ability_key, source_key=source_key, verifier=verifier
        )
    except (DataError, FileNotFoundError, ImportError, ValueError, TypeError) as err:
        fail(str(err))
    rows = [r.row for r in records]
    console.print(Text(f"read {len(records)} rows from {path}" + (f" (--limit {limit})" if limit else "")))

    kinds = Counter((_label(r, source_key), _label(r, ability_key)) for r in rows)
    verifiers = verifier_counts(rows, hooks, source_key, ability_key)
    console.print(_count_table("rows per verifier", "verifier", verifiers))
    console.print(_count_table(f"rows per {ability_key}", ability_key, Counter(a for _, a in kinds.elements())))
    console.print(_count_table(f"rows per {source_key}", source_key, Counter(s for s, _ in kinds.elements())))

    counts = None
    try:
        found = _examine(
            records,
            prompt_key=prompt_key,
            reference_key=reference_key,
            system_prompt=system_prompt,
            check_row=hooks.check_row,
        )
        where = [r.where for r in found.records]
        if tokenizer is not None:
            from iprime.models import load_tokenizer

            counts, failed = _count_tokens(load_tokenizer(tokenizer), found.prompts, where, prompt_key)
            found.problems += failed
            found.bad |= {w for w, _, _ in failed}
    except (DataError, FileNotFoundError, ValueError, OSError) as err:
        fail(str(err))
    console.print(Text(f"reference key: {found.reference_key}" + (" (auto)" if reference_key == "auto" else "")))
    console.print(Text(prompt_kinds_line(found.prompts, len(records))))
    if hooks.check_row is None:
        console.print(Text(f"note: references not checked by a verifier (--verifier {verifier} scores every row)"))

    if counts is not None:
        lengths, unit = sorted(c for c in counts if c is not None), "tokens"
    else:
        lengths, unit = sorted(_chars(p) for p in found.prompts), "characters"
    if lengths:
        table = Table(title="prompt length" + (" (chat template applied)" if counts is not None else ""))
        for name in ["unit", "rows"] + [f"p{p}" for p in PERCENTILES] + ["max"]:
            table.add_column(name, justify="left" if name == "unit" else "right")
        table.add_row(
            unit, str(len(lengths)), *[f"{percentile(lengths, p):g}" for p in PERCENTILES], f"{lengths[-1]:g}"
        )
        console.print(table)
        if counts is None:
            console.print(Text("(in characters of the message contents: give --tokenizer for tokens)"))

    over: list[tuple[str, int]] = []
    if counts is not None and max_prompt_tokens is not None:
        over = [(w, n) for w, n in zip(where, counts) if n is not None and n > max_prompt_tokens]
        if overlong == "error":
            found.problems += [
                (w, prompt_key, f"prompt is {n} tokens, over max_prompt_tokens={max_prompt_tokens}") for w, n in over
            ]
            found.bad |= {w for w, _ in over}
            over = []
        elif over:
            console.print(
                Text(
                    f"{len(over)} rows over --max-prompt-tokens={max_prompt_tokens} would be dropped "
                    f"(first: {', '.join(w for w, _ in over[:5])})"
                )
            )

    if found.problems:
        table = Table(title=f"bad rows: {len(found.bad)} of {len(records)}")
        for col in ("where", "field", "problem"):
            table.add_column(col, overflow="fold")
        for w, f, p in found.problems[:show]:
            table.add_row(Text(w), Text(f), Text(p))
        console.print(table)
        if len(found.problems) > show:
            console.print(Text(f"... and {len(found.problems) - show} more problems (--show N lists more)"))
        console.print(Text.assemble(("FAIL: ", "red"), f"{len(found.bad)} of {len(records)} rows are bad"))
        raise typer.Exit(2)
    console.print(Text.assemble(("OK: ", "green"), f"{len(records) - len(over)} of {len(records)} rows usable"))
