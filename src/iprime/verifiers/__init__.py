"""Outcome verifiers for PRIME: rewards from checking answers, not from a model.

* :func:`verify_math` — final-answer equivalence with math-verify.
* :func:`verify_code` — run extracted code against tests in a sandbox.
* :class:`GymTask` / ``"gym:<dataset>"`` — reasoning-gym's procedural tasks.
* :func:`verify_batch` / :class:`VerifierPool` — many samples over worker
  processes; :func:`get_verifier` picks a verifier by name.
* :mod:`iprime.verifiers.rows` — benchmark rows to gold answers / tests.

Heavy dependencies (sympy via math-verify, reasoning-gym) are imported on
first use, so importing this package is cheap.
"""

from iprime.data.boxed import last_boxed

from .batch import (
    CodeVerifier,
    MathVerifier,
    Verifier,
    VerifierPool,
    available_verifiers,
    get_verifier,
    register_verifier,
    verify_batch,
)
from .code import verify_code, verify_code_detailed
from .extract import extract_code, extract_final_answer
from .gym import GymTask, GymVerifier
from .math import verify_math, verify_math_detailed
from .result import VerifyResult
from .sandbox import SandboxError, SandboxLimits, SandboxUnavailable

__all__ = [
    "CodeVerifier",
    "GymTask",
    "GymVerifier",
    "MathVerifier",
    "SandboxError",
    "SandboxLimits",
    "SandboxUnavailable",
    "Verifier",
    "VerifierPool",
    "VerifyResult",
    "available_verifiers",
    "extract_code",
    "extract_final_answer",
    "get_verifier",
    "last_boxed",
    "register_verifier",
    "verify_batch",
    "verify_code",
    "verify_code_detailed",
    "verify_math",
    "verify_math_detailed",
]
