"""``iprime eval``: generate, verify, (PRM-)score and summarize, resumably.

Output directory::

    config.json        the generation settings (a resumed run must match them)
    generations.jsonl  one line per benchmark row: its n responses, scores, answers, PRM rewards
    summary.json       {benchmark: metrics} (see iprime.eval.metrics)
    summary.md         the same as a markdown table

Rows are sampled and scored by the evaluation loop (:mod:`iprime.eval.loop`), the one that
evaluation during training runs too.

Resuming: rows are processed in fixed chunks of ``batch_size`` rows of each benchmark (chunk
``c`` is sampled with seed ``seed + c``), and each chunk's lines are appended with one write,
then flushed and fsync'ed. A kill therefore loses at most the chunk in flight; on
``resume=True`` rows already in ``generations.jsonl`` are skipped, a torn last line (the kill
landed mid-write) is cut off, and because chunks and seeds do not depend on what ran before,
the resumed run produces the same generations and summary as an uninterrupted one. The
summary is always recomputed from the whole generations file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from iprime.data.jsonl import JsonlError
from iprime.models import load_model, load_tokenizer
from iprime.prm.metadata import DEFAULT_BETA, resolve_prm_settings
from iprime.prm.scoring import ImplicitPRM
from iprime.rollout import HFGenerator, SamplingParams
from iprime.rollout.vllm import EVAL_HINT, VLLMGenerator, require_vllm
from iprime.verifiers import VerifierPool, verify_batch

from .answers import EQUIVALENCES, equality_for, extract_answer, group_answers
from .benchmarks import is_file_benchmark, load_benchmark
from .loop import chunked, scored_chunks
from .metrics import VOTE_WEIGHTS, summarize_rows

__all__ = ["EvalConfig", "read_generations", "run_eval", "summary_markdown"]

# Settings that change what is generated/scored: a resumed run must use the same values.
_GENERATION_KEYS = (
    "model",
    "n",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "batch_size",
    "prm",
    "ref",
    "beta",
    "equivalence",
    "engine",
    "system_prompt",
)
# what a run saved before a setting existed ran with (its config.json lacks the key)
_SAVED_BEFORE = {"engine": "hf", "system_prompt": None}

ENGINES = ("hf", "vllm")


@dataclass
class EvalConfig:
    """Settings of one evaluation run.

    model: policy directory (or hub id). benchmarks: names, or data files / directories / hf: datasets
    (:func:`iprime.eval.benchmarks.load_benchmark`). n / temperature / top_p /
    max_new_tokens / seed: sampling (temperature 0 = greedy, then use n=1). ks: the k of
    pass@k / maj@k / bon@k / wvote@k (default 1 and n). batch_size: rows per generation
    chunk (each yields ``batch_size * n`` samples). limit: first rows of each benchmark.
    prm / ref / beta: score every sample with the implicit PRM (best-of-N, weighted vote);
    ``ref`` / ``beta`` left ``None`` are read from the PRM's ``iprime_prm.json``
    (:func:`iprime.prm.metadata.resolve_prm_settings`), ``beta`` else
    :data:`~iprime.prm.metadata.DEFAULT_BETA`.
    vote_weight: ``sigmoid`` | ``exp`` | ``one``. equivalence: ``math`` (merge answers
    math-verify finds equal) | ``exact``. verify_workers: verifier processes (0 = inline).
    jsonl_options: prompt_key / answer_key / id_key / kind / add_suffix for benchmark files
    (:func:`iprime.eval.benchmarks.load_file_benchmark`). system_prompt: a system message
    before every string prompt, of shipped benchmarks and files alike.
    engine: ``hf`` (the built-in sampler, ``device`` / ``dtype``) | ``vllm`` (a vLLM engine in
    ``dtype``, :meth:`~iprime.rollout.vllm.VLLMGenerator.for_eval`; vLLM picks its GPUs);
    tensor_parallel_size: GPUs one vLLM engine spreads the model over; gpu_memory_utilization:
    the share of each GPU vLLM may take (lower it when a PRM scores on the same GPU). The engine
    is a generation setting: vLLM's samples are not HF's, so a run resumes on the engine it began with.
    """

    model: str
    benchmarks: list[str]
    out: str
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    ks: list[int] = field(default_factory=list)
    batch_size: int = 16
    seed: int = 0
    limit: int | None = None
    prm: str | None = None
    ref: str | None = None
    beta: float | None = None
    vote_weight: str = "sigmoid"
    equivalence: str = "math"
    verify_workers: int = 2
    verify_timeout_s: float | None = None
    dtype: str = "float32"
    device: str = "cpu"
    resume: bool = False
    jsonl_options: dict = field(default_factory=dict)
    system_prompt: str | None = None
    engine: str = "hf"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        if not self.benchmarks:
            raise ValueError("benchmarks is empty: name at least one (e.g. math500)")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.tensor_parallel_size < 1 or (self.tensor_parallel_size > 1 and self.engine != "vllm"):
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size}: must be >= 1, and above 1 only with engine vllm"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must lie in (0, 1], got {self.gpu_memory_utilization}")
        if self.n < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"n, batch_size and max_new_tokens must be >= 1, got {self.n}, {self.batch_size}, {self.max_new_tokens}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError(
                f"greedy decoding (temperature 0) gives n={self.n} identical samples; use n=1 or temperature > 0"
            )
        if self.prm is not None:
            settings = resolve_prm_settings(self.prm, beta=self.beta, reference=self.ref)
            if settings.reference is None:
                raise ValueError(
                    f"the implicit PRM needs both prm and ref (the reference model it is read against): "
                    f"pass ref, or save {self.prm} with its metadata (iprime_prm.json, written by "
                    "iprime prm train)"
                )
            self.ref, self.beta = settings.reference, settings.beta
        elif self.ref is not None:
            raise ValueError("the implicit PRM needs both prm and ref: ref was given without prm")
        if self.beta is None:
            self.beta = DEFAULT_BETA
        if self.vote_weight not in VOTE_WEIGHTS:
            raise ValueError(f"vote_weight must be one of {VOTE_WEIGHTS}, got {self.vote_weight!r}")
        if self.equivalence not in EQUIVALENCES:
            raise ValueError(f"equivalence must be one of {EQUIVALENCES}, got {self.equivalence!r}")
        bad = [k for k in self.ks if not 1 <= k <= self.n]
        if bad:
            raise ValueError(f"every k must be in [1, n={self.n}], got {bad}")
        self.ks = sorted(set(self.ks)) or sorted({1, self.n})

    def generation_settings(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in _GENERATION_KEYS}


# --------------------------------------------------------------------------- files


def read_generations(path: str | Path, *, repair: bool = False) -> list[dict]:
    """Records of ``generations.jsonl``. Bytes after the last newline (a write torn by a
    kill) are ignored, and with ``repair`` cut from the file; an invalid complete line is an
    error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1  # end of the last newline-terminated line
    records = []
    for lineno, line in enumerate(data[:cut].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise JsonlError(path, lineno, f"invalid JSON ({e.msg})") from None
    # Bytes after the last newline are a torn write: a record is complete only with its newline.
    if repair and cut < len(data):
        with path.open("r+b") as f:
            f.truncate(cut)
    return records


def _append_lines(path: Path, records: Sequence[dict]) -> None:
    """Append records with one write + fsync, so a kill tears at most this batch."""
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with path.open("ab") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- summary


def summary_markdown(summary: Mapping[str, Mapping]) -> str:
    """A markdown table: one row per benchmark, one column per metric (percent)."""
    metrics: list[str] = []
    for m in summary.values():
        for key in m:
            if "@" in key and key not in metrics:
                metrics.append(key)
    header = ["benchmark", "rows", *metrics, "truncated", "mean tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in summary.items():
        cells = [name, str(m["rows"])]
        cells += [f"{100 * m[k]:.1f}" if k in m else "-" for k in metrics]
        cells += [f"{100 * m['truncated_frac']:.1f}%", f"{m['mean_tokens']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- running


def _verify(rows: Sequence[dict], texts: Sequence[str], pool, config: EvalConfig) -> list:
    """VerifyResults for samples grouped by verifier name (one verify_batch call per kind)."""
    results: list = [None] * len(texts)
    for name in sorted({r["verifier"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["verifier"] == name]
        # the arithmetic check is a pure string comparison: no need for worker processes
        use_pool = pool if name != "arithmetic" else None
        out = verify_batch(
            name,
            [texts[i] for i in idx],
            [rows[i]["reference"] for i in idx],
            workers=0 if use_pool is None else 1,
            pool=use_pool,
            timeout_s=config.verify_timeout_s,
        )
        for i, res in zip(idx, out):
            results[i] = res
    return results


def _record(row: dict, n: int, texts, results, truncated, num_tokens, rewards, config: EvalConfig) -> dict:
    answers = [extract_answer(t, row["verifier"]) for t in texts]
    groups = group_answers(answers, equality_for(config.equivalence, row["verifier"]))
    rec = {
        "benchmark": row["benchmark"],
        "id": row["id"],
        "kind": row["kind"],
        "verifier": row["verifier"],
        "prompt": row["prompt"],
        "reference": row["reference"],
        "responses": list(texts),
        "scores": [float(r.score) for r in results],
        "reasons": [r.reason for r in results],
        "truncated": [bool(t) for t in truncated],
        "num_tokens": [int(x) for x in num_tokens],
        "answers": answers,
        "groups": groups,
        "votable": row["verifier"] != "code",
    }
    if rewards is not None:
        rec["prm_rewards"] = [float(x) for x in rewards]
    if len(texts) != n:
        raise RuntimeError(f"row {row['id']!r}: expected {n} responses from the generator, got {len(texts)}")
    return rec


def eval_generator(config: EvalConfig, model=None, tokenizer=None):
    """``(generator, tokenizer)`` for ``config.engine``. ``hf``: the built-in sampler on ``model``
    (loaded from ``config.model`` in ``config.dtype`` on ``config.device`` unless given);
    ``vllm``: a vLLM engine that loads ``config.model`` itself, so a loaded ``model`` is refused."""
    if config.engine == "vllm":
        if model is not None:
            raise ValueError("engine vllm loads config.model itself: pass no model=")
        tokenizer = tokenizer or load_tokenizer(config.model)
        generator = VLLMGenerator.for_eval(
            config.model,
            tokenizer,
            dtype=config.dtype,
            seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
        )
        return generator, tokenizer
    if model is None or tokenizer is None:
        tokenizer = load_tokenizer(config.model)
        model = load_model(config.model, dtype=config.dtype, device=config.device)
    return HFGenerator(model, tokenizer), tokenizer


def run_eval(
    config: EvalConfig,
    *,
    model=None,
    tokenizer=None,
    prm=None,
    console=None,
    progress: bool = True,
    on_chunk: Callable[[str, int], None] | None = None,
) -> dict:
    """Evaluate ``config.model`` on every benchmark; returns ``{benchmark: metrics}``.

    model / tokenizer / prm (an :class:`iprime.prm.ImplicitPRM`): already-loaded objects
    to use instead of loading ``config.model`` / ``config.prm`` (tests, notebooks).
    on_chunk(benchmark, chunk_index): called after each chunk is written (progress hooks;
    an exception raised there stops the run like a kill would).
    """
    console = console or Console(stderr=True)
    if config.engine == "vllm":
        require_vllm(EVAL_HINT)  # before any file is written or model loaded
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_path, cfg_path = out / "generations.jsonl", out / "config.json"

    settings = config.generation_settings()
    existing: list[dict] = []
    if gen_path.exists() and gen_path.stat().st_size > 0:
        if not config.resume:
            raise FileExistsError(
                f"{gen_path} already has generations: pass resume=True (--resume) or use another --out"
            )
        if cfg_path.exists():
            saved = json.loads(cfg_path.read_text())
            was = {k: saved.get(k, _SAVED_BEFORE.get(k)) for k in settings}
            diff = {k: (was[k], v) for k, v in settings.items() if was[k] != v}
            if diff:
                raise ValueError(f"cannot resume {out}: settings differ from the saved run (saved, now): {diff}")
        existing = read_generations(gen_path, repair=True)
    _write_atomic(cfg_path, json.dumps(settings, indent=2) + "\n")

    # Load rows first: a bad benchmark name fails before minutes of model loading.
    benchmarks = {
        name: load_benchmark(
            name,
            limit=config.limit,
            system_prompt=config.system_prompt,
            **(config.jsonl_options if is_file_benchmark(name) else {}),
        )
        for name in config.benchmarks
    }
    names = {rows[0]["benchmark"] for rows in benchmarks.values()}
    if len(names) != len(benchmarks):
        raise ValueError(f"two benchmarks share a name: {config.benchmarks}")
    done = {(r["benchmark"], r["id"]) for r in existing}

    todo_total = sum(1 for rows in benchmarks.values() for r in rows if (r["benchmark"], r["id"]) not in done)
    generator = None
    if todo_total:
        generator, tokenizer = eval_generator(config, model, tokenizer)
        if prm is None and config.prm is not None:
            prm = ImplicitPRM.from_pretrained(
                config.prm, config.ref, config.beta, dtype=config.dtype, device=config.device
            )

    pool = None
    needs_pool = config.verify_workers > 0 and any(
        r["verifier"] != "arithmetic" for rows in benchmarks.values() for r in rows
    )

    def verify(rows: Sequence[dict], texts: Sequence[str]) -> list:
        nonlocal pool
        if pool is None and needs_pool:  # started on the first chunk to verify: none on a finished run
            pool = VerifierPool(config.verify_workers)
        return _verify(rows, texts, pool, config)

    params = SamplingParams(
        n=config.n,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
    )
    t0 = time.perf_counter()
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not progress,
        ) as bar:
            for rows in benchmarks.values():
                name = rows[0]["benchmark"]
                task = bar.add_task(name, total=len(rows), completed=sum((name, r["id"]) in done for r in rows))
                # every chunk keeps its number (and so its seed); a resumed run samples only the rows it lacks
                chunks = chunked(rows, config.batch_size)
                todo = ((c, [r for r in part if (name, r["id"]) not in done]) for c, part in chunks)
                for chunk in scored_chunks(generator, tokenizer, todo, params, verify):
                    texts = chunk.texts
                    rewards = None
                    if prm is not None:
                        rewards = prm.sequence_rewards(
                            [s.row["prompt"] for s in chunk.samples for _ in s.texts],
                            texts,
                            ended=[not t for s in chunk.samples for t in s.truncated],
                        )
                    records = []
                    for i, s in enumerate(chunk.samples):  # flat samples [i*n, (i+1)*n) belong to row i
                        part = slice(i * config.n, (i + 1) * config.n)
                        records.append(
                            _record(
                                s.row,
                                config.n,
                                s.texts,
                                chunk.row_results(i),
                                s.truncated,
                                s.num_tokens,
                                None if rewards is None else rewards[part],
                                config,
                            )
                        )
                    _append_lines(gen_path, records)
                    done.update((name, s.row["id"]) for s in chunk.samples)
                    bar.advance(task, len(chunk.samples))
                    if on_chunk is not None:
                        on_chunk(name, chunk.index)
    finally:
        if pool is not None:
            pool.close()

    return write_summary(config, benchmarks, console=console, elapsed_s=time.perf_counter() - t0)


def write_summary(
    config: EvalConfig, benchmarks: Mapping[str, list[dict]], *, console=None, elapsed_s: float = 0.0
) -> dict:
    """Recompute the summary of every benchmark from ``generations.jsonl``; write .json/.md."""
    out = Path(config.out)
    records = read_generations(out / "generations.jsonl")
    summary = {}
    for rows in benchmarks.values():
        name = rows[0]["benchmark"]
        wanted = {r["id"] for r in rows}
        mine = [r for r in records if r["benchmark"] == name and r["id"] in wanted]
        missing = len(wanted) - len({r["id"] for r in mine})
        if missing:
            raise RuntimeError(f"{name}: {missing} rows have no generations in {out / 'generations.jsonl'}")
        summary[name] = summarize_rows(mine, config.ks, config.vote_weight)
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    md = summary_markdown(summary)
    _write_atomic(out / "summary.md", md)
    if console is not None:
        console.print(md, soft_wrap=True, markup=False)
        console.print(
            f"wrote {out / 'generations.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'} ({elapsed_s:.1f} s)",
            soft_wrap=True,
        )
    return summary
