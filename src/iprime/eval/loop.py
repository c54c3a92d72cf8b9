"""The evaluation loop: every accuracy iprime reports is sampled and scored here.

::

    for each chunk c of chunk_size rows (those the caller hands in):
        responses = generator.generate(chat-rendered prompts, params, seed = params.seed + c)
        results   = score(the row of each response, the responses)     # n per row, in order
        yield ScoredChunk(c, responses grouped by row, results)

Chunks are numbered by their place in the whole row list (:func:`chunked`) and chunk ``c`` is
sampled with seed ``params.seed + c``, so a chunk's samples do not depend on which chunks ran
before or elsewhere. The callers differ only in which chunks they hand in and what they do with
a scored chunk:

- ``iprime eval`` (:func:`iprime.eval.runner.run_eval`): benchmark rows, verifiers by name in
  worker processes, PRM scores, one ``generations.jsonl`` line per row; a resumed run hands in
  only the rows a kill lost, each chunk with the seed it had.
- evaluation during training (:func:`iprime.train.evaluate.run_evals`): rank ``r`` of ``W``
  hands in chunks ``r, r + W, ...`` and the :class:`AccuracyTally` sums are all-reduced, so the
  numbers do not depend on the world size.
- :func:`evaluate_accuracy`: in memory, any ``verifier(response, answer)`` callable, one
  accuracy (the quickstart, SFT, the benchmarks scripts).

:class:`GroupTally` splits the same sums by a row's ability and data source (``.../acc/<ability>``,
``.../acc/source/<data_source>``): evaluation during training logs it per set, and the trainer
per step over the responses it sampled (``rollout/acc/<ability>``).

On the same rows, greedily, all three give the same responses and scores
(``tests/test_eval_runner.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from iprime.data.sources import MissingField, get_field
from iprime.rollout import HFGenerator, SamplingParams
from iprime.rollout.sampling import RowSamples, sample_rows

__all__ = [
    "MAX_SOURCE_GROUPS",
    "AccuracyTally",
    "GroupTally",
    "ScoredChunk",
    "chunked",
    "evaluate_accuracy",
    "row_label",
    "scored_chunks",
]

MAX_SOURCE_GROUPS = 8
"""Accuracy by data source is reported only where the rows have at most this many distinct
sources (a step's sampled rows, an eval set): a mix of a few datasets is worth a curve each, a
corpus of hundreds of sources is not (its abilities still are)."""

Score = Callable[[Sequence[Mapping], Sequence[str]], Sequence[Any]]
"""``score(rows, texts)``: one result per response ``texts[j]`` to ``rows[j]`` (a row repeated
``n`` times, consecutively), each a float in [0, 1] or anything ``float()`` turns into one (a
:class:`~iprime.verifiers.VerifyResult`)."""


@dataclass
class ScoredChunk:
    """One chunk's responses and their scores: ``index`` (the chunk's number ``c``),
    ``samples[i]`` (the ``n`` responses to row ``i`` of the chunk), ``results`` (what ``score``
    returned, ``n`` consecutive results per row)."""

    index: int
    samples: list[RowSamples]
    results: list[Any]

    @property
    def n(self) -> int:
        return len(self.samples[0].texts)

    @property
    def texts(self) -> list[str]:
        """Every response, ``n`` per row, in row order."""
        return [text for s in self.samples for text in s.texts]

    @property
    def scores(self) -> list[float]:
        """Every response's score, aligned with :attr:`texts`."""
        return [float(r) for r in self.results]

    def row_results(self, i: int) -> list[Any]:
        """The results of row ``i``'s ``n`` responses."""
        return self.results[i * self.n : (i + 1) * self.n]


def chunked(rows: Sequence[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    """``(c, rows[c * size : (c + 1) * size])`` for every chunk ``c`` of ``rows``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for c, start in enumerate(range(0, len(rows), size)):
        yield c, list(rows[start : start + size])


def scored_chunks(
    generator,
    tokenizer,
    chunks: Iterable[tuple[int, Sequence[Mapping]]],
    params,
    score: Score,
    *,
    seed_per_chunk: bool = True,
) -> Iterator[ScoredChunk]:
    """Sample ``params.n`` responses to each row of every ``(c, rows)`` chunk (rows need a
    ``prompt``: a user message string or a list of chat messages; empty chunks are skipped) from
    ``generator`` (an :class:`iprime.rollout.Generator`), score them and yield the chunk.

    Chunk ``c`` is sampled with seed ``params.seed + c`` (``seed_per_chunk=False``: every chunk
    with ``params.seed``, what :func:`evaluate_accuracy` has always done). Lazy: a chunk is
    sampled when the caller asks for it."""
    for c, rows in chunks:
        if not rows:
            continue
        seed = params.seed + c if seed_per_chunk and params.seed is not None else params.seed
        samples = sample_rows(generator, tokenizer, rows, replace(params, seed=seed))
        per_sample_rows = [s.row for s in samples for _ in s.texts]
        results = list(score(per_sample_rows, [text for s in samples for text in s.texts]))
        if len(results) != len(per_sample_rows):
            raise RuntimeError(f"score returned {len(results)} results for {len(per_sample_rows)} responses")
        yield ScoredChunk(c, samples, results)


@dataclass
class AccuracyTally:
    """Running sums over scored chunks: ``score`` (sum of every response's score), ``samples``,
    ``solved`` (rows with a fully correct response, score >= 1), ``truncated`` (responses cut at
    ``max_new_tokens``), ``rows``. Plain sums, so ranks can all-reduce them (:meth:`as_list`)."""

    score: float = 0.0
    samples: float = 0.0
    solved: float = 0.0
    truncated: float = 0.0
    rows: float = 0.0

    def add(self, chunk: ScoredChunk) -> None:
        scores = chunk.scores
        self.score += sum(scores)
        self.samples += len(scores)
        self.solved += sum(max(scores[i * chunk.n : (i + 1) * chunk.n]) >= 1.0 for i in range(len(chunk.samples)))
        self.truncated += sum(flag for s in chunk.samples for flag in s.truncated)
        self.rows += len(chunk.samples)

    def as_list(self) -> list[float]:
        return [self.score, self.samples, self.solved, self.truncated, self.rows]

    @classmethod
    def from_list(cls, sums: Sequence[float]) -> AccuracyTally:
        return cls(*(float(x) for x in sums))

    def accuracy(self) -> float:
        """Mean score over all responses."""
        return self.score / self.samples

    def pass_at_n(self) -> float:
        """Share of rows with a fully correct response."""
        return self.solved / self.rows

    def truncated_frac(self) -> float:
        return self.truncated / self.samples


def row_label(row: Mapping, key: str) -> str | None:
    """The value of ``row``'s field ``key`` (dotted keys reach nested fields) as a metric name:
    its ``str``; ``None`` when the row has no such field or it is ``None`` or empty (the row
    then counts in no group of that kind)."""
    try:
        value = get_field(row, key)
    except MissingField:
        return None
    return None if value is None or str(value) == "" else str(value)


@dataclass
class GroupTally:
    """Score sums and response counts by group, for per-ability and per-source accuracy.

    A row belongs to the group ``<ability>`` (its ``ability_key`` field) and, where the tally
    has source groups, ``source/<data_source>`` (its ``source_key`` field). ``names`` is fixed
    when the tally is made (:meth:`for_rows`) from every row it will count, so ranks that each
    count a part of the same rows hold their sums in the same order and can all-reduce
    :meth:`as_list` even when a rank saw none of a group's rows. For group ``g`` with responses
    scored ``s_1..s_m``: ``score[g] = sum_j s_j`` and ``samples[g] = m``; :meth:`metrics` gives

        <prefix>/acc/<g> = score[g] / samples[g]      <prefix>/count/<g> = samples[g]

    for the groups with at least one response."""

    names: list[str]
    ability_key: str = "ability"
    source_key: str = "data_source"
    score: list[float] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"group names must be distinct, got {self.names}")
        self.score = self.score or [0.0] * len(self.names)
        self.samples = self.samples or [0.0] * len(self.names)
        if not len(self.score) == len(self.samples) == len(self.names):
            raise ValueError(f"{len(self.names)} groups but {len(self.score)} score and {len(self.samples)} count sums")

    @classmethod
    def for_rows(
        cls,
        rows: Iterable[Mapping],
        ability_key: str = "ability",
        source_key: str = "data_source",
        max_sources: int = MAX_SOURCE_GROUPS,
    ) -> GroupTally:
        """An empty tally with a group per distinct ability of ``rows`` and, when they have at
        most ``max_sources`` distinct sources, a group per source; names sorted, abilities
        first. Give it every row it will count (the same rows on every rank)."""
        abilities, sources = set(), set()
        for row in rows:
            abilities.add(row_label(row, ability_key))
            sources.add(row_label(row, source_key))
        abilities.discard(None)
        sources.discard(None)
        names = sorted(abilities) + ([f"source/{s}" for s in sorted(sources)] if len(sources) <= max_sources else [])
        return cls(names, ability_key, source_key)

    def add(self, rows: Sequence[Mapping], scores: Sequence[float]) -> None:
        """Count response ``j`` (score ``scores[j]``, to row ``rows[j]``) in its row's groups."""
        if len(rows) != len(scores):
            raise ValueError(f"{len(rows)} rows for {len(scores)} scores")
        index = {name: i for i, name in enumerate(self.names)}
        by_source = any(name.startswith("source/") for name in self.names)
        for row, score in zip(rows, scores):
            ability, source = row_label(row, self.ability_key), row_label(row, self.source_key)
            for name, counted in ((ability, True), (None if source is None else f"source/{source}", by_source)):
                if name is None or not counted:
                    continue
                if name not in index:  # the rows counted must be the rows the names came from
                    raise ValueError(f"group {name!r} is not one of this tally's groups {self.names}")
                self.score[index[name]] += float(score)
                self.samples[index[name]] += 1.0

    def as_list(self) -> list[float]:
        """``score`` then ``samples``, in ``names`` order: what ranks all-reduce."""
        return [*self.score, *self.samples]

    def with_sums(self, sums: Sequence[float]) -> GroupTally:
        """This tally's groups with the sums ``sums`` (an all-reduced :meth:`as_list`)."""
        n = len(self.names)
        if len(sums) != 2 * n:
            raise ValueError(f"{len(sums)} sums for {n} groups (need {2 * n})")
        values = [float(x) for x in sums]
        return GroupTally(list(self.names), self.ability_key, self.source_key, values[:n], values[n:])

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix>/acc/<group>`` and ``<prefix>/count/<group>`` of every group with responses."""
        out: dict[str, float] = {}
        for name, score, samples in zip(self.names, self.score, self.samples):
            if samples:
                out[f"{prefix}/acc/{name}"] = score / samples
                out[f"{prefix}/count/{name}"] = samples
        return out


def evaluate_accuracy(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    verifier: Callable[[str, str], float],
    *,
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    return_samples: bool = False,
) -> dict:
    """Mean ``verifier(response, row["answer"])`` over ``n`` samples of every row:

        accuracy = (1 / (N * n)) * sum_i sum_k verifier(response_ik, answer_i)

    over ``N`` rows; ``temperature=0`` is greedy decoding (then ``n`` should be 1, since every
    sample would be the same).

    Rows need ``prompt`` (a string or a list of chat messages) and ``answer``. Prompts are
    rendered with the tokenizer's chat template (:func:`~iprime.data.chat.render_prompt`),
    exactly as in SFT; every chunk of ``batch_size`` rows is sampled with ``seed``. Returns
    ``accuracy``, ``pass_at_n`` (share of rows with a fully correct sample, score >= 1),
    ``truncated_frac`` (responses cut at ``max_new_tokens``), ``n_rows``, ``n_samples``,
    ``time_s``, and with ``return_samples`` the ``samples`` list of
    ``{"prompt", "answer", "response", "score"}``.
    """
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"need n, batch_size, max_new_tokens >= 1, got {n}, {batch_size}, {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not rows:
        raise ValueError("rows is empty")
    for i, row in enumerate(rows):
        if "prompt" not in row or "answer" not in row:
            raise ValueError(f"row {i} needs 'prompt' and 'answer', has {sorted(row)}")

    def score(rows: Sequence[Mapping], texts: Sequence[str]) -> list[float]:
        return [float(verifier(text, row["answer"])) for row, text in zip(rows, texts)]

    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    generator, tally, samples = HFGenerator(model, tokenizer), AccuracyTally(), []
    try:
        chunks = chunked(rows, batch_size)
        for chunk in scored_chunks(generator, tokenizer, chunks, params, score, seed_per_chunk=False):
            tally.add(chunk)
            for i, s in enumerate(chunk.samples if return_samples else []):
                samples += [
                    {"prompt": s.row["prompt"], "answer": s.row["answer"], "response": text, "score": value}
                    for text, value in zip(s.texts, chunk.row_results(i))
                ]
    finally:
        model.train(was_training)
    result = {
        "accuracy": tally.accuracy(),
        "pass_at_n": tally.pass_at_n(),
        "truncated_frac": tally.truncated_frac(),
        "n_rows": len(rows),
        "n_samples": int(tally.samples),
        "time_s": time.perf_counter() - t0,
    }
    if return_samples:
        result["samples"] = samples
    return result
