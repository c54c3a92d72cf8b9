"""The code sandbox: run untrusted Python and its tests in an isolated child process.

**What it isolates.** A program a policy wrote (hostile by assumption: it is optimised
against the reward) runs with no network, no view of the host's processes, files, daemon
sockets, keyrings or environment, and only a small quota'd ``/tmp`` to write to; it cannot
outlive its sample or exhaust the host's disk or process table.

**How.** :func:`run_tests` (host side, :mod:`.host`) starts :mod:`.runner` as
``python -I runner.py`` (by path: a stdlib-only script, it imports nothing of iprime) in
fresh network, PID, mount, IPC and UTS namespaces, where it builds a read-only root of the
system directories and the Python installation, then runs the candidate's code under an
unprivileged identity (a fresh random uid as root, no capabilities in a user namespace
otherwise) with rlimits, ``no_new_privs``, a fresh session keyring and a seccomp filter.
Values cross the boundary only as plain data (:func:`encode_plain`: builtin scalars and
containers, decoded into fresh objects). ``isolation=`` / ``$IPRIME_SANDBOX`` picks the
mode: ``"auto"`` (``"namespaces"`` as root, ``"userns"`` otherwise) or the explicit,
warning ``"rlimits"`` (resource limits only, for development).

**What it guarantees.** Verdicts are never computed where the candidate's code runs: the
host compares the values that come back (the expected ones never enter the sandbox), and
a judge process that holds a test but not the code judges what fits no pattern. A machine
where the isolation cannot work raises :class:`SandboxUnavailable` before any sample is
scored, never a silent 0. It does not isolate the kernel, CPU and memory as a whole, or
world-readable system files. ``docs/security.md`` has the threat model, the full table of
what each mode isolates, and the attacks the tests run (``tests/test_sandbox*.py``).

Which tests run and how they are judged is the code verifier's job
(:mod:`iprime.verifiers.code`); this package only executes.
"""

from .host import (
    ENV_VAR,
    CallOutcome,
    InsecureSandboxWarning,
    SandboxError,
    SandboxLimits,
    SandboxRun,
    SandboxUnavailable,
    TestOutcome,
    apply_values,
    check_isolation_available,
    decode_call,
    remove_tree,
    resolve_isolation,
    run_checked,
    run_tests,
)
from .runner import PlainDataError, decode_plain, dumps_plain, encode_plain, loads_plain, stub_names

__all__ = [
    "ENV_VAR",
    "CallOutcome",
    "InsecureSandboxWarning",
    "PlainDataError",
    "SandboxError",
    "SandboxLimits",
    "SandboxRun",
    "SandboxUnavailable",
    "TestOutcome",
    "apply_values",
    "check_isolation_available",
    "decode_call",
    "decode_plain",
    "dumps_plain",
    "encode_plain",
    "loads_plain",
    "remove_tree",
    "resolve_isolation",
    "run_checked",
    "run_tests",
    "stub_names",
]
