"""A float environment that computes the same bits on every x86-64 CPU, for tests pinned to
recorded floats.

Torch picks its CPU kernels by what the processor offers: ATen dispatches elementwise and
reduction kernels to DEFAULT, AVX2 or AVX512 code (``ATEN_CPU_CAPABILITY``), and the MKL it is
built with picks its own GEMM kernels (SSE4.2, AVX2, AVX-512, ...). Kernels of different widths
sum in different orders, so a seeded run's weights differ in the last bits from one CPU to
another, and after a few optimizer steps by ~1e-6 relative (issue 20: an AMD EPYC with
AVX-512 failed every pin recorded on an AVX2 machine). A sampled token can even flip.

:data:`PORTABLE_ENV` fixes every such choice to one that every x86-64 CPU runs the same way:

- ``ATEN_CPU_CAPABILITY=default``: ATen's baseline kernels, compiled without AVX or FMA;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, the SSE2 code path that
  Intel documents as giving the same results on all Intel and compatible (AMD) processors;
- ``ONEDNN_MAX_CPU_ISA=SSE41``: oneDNN's kernels capped likewise (no fp32 op of today's pinned
  runs reaches oneDNN -- measured: the cap changes no bit -- it keeps a future one portable);
- one thread for OpenMP and MKL, so that no reduction is split by the core count.

The environment must be set before torch loads, so pinned runs execute in a child process
(:func:`run_child`), which first checks that the settings took effect (:func:`check_in_effect`).
It costs speed (scalar kernels), nothing else: the pinned runs are tiny.

Measured on an Intel Xeon with AVX-512 (2026-12-06): without this environment, ATen at
default / AVX2 / AVX512 and MKL limited to AVX2 (``MKL_ENABLE_INSTRUCTIONS``, as on an AVX2-only
CPU) gave four different weight hashes for the same seeded run; with it, MKL limited to AVX2
or SSE4.2 and oneDNN capped at SSE4.1 all gave the same bits.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

PORTABLE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

MKL_CBWR_BRANCH = 1  # mkl_cbwr_get's argument: which code branch is in force
MKL_CBWR_COMPATIBLE = 3  # its answer under MKL_CBWR=COMPATIBLE (mkl_cbwr.h)


def portable_platform() -> str | None:
    """``None`` where the pinned bits can be reproduced (x86-64), else why not."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return None
    return (
        f"the pins are recorded on x86-64's portable kernels; this CPU is {machine}, whose torch "
        "has other kernels (no MKL), so its bits cannot match"
    )


def numerics_in_effect() -> dict:
    """What this process computes with: ATen's dispatch, MKL's reproducibility branch, torch's
    version and thread count (a record, written beside the pins)."""
    import torch

    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    torch.ones(2, 2) @ torch.ones(2, 2)  # MKL reads MKL_CBWR when it first runs
    try:
        branch = int(lib.mkl_serv_cbwr_get(MKL_CBWR_BRANCH))
    except AttributeError:  # a torch without MKL
        branch = None
    return {
        "torch": torch.__version__,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr_branch": branch,
        "threads": torch.get_num_threads(),
    }


def check_in_effect() -> dict:
    """Raise unless this process runs the portable kernels; return :func:`numerics_in_effect`."""
    got = numerics_in_effect()
    want = {"aten_cpu_capability": "DEFAULT", "mkl_cbwr_branch": MKL_CBWR_COMPATIBLE, "threads": 1}
    wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    if wrong:
        raise RuntimeError(
            f"portable numerics not in effect (got, wanted): {wrong}; they must be set in the "
            "environment before torch is imported (tests/portable_numerics.py: run_child)"
        )
    return got


def run_child(script: Path, names: list[str], extra_env: dict[str, str] | None = None, timeout: float = 600) -> dict:
    """Run ``python script --child OUT *names`` under :data:`PORTABLE_ENV` (applied after
    ``extra_env``, which can add settings such as ``MKL_ENABLE_INSTRUCTIONS`` but never undo
    the portable ones) and return the JSON the child wrote to ``OUT``."""
    env = {**os.environ, **(extra_env or {}), **PORTABLE_ENV}
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
            raise RuntimeError(
                f"{script.name} --child {' '.join(names)} exited {proc.returncode}:\n{proc.stderr[-6000:]}"
            )
        return json.loads(out.read_text())
