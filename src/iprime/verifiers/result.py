"""The result type every verifier's ``*_detailed`` function returns."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["VerifyResult", "reason_says_timed_out"]

# How the verifiers word a timeout in ``reason``: math-verify's deadline ("timed out after 5s"),
# the sandbox's wall limit for the whole run ("timed out after 10.0s"), the first failing test of
# an all-or-nothing code run ("passed 0/3; test 0 failed: test timed out after 3s") and the
# pool's hard deadline ("verifier failed: timed out after 13s").
_TIMEOUT_REASON = re.compile(
    r"^(?:verifier failed: )?(?:timed out after |passed \d+/\d+; test \d+ failed: test timed out after )"
)


def reason_says_timed_out(reason: str) -> bool:
    """Whether a verifier's ``reason`` reports that its own timeout fired (see ``VerifyResult.timed_out``)."""
    return bool(_TIMEOUT_REASON.match(reason))


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
        timed_out: the sample ran out of time: the verifier's own timeout fired
            (math's deadline, the code sandbox's wall limit) or its worker was
            killed at the pool's hard deadline. Set from the verifier's
            ``reason`` (:func:`reason_says_timed_out`) by
            :func:`iprime.verifiers.verify_batch` and ``score_rows``; the
            trainer counts these samples as ``verify/timeouts``.
    """

    score: float
    passed: int = 0
    total: int = 0
    reason: str = ""
    elapsed_s: float = 0.0
    timed_out: bool = False

    def __float__(self) -> float:
        return float(self.score)
