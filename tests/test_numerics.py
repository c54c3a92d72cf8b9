"""Portable float kernels (iprime.numerics) and the quickstart's use of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from iprime.numerics import LEVELS, PORTABLE_ENV, cpu_has_avx2, describe, unportable_reason, use_portable_kernels
from iprime.presets import QUICKSTART

pytestmark = pytest.mark.skipif(unportable_reason() is not None, reason=str(unportable_reason()))

PROBE = (
    "import json, sys; from iprime.numerics import check_portable, use_portable_kernels; "
    "level = sys.argv[2]; use_portable_kernels(level) if sys.argv[1] == 'use' else None; "
    "import torch; torch.set_num_threads(2); print(json.dumps(check_portable(level)))"
)


def _probe(mode: str, level: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    return subprocess.run(
        [sys.executable, "-c", PROBE, mode, level], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_use_portable_kernels_before_torch_switches_aten_and_mkl_whatever_the_callers_setting(level):
    if level == "avx2" and not cpu_has_avx2():
        pytest.skip("this CPU lacks AVX2")
    # the caller asked for AVX-512 kernels and MKL's automatic branch; the portable ones win
    proc = _probe("use", level, {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO"})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    _, aten, branch = LEVELS[level]
    assert (got["aten_cpu_capability"], got["mkl_cbwr_branch"], got["threads"]) == (aten, branch, 2)
    assert got["portable_level"] == level and describe(got).startswith(f"float kernels: portable ({level})")


def test_check_portable_refuses_a_process_on_native_kernels():
    proc = _probe("skip", "x86-64", {})
    assert proc.returncode != 0 and "portable kernels (x86-64) are not in effect" in proc.stderr


def test_an_unknown_level_is_an_error():
    with pytest.raises(ValueError, match="unknown kernel level"):
        use_portable_kernels("avx9")


def test_use_portable_kernels_after_torch_is_an_error():
    import torch  # noqa: F401  (loaded by now in any case)

    with pytest.raises(RuntimeError, match="before torch is imported"):
        use_portable_kernels()


def test_describe_says_when_numbers_depend_on_the_cpu():
    line = describe({"aten_cpu_capability": "AVX2", "mkl_cbwr_branch": 1, "portable_level": None})
    assert "AVX2" in line and "depend on the CPU" in line


def test_reseeded_preset_changes_what_is_random_but_not_the_held_out_problems():
    other = QUICKSTART.reseeded(1)
    assert other.seed == 1 and other.sft.seed == 1
    assert other.held_out_rows() == QUICKSTART.held_out_rows()
    task = QUICKSTART.make_task()
    assert task.sft_rows(8, seed=other.seed) != task.sft_rows(8, seed=QUICKSTART.seed)
