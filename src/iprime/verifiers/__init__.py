"""Outcome verifiers for PRIME: rewards from checking answers, not from a model.

* :func:`verify_math` — final-answer equivalence with math-verify.
* :func:`verify_code` — run extracted code against tests in a sandbox.
* :class:`GymTask` / ``"gym:<dataset>"`` — reasoning-gym's procedural tasks.
* :func:`get_verifier` — a verifier by name (:mod:`iprime.verifiers.registry`).
* :func:`verify_batch` / :class:`VerifierPool` — many samples over worker
  processes (:mod:`iprime.verifiers.batch`).
* :func:`score_row` / :func:`score_rows` — per-row rewards: each row's
  verifier by its ability / data source (:mod:`iprime.verifiers.dispatch`),
  plus weighted user reward functions; :func:`check_row` finds rows that
  cannot be scored before training.
* :mod:`iprime.verifiers.rows` — benchmark rows to gold answers / tests.
* :mod:`iprime.verifiers.sandbox` — the isolated execution under
  :func:`verify_code` (its own package: what it isolates, how, what it guarantees).

Imports inside the package point one way: ``registry`` < ``dispatch`` < ``batch``,
and ``rows`` -> ``code`` -> ``sandbox``.

Heavy dependencies (sympy via math-verify, reasoning-gym) are imported on
first use, so importing this package is cheap.
"""

from iprime.data.boxed import last_boxed

from .batch import VerifierPool, score_rows, verify_batch
from .code import parse_tests, verify_code, verify_code_detailed
from .dispatch import (
    RewardFunctionError,
    RowScoring,
    check_row,
    register_row_verifier,
    row_reference,
    score_row,
    score_row_detailed,
    verifier_for_row,
)
from .extract import extract_code, extract_final_answer
from .gym import GymTask, GymVerifier
from .math import verify_math, verify_math_detailed
from .registry import CodeVerifier, MathVerifier, Verifier, available_verifiers, get_verifier, register_verifier
from .result import VerifyResult
from .sandbox import InsecureSandboxWarning, SandboxError, SandboxLimits, SandboxUnavailable

__all__ = [
    "InsecureSandboxWarning",
    "parse_tests",
    "CodeVerifier",
    "GymTask",
    "GymVerifier",
    "MathVerifier",
    "RewardFunctionError",
    "RowScoring",
    "SandboxError",
    "SandboxLimits",
    "SandboxUnavailable",
    "Verifier",
    "VerifierPool",
    "VerifyResult",
    "available_verifiers",
    "check_row",
    "extract_code",
    "extract_final_answer",
    "get_verifier",
    "last_boxed",
    "register_row_verifier",
    "register_verifier",
    "row_reference",
    "score_row",
    "score_row_detailed",
    "score_rows",
    "verifier_for_row",
    "verify_batch",
    "verify_code",
    "verify_code_detailed",
    "verify_math",
    "verify_math_detailed",
]
