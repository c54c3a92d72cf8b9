"""Scoring a round's rollouts: outcome rewards from the verifiers, in worker processes.

Each sample is scored with a hard deadline in the verifier pool (``verify.workers`` processes,
started once per run), so a runaway verifier or program costs its own sample a 0, never the
run. By default each row picks its verifier by its ability / data source
(:func:`iprime.verifiers.score_row`); a ``verifier(response, reference)`` callable given to the
trainer scores every row instead. ``verify.workers=0`` scores in the training process.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from iprime.config import PrimeConfig
from iprime.verifiers import RowScoring, VerifierPool, VerifyResult, score_rows, verify_batch


def row_scoring(cfg: PrimeConfig) -> RowScoring:
    """The per-row dispatch settings of a run's config."""
    d = cfg.data
    return RowScoring(
        reference_key=d.reference_key,
        ability_key=d.ability_key,
        source_key=d.source_key,
        verifier=d.verifier,
        reward_functions=tuple(d.reward_functions),
        reward_weights=tuple(d.reward_weights),
        timeout_s=cfg.verify.timeout_s,
        code_reward=cfg.verify.code_reward,
        code_test_timeout_s=cfg.verify.code_test_timeout_s,
        stdout_compare=cfg.verify.stdout_compare,
        code_prelude=cfg.verify.code_prelude,
    )


class VerifierFailureError(RuntimeError):
    """Too many of a round's samples could not be scored (``verify.max_failed_share``, or all of them)."""


def failures(results: Sequence[VerifyResult]) -> list[str]:
    """The reasons of the samples whose verifier or reward function failed (raised, crashed its
    worker, returned a bad value); timeouts are not failures (``verify/timeouts``)."""
    return [r.reason for r in results if r.reason.startswith("verifier failed") and not r.timed_out]


class RolloutScorer:
    """``score(texts, rows, references) -> (scores, metrics)``; owns the verifier pool."""

    def __init__(self, cfg: PrimeConfig, verifier: Callable[[str, Any], float] | None = None) -> None:
        self.cfg, self.verifier = cfg, verifier
        self.scoring = row_scoring(cfg)
        self.pool: VerifierPool | None = None
        if verifier is not None and cfg.verify.workers > 0:
            try:
                pickle.dumps(verifier)
            except Exception as err:
                raise ValueError(
                    f"the verifier {verifier!r} cannot be sent to the verifier worker processes ({err}); define it "
                    "at module level, or set verify.workers=0 to score in the training process"
                ) from None

    def _pool(self) -> VerifierPool | None:
        v = self.cfg.verify
        if v.workers and self.pool is None:
            memory = v.memory_limit_mb << 20 if v.memory_limit_mb else None
            self.pool = VerifierPool(v.workers, memory_limit_bytes=memory)
        return self.pool

    def verify(
        self, texts: Sequence[str], rows: Sequence[Mapping[str, Any]], references: Sequence[Any], row_ids: Sequence[int]
    ) -> tuple[list[VerifyResult], dict[str, float]]:
        """One :class:`VerifyResult` per sample (its score checked to lie in [0, 1], its ``reason``
        the verifier's explanation) and the ``verify/timeouts``, ``verify/failed`` counts.
        ``row_ids[i]``: the dataset index of ``rows[i]``, named in errors."""
        pool, timeout = self._pool(), self.cfg.verify.timeout_s
        if self.verifier is None:
            results = score_rows(
                texts, rows, self.scoring, pool=pool, workers=0, timeout_s=timeout, references=references
            )
        else:
            results = verify_batch(self.verifier, texts, references, pool=pool, workers=0, timeout_s=timeout)
        for result, row in zip(results, row_ids):
            checked_score(result, row)
        failed = failures(results)
        return results, {"verify/timeouts": sum(r.timed_out for r in results), "verify/failed": len(failed)}

    def check_failures(self, failed: int, total: int, firsts: Sequence[str | None], what: str) -> None:
        """Raise :class:`VerifierFailureError` when ``failed`` of ``total`` samples (a round, all
        ranks together) is every sample or more than ``verify.max_failed_share`` of them: a broken
        scorer must stop the run, not train on its zeros. ``firsts``: each rank's first failure
        reason (``None``: none there); ``what``: the round, for the message."""
        limit = self.cfg.verify.max_failed_share
        if not (total and failed) or (failed < total and failed / total <= limit):
            return
        first = next((f for f in firsts if f), "(not recorded)")
        rule = "every sample" if failed == total else f"more than verify.max_failed_share={limit:g} of the samples"
        raise VerifierFailureError(
            f"scoring failed on {failed} of {total} samples of {what} ({rule}); scored by {self.describe()}; "
            f"the first failure: {first.removeprefix('verifier failed: ')}. Fix the function (iprime.verifiers."
            "score_row(response, row, RowScoring(...)) scores one sample in this process and shows the error), or "
            "raise verify.max_failed_share to train on with those samples scored 0"
        )

    def describe(self) -> str:
        """What scores the samples, for messages: the verifier callable, or the rows' verifiers and reward functions."""
        if self.verifier is not None:
            return f"the verifier {getattr(self.verifier, '__qualname__', repr(self.verifier))}"
        d = self.cfg.data
        text = f"data.verifier={d.verifier}" if d.verifier else "each row's verifier (by ability / data source)"
        if d.reward_functions:
            text += f" + data.reward_functions={list(d.reward_functions)}"
        return text

    def score(
        self, texts: Sequence[str], rows: Sequence[Mapping[str, Any]], references: Sequence[Any], row_ids: Sequence[int]
    ) -> tuple[list[float], dict[str, float]]:
        """Scores in [0, 1] for each sample and ``verify/timeouts``, ``verify/failed`` counts."""
        results, stats = self.verify(texts, rows, references, row_ids)
        return [float(r.score) for r in results], stats

    def verify_named(self, name: str, texts: Sequence[str], references: Sequence[Any]) -> list[VerifyResult]:
        """Results of the registered verifier ``name`` (``math``, ``code``, ``arithmetic``, ...) on
        each ``(text, reference)``, in the run's verifier pool: how benchmark rows, which name
        their own verifier, are scored. Scores are checked to lie in [0, 1]."""
        results = verify_batch(
            name, texts, references, pool=self._pool(), workers=0, timeout_s=self.cfg.verify.timeout_s
        )
        for i, result in enumerate(results):
            checked_score(result, i)
        return results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def checked_score(result: VerifyResult, row: int) -> float:
    score = float(result.score)
    if not (0.0 <= score <= 1.0) or math.isnan(score):
        raise ValueError(f"verifier returned {score} for row {row}; scores must lie in [0, 1]")
    return score
