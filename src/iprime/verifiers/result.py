"""The result type every verifier's ``*_detailed`` function returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VerifyResult"]


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying one response.

    Attributes:
        score: the reward in [0, 1] (what the plain verifier function returns).
        passed: number of checks that passed (math: 0/1; code: tests passed).
        total: number of checks (math: 1; code: tests run; 0 if none ran).
        reason: short human-readable explanation, e.g. ``"correct"``,
            ``"no final answer found"``, ``"test 3/5 failed: AssertionError"``,
            ``"timed out after 10s"``. Meant for logs and debugging.
        elapsed_s: wall time spent verifying, in seconds.
    """

    score: float
    passed: int = 0
    total: int = 0
    reason: str = ""
    elapsed_s: float = 0.0

    def __float__(self) -> float:
        return float(self.score)
