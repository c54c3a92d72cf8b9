"""Accuracy of a policy on verifiable rows: sample, verify, average.

    accuracy = (1 / (N * n)) * sum_i sum_k verifier(response_ik, answer_i)

over ``N`` rows and ``n`` samples each; ``temperature=0`` is greedy decoding (then ``n``
should be 1, since every sample would be the same).

The in-memory sibling of ``iprime eval``: both sample through
:func:`iprime.rollout.sampling.sample_rows` (see there for why two entry points exist); this one
takes any verifier callable and returns one number, for training curves and the quickstart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from ..rollout.sampling import sample_rows


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
    """Mean ``verifier(response, row["answer"])`` over ``n`` samples of every row.

    Rows need ``prompt`` (a string or a list of chat messages) and ``answer``. Prompts are
    rendered with the tokenizer's chat template (:func:`~iprime.data.chat.render_prompt`),
    exactly as in SFT; every chunk of ``batch_size`` rows is sampled with ``seed``. Returns
    ``accuracy``, ``pass_at_n`` (share of rows with at least one correct sample),
    ``truncated_frac`` (responses cut at ``max_new_tokens``), ``n_rows``, ``n_samples``,
    ``time_s``, and with ``return_samples`` the ``samples`` list of
    ``{"prompt", "answer", "response", "score"}``.
    """
    from ..rollout import HFGenerator, SamplingParams

    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"need n, batch_size, max_new_tokens >= 1, got {n}, {batch_size}, {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not rows:
        raise ValueError("rows is empty")
    for i, row in enumerate(rows):
        if "prompt" not in row or "answer" not in row:
            raise ValueError(f"row {i} needs 'prompt' and 'answer', has {sorted(row)}")

    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    generator = HFGenerator(model, tokenizer)
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    scores: list[list[float]] = [[] for _ in rows]
    samples, n_truncated, n_total = [], 0, 0
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            for offset, sampled in enumerate(sample_rows(generator, tokenizer, chunk, params)):
                row = sampled.row
                for text, truncated in zip(sampled.texts, sampled.truncated):
                    score = float(verifier(text, row["answer"]))
                    scores[start + offset].append(score)
                    n_truncated += truncated
                    n_total += 1
                    if return_samples:
                        samples.append(
                            {"prompt": row["prompt"], "answer": row["answer"], "response": text, "score": score}
                        )
    finally:
        model.train(was_training)
    result = {
        "accuracy": sum(sum(s) for s in scores) / n_total,
        "pass_at_n": sum(max(s) > 0 for s in scores) / len(rows),
        "truncated_frac": n_truncated / n_total,
        "n_rows": len(rows),
        "n_samples": n_total,
        "time_s": time.perf_counter() - t0,
    }
    if return_samples:
        result["samples"] = samples
    return result
