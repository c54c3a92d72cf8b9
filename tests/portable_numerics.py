"""Pinned runs in a child process under :mod:`iprime.numerics`' portable kernels.

The kernel choice is made when torch first runs, so pinned runs execute in a child process
started with :data:`PINNED_ENV` (the portable kernels and one thread), which checks that they
took effect before it runs anything (:func:`check_pinned`).

Measured on an Intel Xeon with AVX-512 (2026-12-06): without these settings, ATen at
default / AVX2 / AVX512 and MKL limited to AVX2 (``MKL_ENABLE_INSTRUCTIONS``, as on an
AVX2-only CPU) gave four different weight hashes for the same seeded 3-step run; with them, MKL
limited to AVX2 or SSE4.2, oneDNN capped at SSE4.1 and glibc's AVX2/FMA variants masked
(``GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA,...``) all gave the same bits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from iprime.numerics import PORTABLE_ENV, check_portable

PINNED_ENV: dict[str, str] = {**PORTABLE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""The portable kernels, and one thread, so that no reduction is split by the core count."""


def check_pinned() -> dict:
    """Raise unless this process runs the pinned kernels on one thread; return what it runs."""
    got = check_portable()
    if got["threads"] != 1:
        raise RuntimeError(f"pinned runs need one thread, this process has {got['threads']}")
    return got


def run_child(script: Path, names: list[str], extra_env: dict[str, str] | None = None, timeout: float = 600) -> dict:
    """Run ``python script --child OUT *names`` under :data:`PINNED_ENV` (applied after
    ``extra_env``, which can add settings such as ``MKL_ENABLE_INSTRUCTIONS`` but never undo
    the pinned ones) and return the JSON the child wrote to ``OUT``."""
    env = {**os.environ, **(extra_env or {}), **PINNED_ENV}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pinned.json"
        proc = subprocess.run(
            [sys.executable, str(script), "--child", str(out), *names],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            command = f"{script.name} --child {' '.join(names)}"
            raise RuntimeError(f"{command} exited {proc.returncode}:\n{proc.stderr[-6000:]}")
        return json.loads(out.read_text())
