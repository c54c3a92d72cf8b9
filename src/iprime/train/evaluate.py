"""Evaluation during training, from the config: which sets, when, and their metrics.

The sets are ``eval_dataset=`` rows and ``data.eval_path`` (prepared like the training rows,
each scored by its own verifier or the trainer's ``verifier=``) and ``train.eval_benchmarks``
(shipped benchmarks or ``.jsonl`` files, :func:`iprime.eval.benchmarks.load_benchmark`, each row
naming its verifier), ``train.eval_limit`` rows each (:func:`build_eval_sets`). Every set gives
``eval/<name>/acc`` (mean score of ``train.eval_n`` samples per row at
``train.eval_temperature``), ``eval/<name>/pass@<n>`` (``n > 1``: share of rows with a fully
correct sample), ``eval/<name>/truncated_frac`` and ``eval/<name>/time_s`` (:func:`run_evals`),
and, for rows with an ability / data source (``data.ability_key``, ``data.source_key``),
``eval/<name>/acc/<ability>`` and ``eval/<name>/count/<ability>`` (responses scored), and the same
by ``source/<data_source>`` for a set of at most 8 sources.

Sampling and scoring is the evaluation loop every accuracy goes through
(:mod:`iprime.eval.loop`, which ``iprime eval`` runs too); :func:`evaluate_accuracy`, its
in-memory entry point, lives there and is re-exported here. Evaluation leaves training exactly
as it was (:func:`preserved_training_state`: the RNG states and the models' train/eval modes),
so a run with evaluation trains bitwise like one without. Under torchrun the rows are cut into
fixed chunks (chunk ``c`` sampled with seed ``train.seed + c``), rank ``r`` takes chunks
``r, r + W, ...`` and the sums are all-reduced: the numbers do not depend on the world size.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from iprime.data.sources import Record, prepare_rows, read_records
from iprime.eval.benchmarks import file_benchmark_name, load_benchmark
from iprime.eval.loop import AccuracyTally, GroupTally, chunked, evaluate_accuracy, scored_chunks
from iprime.rollout import SamplingParams
from iprime.train import distributed as D
from iprime.train.build import context_length
from iprime.train.scoring import failures
from iprime.verifiers import check_row

__all__ = [
    "EvalSet",
    "build_eval_sets",
    "eval_due",
    "evaluate_accuracy",
    "preserved_training_state",
    "run_evals",
    "set_metrics",
]


# ------------------------------------------------------------------ evaluation during training


@dataclass
class EvalSet:
    """One named set of eval rows, index-aligned: ``prompts[i]`` (a user message string or a
    message list, rendered with the chat template when sampled), ``references[i]``, ``rows[i]``
    (the original row: per-row verifier dispatch reads its ability / data source) and, for
    benchmark rows, ``verifiers[i]`` (a registered verifier name); ``verifiers=None`` scores
    like the training rows (per-row dispatch, or the trainer's ``verifier=``)."""

    name: str
    prompts: list[Any]
    references: list[Any]
    rows: list[Mapping[str, Any]]
    verifiers: list[str] | None = None

    def __len__(self) -> int:
        return len(self.prompts)


eval_path_name = file_benchmark_name
"""The metric name of ``data.eval_path`` (``data/test.jsonl.gz`` -> ``test``): the name ``iprime
eval`` reports the same file under."""


def _prepared_set(name: str, records: Sequence, cfg, tokenizer, model, scorer) -> EvalSet:
    """Rows prepared exactly like the training rows (:func:`iprime.data.sources.prepare_rows`:
    prompt and reference keys, system prompt, verifier check), prompts over the context
    window minus the eval's response cap dropped with a warning."""
    limit = cfg.data.max_prompt_tokens
    if limit is None and tokenizer is not None and model is not None:
        context = context_length(model)
        limit = None if context is None else max(1, context - eval_max_new_tokens(cfg))
    data = prepare_rows(
        records,
        prompt_key=cfg.data.prompt_key,
        reference_key=cfg.data.reference_key,
        system_prompt=cfg.data.system_prompt,
        check_row=partial(check_row, scoring=scorer.scoring) if scorer.verifier is None else None,
        tokenizer=tokenizer,
        max_prompt_tokens=limit if tokenizer is not None else None,
        overlong=cfg.data.overlong_prompts,
    )
    if data.dropped_overlong:
        warnings.warn(
            f"eval set {name!r}: {len(data.dropped_overlong)} rows have prompts over {limit} tokens and are not "
            f"evaluated (data.overlong_prompts=drop); the first: {data.dropped_overlong[0]}",
            stacklevel=3,
        )
    return EvalSet(name, data.prompts, data.references, data.rows)


def _benchmark_set(spec: str, limit: int | None) -> EvalSet:
    """A shipped benchmark or a ``.jsonl`` file (:func:`iprime.eval.benchmarks.load_benchmark`);
    its rows name their verifier and are used as ``iprime eval`` uses them (no system prompt)."""
    rows = load_benchmark(spec, limit=limit)
    return EvalSet(
        rows[0]["benchmark"],
        [r["prompt"] for r in rows],
        [r["reference"] for r in rows],
        rows,
        [r["verifier"] for r in rows],
    )


def build_eval_sets(
    cfg,
    eval_dataset: Sequence[Mapping[str, Any]] | None,
    tokenizer,
    scorer,
    *,
    model=None,
    has_eval_fn: bool = False,
) -> list[EvalSet]:
    """The sets a run evaluates every ``train.eval_every`` steps: ``eval_dataset`` (named
    ``eval_dataset``), ``data.eval_path`` (named by :func:`eval_path_name`) and each
    ``train.eval_benchmarks`` entry, ``train.eval_limit`` rows each.

    ``scorer``: the run's :class:`~iprime.train.scoring.RolloutScorer` (its dispatch settings
    check the rows); ``model``: the policy or its path (its context window bounds the prompts).
    With ``train.eval_every=0`` nothing is loaded, and any configured set draws a warning that
    it is never evaluated. Raises ``ValueError`` when ``train.eval_every > 0`` but there is
    nothing to evaluate (no set and no ``eval_fn``), or when two sets share a name."""
    t = cfg.train
    configured = [
        what
        for what, given in (
            ("eval_dataset=", eval_dataset is not None),
            (f"data.eval_path={cfg.data.eval_path!r}", cfg.data.eval_path is not None),
            (f"train.eval_benchmarks={t.eval_benchmarks}", bool(t.eval_benchmarks)),
        )
        if given
    ]
    if not t.eval_every:
        if configured:
            warnings.warn(
                f"{', '.join(configured)} given but train.eval_every=0: never evaluated; set train.eval_every",
                stacklevel=3,
            )
        return []
    if not configured and not has_eval_fn:
        raise ValueError(
            f"train.eval_every={t.eval_every} but there is nothing to evaluate: set data.eval_path (held-out rows "
            "like the training rows) or train.eval_benchmarks (e.g. [math500, aime]), pass eval_dataset= or "
            "eval_fn= to PrimeTrainer, or set train.eval_every=0"
        )
    sets: list[EvalSet] = []
    if eval_dataset is not None:
        rows = list(eval_dataset)[: t.eval_limit]
        if not rows:
            raise ValueError("eval_dataset is empty: pass held-out rows, or leave it out")
        records = [r if isinstance(r, Record) else Record(dict(r), f"eval_dataset row {i}") for i, r in enumerate(rows)]
        sets.append(_prepared_set("eval_dataset", records, cfg, tokenizer, model, scorer))
    if cfg.data.eval_path is not None:
        records = read_records(cfg.data.eval_path, max_row_bytes=cfg.data.max_row_bytes, limit=t.eval_limit)
        sets.append(_prepared_set(eval_path_name(cfg.data.eval_path), records, cfg, tokenizer, model, scorer))
    sets += [_benchmark_set(spec, t.eval_limit) for spec in t.eval_benchmarks]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"two eval sets share a name (metrics eval/<name>/...): {names}; rename a file")
    return sets


def eval_max_new_tokens(cfg) -> int:
    """The eval's response cap: ``train.eval_max_new_tokens``, else ``rollout.max_new_tokens``."""
    return cfg.train.eval_max_new_tokens or cfg.rollout.max_new_tokens


def eval_due(step: int, total_steps: int, every: int) -> bool:
    """Whether the run evaluates after ``step``: every ``every`` steps and after the last."""
    return every > 0 and step > 0 and (step % every == 0 or step == total_steps)


def chunk_rows(cfg) -> int:
    """Rows per eval chunk: as many sequences as one training round samples
    (``ceil(prompts_per_step * oversample) * rollout.n``), at least one row."""
    round_sequences = math.ceil(cfg.rollout.prompts_per_step * cfg.rollout.oversample) * cfg.rollout.n
    return max(1, round_sequences // cfg.train.eval_n)


def _score(eval_set: EvalSet, index: Sequence[int], texts: Sequence[str], scorer) -> list[float]:
    """Scores of ``texts`` (``texts[j]`` answers row ``index[j]`` of the set): each benchmark row
    by its named verifier, other rows as the training rows are scored."""
    if eval_set.verifiers is None:
        rows = [eval_set.rows[i] for i in index]
        refs = [eval_set.references[i] for i in index]
        results, _ = scorer.verify(texts, rows, refs, index)
        failed = failures(results)  # this rank's chunk: a scorer failing on all of it is broken
        scorer.check_failures(len(failed), len(results), failed[:1], f"an eval chunk of {eval_set.name}")
        return [float(r.score) for r in results]
    scores = [0.0] * len(texts)
    by_name: dict[str, list[int]] = {}
    for j, i in enumerate(index):
        by_name.setdefault(eval_set.verifiers[i], []).append(j)
    for name, js in sorted(by_name.items()):
        results = scorer.verify_named(name, [texts[j] for j in js], [eval_set.references[index[j]] for j in js])
        for j, r in zip(js, results):
            scores[j] = float(r.score)
    return scores


def _set_tally(
    eval_set: EvalSet, generator, tokenizer, scorer, cfg, rank: int, world: int
) -> tuple[AccuracyTally, GroupTally]:
    """This rank's sums over its chunks of ``eval_set`` (chunk ``c`` belongs to rank ``c % world``),
    in all and by ability / data source. The groups come from every row of the set, so each rank
    holds the same names in the same order whichever chunks it drew."""
    t = cfg.train
    params = SamplingParams(
        n=t.eval_n, temperature=t.eval_temperature, max_new_tokens=eval_max_new_tokens(cfg), seed=t.seed
    )
    rows = [{"prompt": prompt, "index": i} for i, prompt in enumerate(eval_set.prompts)]
    mine = ((c, part) for c, part in chunked(rows, chunk_rows(cfg)) if c % world == rank)

    def score(rows: Sequence[Mapping], texts: Sequence[str]) -> list[float]:
        return _score(eval_set, [row["index"] for row in rows], texts, scorer)

    d = cfg.data
    tally, groups = AccuracyTally(), GroupTally.for_rows(eval_set.rows, d.ability_key, d.source_key)
    for chunk in scored_chunks(generator, tokenizer, mine, params, score):
        tally.add(chunk)
        groups.add([eval_set.rows[s.row["index"]] for s in chunk.samples for _ in s.texts], chunk.scores)
    return tally, groups


def set_metrics(
    name: str, tally: AccuracyTally, n_rows: int, n: int, time_s: float, groups: GroupTally | None = None
) -> dict[str, float]:
    """``eval/<name>/acc``, ``pass@<n>`` (``n > 1``), ``truncated_frac`` and ``time_s`` from the
    set's (all-reduced) :class:`~iprime.eval.loop.AccuracyTally`; with its (all-reduced)
    :class:`~iprime.eval.loop.GroupTally`, ``eval/<name>/acc/<ability>``,
    ``eval/<name>/count/<ability>`` and the same by ``source/<data_source>`` (sets of at most
    :data:`~iprime.eval.loop.MAX_SOURCE_GROUPS` sources)."""
    if tally.samples != n_rows * n or tally.rows != n_rows:
        raise RuntimeError(
            f"eval set {name!r}: {int(tally.samples)} samples of {int(tally.rows)} rows scored, "
            f"expected {n_rows} rows x {n}"
        )
    out = {f"eval/{name}/acc": tally.accuracy()}
    if n > 1:
        out[f"eval/{name}/pass@{n}"] = tally.pass_at_n()
    out[f"eval/{name}/truncated_frac"] = tally.truncated_frac()
    out[f"eval/{name}/time_s"] = time_s
    if groups is not None:
        out.update(groups.metrics(f"eval/{name}"))
    return out


def run_evals(
    generator,
    tokenizer,
    sets: Sequence[EvalSet],
    scorer,
    cfg,
    *,
    dist=None,
    device: torch.device | str = "cpu",
    policy_root: torch.nn.Module | None = None,
) -> dict[str, float]:
    """Evaluate the policy ``generator`` samples from on every set; returns the metrics of
    all sets (see the module docstring). Under torchrun (``dist`` with world size > 1) every
    rank must call it: each samples and scores its chunks inside the policy's gathered
    parameters (``policy_root``, the FSDP root) and the sums are all-reduced on ``device``."""
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    metrics: dict[str, float] = {}
    for eval_set in sets:
        t0 = time.perf_counter()
        with D.full_params(policy_root):
            tally, groups = _set_tally(eval_set, generator, tokenizer, scorer, cfg, rank, world)
        sums = torch.tensor(tally.as_list() + groups.as_list(), dtype=torch.float64, device=device)
        total = D.all_reduce(sums).tolist()
        n = len(tally.as_list())
        metrics.update(
            set_metrics(
                eval_set.name,
                AccuracyTally.from_list(total[:n]),
                len(eval_set),
                cfg.train.eval_n,
                time.perf_counter() - t0,
                groups.with_sums(total[n:]),
            )
        )
    return metrics


@contextlib.contextmanager
def preserved_training_state(*models: torch.nn.Module | None) -> Iterator[None]:
    """Restore the Python, numpy, torch (and CUDA) RNG states and each model's train/eval mode
    on exit: what an evaluation changes there must not change the training that follows."""
    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    modes = [(m, m.training) for m in models if m is not None]
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for m, training in modes:
            m.train(training)
