"""Host-side cost of scoring hostile samples: worst time and peak memory of the caller.

    .venv/bin/python benchmarks/host_bounds.py [--timeout 2] [--only NAME ...] [--honest N]

Each attack (the variants of ``tests/test_host_bounds.py``, grouped by the host-side step they
load) is scored by :func:`iprime.verifiers.verify_code_detailed` in a fresh Python process, which
reports its wall time, its score and reason, and its own peak resident memory (``VmHWM``: the
caller's, whatever the sandbox and the bounded helper did), plus the largest resident size of
the bounded helper's task children, sampled every 10 ms from ``/proc``. ``--honest N`` also
times N shipped MBPP rows' reference solutions (the per-sample cost of the honest path).

The table feeds docs/security.md ("Host-side cost"). Needs the namespace sandbox (root).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FORGER = """
import fcntl, os, stat, json
def _values_fd():
    for fd in range(3, 256):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            return fd
def _forge(data):
    fd, view = _values_fd(), memoryview(data)
    while view:
        view = view[os.write(fd, view):]
def f(*args):
    return None
"""
INTS = "[i * (2**61 - 1) for i in range(1, 100_001)]"
MIB60 = 60 << 20

# name: (step, code, tests)
ATTACKS: dict[str, tuple[str, str, object]] = {
    "colliding set, forged": (
        "decode",
        FORGER + f"_forge((json.dumps({{'i': 0, 'v': json.dumps(['l', [['s', {INTS}]]])}}) + '\\n').encode())",
        ["assert f(1) == {1}"],
    ),
    "colliding dict, forged": (
        "decode",
        FORGER
        + f"_forge((json.dumps({{'i': 0, 'v': json.dumps(['l', [['d', [[k, 0] for k in {INTS}]]]])}})"
        + " + '\\n').encode())",
        ["assert f(1) == {1: 0}"],
    ),
    "set() of colliding list": ("judge", f"def f(x):\n    return {INTS}", ["assert set(f(1)) == {1}"]),
    "31M-bit ints multiplied": (
        "judge",
        "def f(x):\n    return ((1 << 31_000_000) - 1) // (2 + x)",
        ["assert f(1) * f(2) == 6"],
    ),
    "31M-bit % 15M-bit": (
        "judge",
        "def f(x):\n    return ((1 << (31_000_000 // x)) - 1) // 3",
        ["assert f(1) % f(2) == 0"],
    ),
    "gcd of 31M-bit ints": (
        "judge",
        "def f(x):\n    return ((1 << (31_000_000 // x)) - 1) // (2 + x)",
        ["assert math.gcd(f(1), f(2)) == 1"],
    ),
    "'%01000000000d' % 5": ("judge", "def f(x):\n    return '%01000000000d'", ["assert f(1) % 5 == '5'"]),
    "'%.999999999f' % 2.5": ("judge", "def f(x):\n    return '%.999999999f'", ["assert f(1) % 2.5 == '5'"]),
    "list() of a 60 MB str": (
        "judge",
        FORGER + "_forge((json.dumps({'i': 0, 'v': json.dumps(['l', ['ab' * (30 << 20)]])}) + '\\n').encode())",
        ["assert list(f(1)) == ['a']"],
    ),
    "str * 10**9": ("judge", "def f(x):\n    return 'ab' if x == 1 else 10**9", ["assert f(1) * f(2) == 'ab'"]),
    "60 MiB of '0' lines": ("decode", FORGER + f"_forge(b'0\\n' * ({MIB60} // 2))", ["assert f(1) == 2"]),
    "60 MiB of '{}' lines": ("decode", FORGER + f"_forge(b'{{}}\\n' * ({MIB60} // 3))", ["assert f(1) == 2"]),
    "60 MiB line of []": (
        "decode",
        FORGER + f"_forge(b'[' + b'[],' * ({MIB60} // 3) + b'[]]\\n')",
        ["assert f(1) == 2"],
    ),
    "60 MiB line of {}": (
        "decode",
        FORGER + f"_forge(b'[' + b'{{}},' * ({MIB60} // 3) + b'{{}}]\\n')",
        ["assert f(1) == 2"],
    ),
    "36 MB code to parse": (
        "prepare",
        "x = [" + "[]," * (12 << 20) + "]\ndef f(x):\n    return 0",
        ["assert f(1) == 2"],
    ),
    "200k-digit stdout token": ("judge", "print('1' * 200_000 + 'x')", {"inputs": [""], "outputs": ["0.5"]}),
}

CHILD = r"""
import json, sys, time
from iprime.verifiers import verify_code_detailed
from iprime.verifiers import bounded
code, tests, timeout = json.loads(sys.stdin.read())
bounded.warm()
print(json.dumps({"helper": bounded._helper.proc.pid}), flush=True)
start = time.monotonic()
r = verify_code_detailed("```python\n" + code + "\n```", tests, timeout_s=timeout)
elapsed = time.monotonic() - start
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"elapsed": elapsed, "score": r.score, "reason": r.reason, "hwm_kib": hwm}), flush=True)
"""


def _children_rss_kib(ppid: int) -> int:
    """The largest resident size among ``ppid``'s children right now."""
    best = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(ppid) and "VmRSS" in fields:
            best = max(best, int(fields["VmRSS"].split()[0]))
    return best


def measure(code: str, tests, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps([code, tests, timeout]))
    proc.stdin.close()
    helper = json.loads(proc.stdout.readline())["helper"]
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _children_rss_kib(helper))
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    line = proc.stdout.readline()
    done.set()
    thread.join()
    proc.wait()
    result = json.loads(line)
    result["helper_task_kib"] = peak[0]
    return result


def honest_rows(n: int) -> list[tuple[str, dict]]:
    from iprime.eval.benchmarks import read_data_file
    from iprime.verifiers.rows import mbpp_tests

    rows = read_data_file("mbpp.json.gz")[:n]
    return [(r["code"], mbpp_tests(r)) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=2.0, help="verify_code's timeout_s for each attack")
    parser.add_argument("--only", nargs="*", default=None, help="names of attacks to run (default: all)")
    parser.add_argument("--honest", type=int, default=0, help="also time N MBPP reference solutions")
    parser.add_argument("--no-attacks", action="store_true", help="only the honest timing (e.g. on older code)")
    args = parser.parse_args()
    names = [] if args.no_attacks else args.only or list(ATTACKS)
    print(f"timeout_s = {args.timeout:g}; caller = a fresh Python running verify_code_detailed")
    print(f"{'attack':<26} {'step':<8} {'score':>5} {'time s':>7} {'caller MiB':>10} {'task MiB':>9}  reason")
    worst_t, worst_m = 0.0, 0
    for name in names:
        step, code, tests = ATTACKS[name]
        r = measure(code, tests, args.timeout)
        worst_t, worst_m = max(worst_t, r["elapsed"]), max(worst_m, r["hwm_kib"])
        print(
            f"{name:<26} {step:<8} {r['score']:>5.1f} {r['elapsed']:>7.2f} {r['hwm_kib'] / 1024:>10.0f} "
            f"{r['helper_task_kib'] / 1024:>9.0f}  {r['reason'][:90]}"
        )
    if names:
        print(
            f"worst: {worst_t:.2f} s (timeout_s + {worst_t - args.timeout:.2f} s), caller peak {worst_m / 1024:.0f} MiB"
        )
    if args.honest:
        from iprime.verifiers import verify_code_detailed

        rows = honest_rows(args.honest)
        verify_code_detailed("```python\nx = 1\n```", ["assert x == 1"])  # warm: the helper, the probe
        start = time.monotonic()
        scores = [verify_code_detailed(f"```python\n{c}\n```", t, timeout_s=10.0).score for c, t in rows]
        per = (time.monotonic() - start) / len(rows)
        print(f"honest: {sum(scores):g}/{len(rows)} MBPP reference solutions pass, {per * 1000:.0f} ms per sample")


if __name__ == "__main__":
    main()
