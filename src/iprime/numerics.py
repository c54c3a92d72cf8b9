"""Portable float kernels: the same bits on every x86-64 CPU.

Torch picks its CPU kernels by what the processor offers: ATen dispatches elementwise and
reduction kernels to DEFAULT, AVX2 or AVX512 code (``ATEN_CPU_CAPABILITY``), and the MKL it is
built with picks its own GEMM kernels (SSE4.2, AVX2, AVX-512, ...). Kernels of different widths
sum in different orders, so a seeded run's weights differ in the last bits from one CPU to
another; a tiny model trained from scratch can turn that into a different model (issue 20: the
quickstart's SFT model scored 0.25 to 0.53 held-out accuracy by the kernels alone).

Two levels of *portable kernels* fix each such choice to one that a whole class of CPUs
executes the same way, for a fixed thread count (``torch.set_num_threads``; a reduction split
over two threads sums in another order than over one, on any CPU):

- ``"x86-64"`` (:data:`PORTABLE_ENV`), every x86-64 CPU: ``ATEN_CPU_CAPABILITY=default``
  (ATen's baseline kernels, compiled without AVX or FMA), ``MKL_CBWR=COMPATIBLE`` (MKL's
  conditional numerical reproducibility, its SSE2 code path, the same on Intel and AMD) and
  ``ONEDNN_MAX_CPU_ISA=SSE41``. About 3x slower than native on the quickstart's SFT (measured
  on an AVX-512 Xeon: 29.3 s vs 8.6 s for 80 steps). The golden pins use it.
- ``"avx2"`` (:data:`AVX2_ENV`), every CPU with AVX2 and FMA (Intel since Haswell, 2013; AMD
  since Excavator, 2015): ATen's AVX2 kernels, ``MKL_CBWR=AVX2``, oneDNN capped at AVX2. As fast
  as native (8.8 s vs 8.6 s). The quickstart uses it.

On an AVX-512 Xeon, MKL held to AVX2 (``MKL_ENABLE_INSTRUCTIONS``, as on an AVX2-only CPU) and
glibc's AVX-512 variants masked (``GLIBC_TUNABLES``) changed no bit at either level, while
without them the same seeded runs gave a different weight hash for each of ATen default / AVX2
/ AVX512 and MKL AVX2 / AVX-512. (oneDNN: no fp32 op of iprime's CPU runs reaches it today --
the cap changes no bit -- it keeps a future one portable.)

Each variable is read once, when torch first runs a kernel, so :func:`use_portable_kernels`
must run before torch is imported; :func:`check_portable` then confirms they took effect.
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
AVX2_ENV: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

MKL_CBWR_BRANCH = 1  # mkl_cbwr_get's argument: which code branch is in force
LEVELS: dict[str, tuple[dict[str, str], str, int]] = {
    # level: (environment, ATen's dispatch, MKL's CBWR branch as mkl_cbwr_get reports it)
    "x86-64": (PORTABLE_ENV, "DEFAULT", 3),  # MKL_CBWR_COMPATIBLE
    "avx2": (AVX2_ENV, "AVX2", 10),  # MKL_CBWR_AVX2
}


def cpu_has_avx2() -> bool:
    """Whether this CPU runs the ``"avx2"`` level (AVX2 and FMA, per ``/proc/cpuinfo``)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return {"avx2", "fma"} <= set(flags.split())


def unportable_reason() -> str | None:
    """``None`` on x86-64, where :data:`PORTABLE_ENV` makes every CPU compute the same bits;
    else why not."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return None
    return f"portable kernels are defined for x86-64; this CPU is {machine}, whose torch has other kernels (no MKL)"


def use_portable_kernels(level: str = "x86-64") -> None:
    """Set ``level``'s environment (:data:`LEVELS`) in this process, inherited by its children.

    Raises ``RuntimeError`` if torch is already imported (its kernel choice may be fixed by
    then) and ``ValueError`` for an unknown level or an ``"avx2"`` level on a CPU without AVX2.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown kernel level {level!r}; known: {sorted(LEVELS)}")
    if level == "avx2" and not cpu_has_avx2():
        raise ValueError('this CPU lacks AVX2/FMA: use level "x86-64"')
    if "torch" in sys.modules:
        raise RuntimeError("use_portable_kernels() must run before torch is imported")
    os.environ.update(LEVELS[level][0])


def numerics_in_effect() -> dict:
    """What this process computes with: torch's version, ATen's dispatch, MKL's reproducibility
    branch (``mkl_cbwr_get``: 1 = off, 3 = COMPATIBLE, 10 = AVX2; ``None`` without MKL), the
    thread count, and the portable level this amounts to (``None``: native kernels)."""
    import torch

    torch.ones(2, 2) @ torch.ones(2, 2)  # MKL reads MKL_CBWR when it first runs
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        branch = int(lib.mkl_serv_cbwr_get(MKL_CBWR_BRANCH))
    except (OSError, AttributeError):  # a torch without MKL, or laid out differently
        branch = None
    aten = torch.backends.cpu.get_cpu_capability()
    level = next((name for name, (_, a, b) in LEVELS.items() if (aten, branch) == (a, b)), None)
    return {
        "torch": torch.__version__,
        "aten_cpu_capability": aten,
        "mkl_cbwr_branch": branch,
        "threads": torch.get_num_threads(),
        "portable_level": level,
    }


def check_portable(level: str = "x86-64") -> dict:
    """Raise ``RuntimeError`` unless this process runs ``level``'s kernels; return
    :func:`numerics_in_effect`."""
    got = numerics_in_effect()
    if got["portable_level"] != level:
        env, aten, branch = LEVELS[level]
        raise RuntimeError(
            f"portable kernels ({level}) are not in effect: ATen {got['aten_cpu_capability']} and MKL CBWR "
            f"branch {got['mkl_cbwr_branch']}, wanted {aten} and {branch}; the environment {env} must be set "
            "before torch is imported"
        )
    return got


def describe(numerics: dict) -> str:
    """One line for a log: which kernels a run used and what that means for its numbers."""
    level = numerics.get("portable_level")
    where = {"x86-64": "every x86-64 CPU", "avx2": "every x86-64 CPU with AVX2"}.get(level)
    if where:
        return f"float kernels: portable ({level}): the same numbers on {where}, with torch {numerics['torch']}"
    return f"float kernels: this CPU's (ATen {numerics['aten_cpu_capability']}): the numbers depend on the CPU"
