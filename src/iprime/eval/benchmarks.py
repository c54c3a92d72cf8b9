"""Benchmarks as lists of eval rows, loaded from files shipped inside the package.

Every loader returns rows of the same shape::

    {"id": str, "benchmark": str, "prompt": str, "reference": ..., "kind": "math" | "code",
     "verifier": "math" | "code" | "arithmetic"}

``prompt`` is the *user message* (the runner renders it with the model's chat template);
``reference`` is what the verifier takes: a list of gold answer strings (math, via
:mod:`iprime.verifiers.rows`), a tests dict (code), or the integer answer string (the built-in
arithmetic task). The prompts follow the PRIME paper:

- math: ``question + MATH_SUFFIX`` (``"\\n\\nPresent the answer in LaTex format: \\boxed{Your answer}"``)
- code: ``question + CODE_SUFFIX`` (write Python, fenced ```python block at the end)
- arithmetic: the task's own prompt unchanged, so the numbers agree with the trainer's
  evaluation (:func:`iprime.eval.loop.evaluate_accuracy`).

Names (:data:`BENCHMARKS`): ``math500`` (500), ``aime2024`` (30; ``aime`` = 2022-2024, 90;
``aimeYYYY`` any year in the file), ``amc`` (AMC 2022-2023, 83; ``amc2022``/``amc2023``),
``minerva`` (272), ``olympiadbench`` (text-only English, 675), ``humaneval`` (164), ``mbpp``
(399), ``leetcode`` (180), ``arithmetic`` (the quickstart's 200 held-out problems). Any
``.jsonl`` / ``.json`` / ``.parquet`` file, directory of them or ``hf:NAME[:SPLIT]`` is a custom
benchmark, read as the training data is (:func:`load_file_benchmark`).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from iprime.data.arithmetic import held_out_rows
from iprime.data.sources import (
    DEFAULT_MAX_ROW_BYTES,
    DataError,
    MissingField,
    get_field,
    prepare_rows,
    problem_message,
    read_records,
    with_system,
)
from iprime.verifiers import rows as adapters

__all__ = [
    "BENCHMARKS",
    "CODE_SUFFIX",
    "MATH_SUFFIX",
    "benchmark_names",
    "file_benchmark_name",
    "is_file_benchmark",
    "load_benchmark",
    "load_file_benchmark",
    "load_jsonl_benchmark",
    "read_data_file",
]

MATH_SUFFIX = "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"
CODE_SUFFIX = "\n\nWrite Python code to solve the problem. Present the code in \n```python\nYour code\n```\nat the end."


def read_data_file(name: str) -> list[dict]:
    """Rows of a shipped data file ``iprime/eval/data/<name>`` (``.jsonl.gz`` or ``.json.gz``).

    ``.json.gz`` files are either a list of rows or pandas' column-oriented dump
    ``{field: {row_key: value}}`` (MATH-500), which is turned into rows in ``row_key`` order.
    """
    ref = resources.files("iprime.eval").joinpath("data", name)
    if not ref.is_file():
        raise FileNotFoundError(f"benchmark data file {name!r} is not in the iprime package (iprime/eval/data)")
    with ref.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        text = f.read()
    if name.endswith(".jsonl.gz"):
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name}:{lineno}: invalid JSON ({e.msg})") from None
        return out
    data = json.loads(text)
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        first = next(iter(data.values()))
        keys = sorted(first, key=lambda k: int(k) if str(k).isdigit() else str(k))
        return [{field: col.get(k) for field, col in data.items()} for k in keys]
    raise ValueError(f"{name}: expected a list of rows or a column-oriented object")


def _row(benchmark: str, id_: object, prompt: str, reference: object, kind: str, verifier: str | None = None) -> dict:
    return {
        "id": str(id_),
        "benchmark": benchmark,
        "prompt": prompt,
        "reference": reference,
        "kind": kind,
        "verifier": verifier or kind,
    }


def _math_row(benchmark: str, adapter: str, id_: object, question: str, raw: dict) -> dict:
    return _row(benchmark, id_, question + MATH_SUFFIX, adapters.math_golds(adapter, raw), "math")


def _year(url: str, contest: str) -> int:
    m = re.search(rf"/(\d{{4}})_{contest}", url)
    if m is None:
        raise ValueError(f"cannot read the {contest} year from url {url!r}")
    return int(m.group(1))


def _load_math500(name: str) -> list[dict]:
    return [_math_row(name, "math500", r["id"], r["problem"], r) for r in read_data_file("math500.json.gz")]


def _contest_loader(
    contest: str, file: str, adapter: str, years: tuple[int, ...] | None
) -> Callable[[str], list[dict]]:
    def load(name: str) -> list[dict]:
        rows = read_data_file(file)
        picked = [r for r in rows if years is None or _year(r["url"], contest) in years]
        if not picked:
            raise ValueError(f"{name}: no {contest} rows for years {years}")
        # ids restart at 0 each year in the files; the AoPS page name is unique and readable
        return [_math_row(name, adapter, r["url"].rsplit("index.php/", 1)[-1], r["question"], r) for r in picked]

    return load


def _load_minerva(name: str) -> list[dict]:
    return [_math_row(name, "minerva", r["idx"], r["problem"], r) for r in read_data_file("minerva_math.jsonl.gz")]


def _load_olympiadbench(name: str) -> list[dict]:
    # The shipped file is already the text-only English open-ended maths split (OE_TO_maths_en_COMP);
    # the context field, when present, precedes the question.
    out = []
    for r in read_data_file("olympiadbench.jsonl.gz"):
        question = r["question"] if not r.get("context") else f"{r['context']}\n\n{r['question']}"
        out.append(_math_row(name, "olympiadbench", r["id"], question, r))
    return out


def _load_humaneval(name: str) -> list[dict]:
    # The HumanEval "prompt" is a Python stub (signature + docstring); it is shown as code.
    return [
        _row(
            name,
            r["task_id"],
            f"Complete the following Python function:\n```python\n{r['prompt']}```" + CODE_SUFFIX,
            adapters.humaneval_tests(r),
            "code",
        )
        for r in read_data_file("humaneval.jsonl.gz")
    ]


def _load_mbpp(name: str) -> list[dict]:
    # "instruction" = task text + the first test assert, which fixes the function's name/signature.
    return [
        _row(name, r["task_id"], r["instruction"] + CODE_SUFFIX, adapters.mbpp_tests(r), "code")
        for r in read_data_file("mbpp.json.gz")
    ]


def _load_leetcode(name: str) -> list[dict]:
    # "prompt_sft" = problem statement + the starter code (class Solution) in a fenced block.
    return [
        _row(name, r["task_id"], r["prompt_sft"] + CODE_SUFFIX, adapters.leetcode_tests(r), "code")
        for r in read_data_file("leetcode.jsonl.gz")
    ]


def _load_arithmetic(name: str) -> list[dict]:
    """The quickstart's held-out rows: the ones ``iprime quickstart`` evaluates."""
    rows = held_out_rows()
    return [
        _row(name, f"{i}:{r['expression']}", r["prompt"], r["answer"], "math", "arithmetic") for i, r in enumerate(rows)
    ]


BENCHMARKS: dict[str, Callable[[str], list[dict]]] = {
    "math500": _load_math500,
    "aime2024": _contest_loader("AIME", "aime.jsonl.gz", "aime", (2024,)),
    "aime": _contest_loader("AIME", "aime.jsonl.gz", "aime", None),
    "amc": _contest_loader("AMC", "amc.jsonl.gz", "amc", (2022, 2023)),
    "minerva": _load_minerva,
    "olympiadbench": _load_olympiadbench,
    "humaneval": _load_humaneval,
    "mbpp": _load_mbpp,
    "leetcode": _load_leetcode,
    "arithmetic": _load_arithmetic,
}
_YEARLY = {"aime": ("AIME", "aime.jsonl.gz", "aime"), "amc": ("AMC", "amc.jsonl.gz", "amc")}


def benchmark_names() -> list[str]:
    """Shipped benchmark names (``aimeYYYY`` / ``amcYYYY`` also work for any year in the files)."""
    return list(BENCHMARKS)


FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
"""A benchmark named by a file of one of these kinds (or a directory, or ``hf:NAME[:SPLIT]``) is
read by :func:`load_file_benchmark`: the reader of the training data."""


def is_file_benchmark(name: str) -> bool:
    """Whether ``name`` is a data file / directory / ``hf:`` dataset rather than a shipped name."""
    return name.endswith(FILE_SUFFIXES) or name.startswith("hf:") or Path(name).is_dir()


def load_benchmark(
    name: str, *, limit: int | None = None, system_prompt: str | None = None, **file_options
) -> list[dict]:
    """Rows of a shipped benchmark, or of a data file (``.jsonl(.gz)``, ``.json``, ``.parquet``,
    a directory of them or ``hf:NAME[:SPLIT]``; ``file_options`` go to
    :func:`load_file_benchmark`). ``limit`` keeps the first rows. ``system_prompt`` goes before
    every string prompt as a system message (a message-list prompt is kept as it is). Ids are
    checked unique, since resuming an evaluation keys on them."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    yearly = re.fullmatch(r"(aime|amc)(\d{4})", name)
    is_file = is_file_benchmark(name)
    if file_options and not is_file:
        raise ValueError(f"options {sorted(file_options)} only apply to benchmark files, not {name!r}")
    if is_file:
        rows = load_file_benchmark(name, limit=limit, **file_options)
    elif name in BENCHMARKS:
        rows = BENCHMARKS[name](name)
    elif yearly:
        rows = _contest_loader(*_YEARLY[yearly.group(1)], (int(yearly.group(2)),))(name)
    else:
        raise ValueError(
            f"unknown benchmark {name!r}; shipped: {benchmark_names()} (or aimeYYYY, amcYYYY, a .jsonl / .json / "
            ".parquet file, a directory of them, hf:NAME[:SPLIT])"
        )
    if system_prompt is not None:
        rows = [{**r, "prompt": with_system(r["prompt"], system_prompt)} for r in rows]
    seen: set[str] = set()
    for r in rows:
        if r["id"] in seen:
            raise ValueError(f"{name}: duplicate row id {r['id']!r}")
        seen.add(r["id"])
    return rows[:limit] if limit is not None else rows


def file_benchmark_name(spec: str) -> str:
    """The name a data file's rows are reported under: a file's name up to its first dot
    (``data/validation.parquet`` -> ``validation``), a directory's name, or ``hf:org/name:split``
    -> ``name_split`` (also the ``eval/<name>/...`` of ``data.eval_path`` in training)."""
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        base = name.rstrip("/").rsplit("/", 1)[-1].split(".")[0]
        return f"{base}_{split}" if split else base
    return Path(spec).name.split(".")[0] or spec


def _code_tests(answer: Any) -> dict | None:
    """A code row's tests dict: given as a dict, or as the JSON string Eurus-2-RL-Data stores in
    ``reward_model.ground_truth``; ``None`` when it is neither."""
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except json.JSONDecodeError:
            return None
    ok = isinstance(answer, dict) and ({"asserts"} <= answer.keys() or {"inputs", "outputs"} <= answer.keys())
    return answer if ok else None


def load_file_benchmark(
    path: str | Path,
    *,
    prompt_key: str = "prompt",
    answer_key: str = "auto",
    id_key: str | None = None,
    kind: str = "math",
    add_suffix: bool = True,
    system_prompt: str | None = None,
    name: str | None = None,
    limit: int | None = None,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
) -> list[dict]:
    """A user's data as eval rows, read as training reads ``data.train_path`` / ``data.eval_path``
    (:func:`iprime.data.sources.read_records` and :func:`~iprime.data.sources.prepare_rows`: one
    reader): ``.jsonl(.gz)``, ``.json``, ``.parquet``, a directory of them or ``hf:NAME[:SPLIT]``;
    dotted keys (``reward_model.ground_truth``); prompts as a string or a list of
    ``{"role", "content"}`` chat messages. PRIME's own validation split reads with the defaults.

    ``answer_key``: ``auto`` takes ``answer``, else ``reward_model.ground_truth``. kind
    ``"math"``: it holds a gold answer (string/number) or a list of accepted golds. kind
    ``"code"``: a tests dict for :func:`iprime.verifiers.verify_code` (``{"asserts": [...]}`` or
    ``{"inputs": [...], "outputs": [...]}``), or that dict as a JSON string. ``add_suffix``
    appends the paper's math/code instruction to a *string* prompt (a message list, as
    Eurus-2-RL-Data's, carries its own instruction and is used as it is). ``system_prompt``
    puts a system message before string prompts (as ``data.system_prompt`` does). ``id_key``
    names a unique id field (default: the line number of a jsonl file, the row number of a
    parquet file, the full location for a directory). The benchmark name is
    :func:`file_benchmark_name`."""
    if kind not in ("math", "code"):
        raise ValueError(f"kind must be 'math' or 'code', got {kind!r}")
    spec = str(path)
    records = read_records(spec, max_row_bytes=max_row_bytes, limit=limit)
    try:
        data = prepare_rows(records, prompt_key=prompt_key, reference_key=answer_key)
    except DataError as err:
        if err.field != "reference_key":
            raise
        raise DataError(f"{spec}: {err} (with iprime eval: --answer-key)", field=err.field) from None
    one_file = not spec.startswith("hf:") and Path(spec).is_file()
    name = name or file_benchmark_name(spec)
    problems: list[tuple[str, str, str]] = []
    out = []
    for row, prompt, answer, where in zip(data.rows, data.prompts, data.references, data.where):
        if kind == "math":
            reference: Any = [str(a) for a in answer] if isinstance(answer, list) else [adapters._answer_str(answer)]
            if not reference or not all(g.strip() for g in reference):
                problems.append((where, data.reference_key, "empty gold answer"))
        else:
            reference = _code_tests(answer)
            if reference is None:
                problem = "must be a tests dict with 'asserts' or 'inputs'/'outputs'"
                problems.append((where, data.reference_key, problem))
        if id_key is not None:
            try:
                id_ = get_field(row, id_key)
            except MissingField as err:
                problems.append((where, id_key, str(err)))
                continue
        else:
            id_ = where.rsplit(" ", 1)[-1] if one_file else where
        if isinstance(prompt, str) and add_suffix:
            prompt += MATH_SUFFIX if kind == "math" else CODE_SUFFIX
        out.append(_row(name, id_, with_system(prompt, system_prompt), reference, kind))
    if problems:
        raise DataError(problem_message(problems, len(records), len({w for w, _, _ in problems})), problems=problems)
    return out


load_jsonl_benchmark = load_file_benchmark  # the name before parquet and directories were read
