"""Portable float kernels: the same bits on every x86-64 CPU.

Torch picks its CPU kernels by what the processor offers: ATen dispatches elementwise and
reduction kernels to DEFAULT, AVX2 or AVX512 code (``ATEN_CPU_CAPABILITY``), and the MKL it is
built with picks its own GEMM kernels (SSE4.2, AVX2, AVX-512, ...). Kernels of different widths
sum in different orders, so a seeded run's weights differ in the last bits from one CPU to
another; a tiny model trained from scratch can turn that into a different model (issue 20: the
quickstart's SFT model scored 0.25 to 0.53 held-out accuracy by the kernels alone).

:data:`PORTABLE_ENV` fixes each such choice to one that every x86-64 CPU executes the same way:

- ``ATEN_CPU_CAPABILITY=default``: ATen's baseline kernels, compiled without AVX or FMA;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, the SSE2 code path that
  gives the same results on all Intel and compatible (AMD) processors for a fixed thread count;
- ``ONEDNN_MAX_CPU_ISA=SSE41``: oneDNN capped likewise (no fp32 op of iprime's CPU runs reaches
  oneDNN today -- measured: the cap changes no bit -- it keeps a future one portable).

The thread count is the caller's to fix (``torch.set_num_threads``): a reduction split over two
threads sums in another order than one over one thread, on any CPU.

Each variable is read once, when torch first runs a kernel, so :func:`use_portable_kernels`
must run before torch is imported; :func:`check_portable` then confirms they took effect. The
cost is speed (scalar kernels), nothing else.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

PORTABLE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
}

MKL_CBWR_BRANCH = 1  # mkl_cbwr_get's argument: which code branch is in force
MKL_CBWR_COMPATIBLE = 3  # its answer under MKL_CBWR=COMPATIBLE (mkl_cbwr.h)


def unportable_reason() -> str | None:
    """``None`` on x86-64, where :data:`PORTABLE_ENV` makes every CPU compute the same bits;
    else why not."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return None
    return f"portable kernels are defined for x86-64; this CPU is {machine}, whose torch has other kernels (no MKL)"


def use_portable_kernels() -> None:
    """Set :data:`PORTABLE_ENV` in this process's environment (inherited by its children).

    Raises ``RuntimeError`` if torch is already imported: its kernel choice may be fixed by then.
    """
    if "torch" in sys.modules:
        raise RuntimeError("use_portable_kernels() must run before torch is imported")
    os.environ.update(PORTABLE_ENV)


def numerics_in_effect() -> dict:
    """What this process computes with: torch's version, ATen's dispatch, MKL's reproducibility
    branch (``3`` = COMPATIBLE, ``None`` without MKL) and the thread count."""
    import torch

    torch.ones(2, 2) @ torch.ones(2, 2)  # MKL reads MKL_CBWR when it first runs
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        branch = int(lib.mkl_serv_cbwr_get(MKL_CBWR_BRANCH))
    except (OSError, AttributeError):  # a torch without MKL, or laid out differently
        branch = None
    return {
        "torch": torch.__version__,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr_branch": branch,
        "threads": torch.get_num_threads(),
    }


def check_portable() -> dict:
    """Raise ``RuntimeError`` unless this process runs the portable kernels; return
    :func:`numerics_in_effect`."""
    got = numerics_in_effect()
    want = {"aten_cpu_capability": "DEFAULT", "mkl_cbwr_branch": MKL_CBWR_COMPATIBLE}
    wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    if wrong:
        raise RuntimeError(
            f"portable kernels are not in effect (got, wanted): {wrong}; the environment "
            f"{PORTABLE_ENV} must be set before torch is imported"
        )
    return got


def describe(numerics: dict) -> str:
    """One line for a log: which kernels a run used and what that means for its numbers."""
    portable = numerics["aten_cpu_capability"] == "DEFAULT" and numerics["mkl_cbwr_branch"] == MKL_CBWR_COMPATIBLE
    if portable:
        return "float kernels: portable (ATen DEFAULT, MKL CBWR=COMPATIBLE): the same numbers on every x86-64 CPU"
    return f"float kernels: this CPU's (ATen {numerics['aten_cpu_capability']}): the numbers depend on the CPU"
