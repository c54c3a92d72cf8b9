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

On the same rows, greedily, all three give the same responses and scores
(``tests/test_eval_runner.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from iprime.rollout import HFGenerator, SamplingParams
from iprime.rollout.sampling import RowSamples, sample_rows

__all__ = ["AccuracyTally", "ScoredChunk", "chunked", "evaluate_accuracy", "scored_chunks"]

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
