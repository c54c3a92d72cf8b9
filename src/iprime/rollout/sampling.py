"""Sampling responses to evaluation rows: the step every accuracy evaluation shares.

:func:`sample_rows` renders each row's prompt with the chat template
(:func:`iprime.data.chat.render_prompt`, exactly as SFT and rollouts do), generates ``params.n``
responses per prompt in one call, and hands them back grouped by row. The evaluation loop
(:mod:`iprime.eval.loop`: chunks, seeds, scoring) calls it for ``iprime eval``, evaluation during
training and ``evaluate_accuracy``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from iprime.data.chat import render_prompt

__all__ = ["RowSamples", "sample_rows"]


@dataclass
class RowSamples:
    """The responses to one row, in generation order: their texts, whether each was cut at
    ``max_new_tokens`` (no EOS), and each one's number of generated tokens."""

    row: Mapping
    texts: list[str]
    truncated: list[bool]
    num_tokens: list[int]


def sample_rows(generator, tokenizer, rows: Sequence[Mapping], params) -> list[RowSamples]:
    """``params.n`` responses to every row's ``prompt`` (a user message string or a list of
    chat messages) from ``generator`` (a :class:`iprime.rollout.Generator`), one entry per row
    in input order."""
    batch = generator.generate([render_prompt(tokenizer, r["prompt"]) for r in rows], params)
    n = params.n
    if batch.prompt_index.tolist() != [i for i in range(len(rows)) for _ in range(n)]:
        raise RuntimeError(
            f"the generator returned {len(batch.texts)} samples not grouped as {n} per prompt for {len(rows)} prompts"
        )
    truncated = [bool(t) for t in batch.truncated.tolist()]
    lengths = [int(x) for x in batch.response_lengths.tolist()]
    return [
        RowSamples(row, batch.texts[i * n : (i + 1) * n], truncated[i * n : (i + 1) * n], lengths[i * n : (i + 1) * n])
        for i, row in enumerate(rows)
    ]
