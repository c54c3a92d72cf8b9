"""Issue 24, item 3 and "verify_code has no hard cap": the host's work on what a sample sends back
(decoding the values channel, comparing values, evaluating the test's expression on them) and on
the response itself (extracting and planning) is bounded in time and memory.

Each class is one family of attacks on the host, several variants each (some the issue names,
some it does not): every one must score 0 with a reason, return within its timeout plus
:data:`HARD_SLACK_S`, and grow the caller's resident memory by less than :data:`CALLER_GROWTH`.
Honest controls of the same shapes must still score 1.0. On the code before the change the
attacks hang the caller (quadratic set building, long multiplications and divisions, tens of
millions of ``json.loads``), or take it past 1 GiB (payloads that decode to 25 times their size)."""

from __future__ import annotations

import json
import time

import pytest
from sandbox_available import needs_sandbox

from iprime.verifiers import verify_code, verify_code_detailed
from iprime.verifiers.code import outputs_match
from iprime.verifiers.result import VerifyResult

pytestmark = needs_sandbox

TIMEOUT = 2.0
# The sandbox may overrun its wall limit by its start-up allowance (2 s) and the kill; judging gets
# JUDGE_ALLOWANCE_S (2 s) past the sample's time, and the caller waits REPLY_GRACE_S (0.5 s) more
# for the reply (test_the_cap_is_what_the_tests_allow checks the sum).
HARD_SLACK_S = 5.0
# What the caller (this test process) may grow by while it scores one attack: the values it read,
# at most 64 MiB held twice, and the verifier's own buffers; the attacks took it past 1 GiB.
# Measured from the attack's start (the peak is reset first), so whatever earlier tests of the
# same pytest process loaded (models, datasets) does not count.
CALLER_GROWTH = 400 << 20
M61 = 2**61 - 1  # every multiple of it hashes to 0 (CPython's int hash is n mod 2**61 - 1)


def py(code: str) -> str:
    return f"```python\n{code}\n```\n"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class CallerPeak:
    """The caller's resident memory growth, in bytes, over a ``with`` block: the kernel's peak
    (``VmHWM``) is reset at the start (``/proc/self/clear_refs``: ``5``), read at the end."""

    def __enter__(self) -> CallerPeak:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        self.start = _status_kib("VmRSS") << 10
        return self

    def __exit__(self, *exc) -> None:
        self.growth = (_status_kib("VmHWM") << 10) - self.start


def attack(code: str, tests, timeout_s: float = TIMEOUT, detailed: bool = True) -> VerifyResult | float:
    """Score ``code``; assert it scored 0 within the hard cap and the caller's memory stayed low."""
    start = time.monotonic()
    with CallerPeak() as peak:
        if detailed:
            result = verify_code_detailed(py(code), tests, timeout_s=timeout_s)
            score = result.score
        else:
            result = score = verify_code(py(code), tests, timeout_s=timeout_s)
    elapsed = time.monotonic() - start
    assert score == 0.0, result
    assert elapsed <= timeout_s + HARD_SLACK_S, (elapsed, result)
    assert peak.growth < CALLER_GROWTH, peak.growth >> 20
    return result


def honest(code: str, tests, timeout_s: float = 10.0) -> VerifyResult:
    result = verify_code_detailed(py(code), tests, timeout_s=timeout_s)
    assert result.score == 1.0, result
    return result


def stopped(result: VerifyResult) -> bool:
    """The reason names the bounded step that a limit stopped."""
    return "decoding and judging the returned values" in result.reason and (
        "did not finish" in result.reason or "time limit" in result.reason or "memory limit" in result.reason
    )


# A candidate's own access to the values channel at import time: the only writable pipe it holds.
FORGER = """
import fcntl, os, stat

def _values_fd():
    for fd in range(3, 256):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISFIFO(st.st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            return fd
    raise SystemExit("no values channel")

def _forge(data):
    fd, view = _values_fd(), memoryview(data)
    while view:
        view = view[os.write(fd, view):]
"""


def forged(payload: str) -> str:
    """A candidate that writes ``payload`` (a Python bytes expression) on the values channel at
    import time, then defines a wrong ``f``."""
    return FORGER + f"\n_forge({payload})\n\ndef f(*args):\n    return None\n"


def forged_values(encoded: str, index: int = 0) -> str:
    """A candidate that sends, at import time, the message the runner sends for call ``index``
    with ``encoded`` (a Python expression the candidate evaluates: the runner's plain-data
    encoding of the list of values) before any call runs; the first message of a call counts."""
    forge = f"import json\n_forge((json.dumps({{'i': {index}, 'v': json.dumps({encoded})}}) + '\\n').encode())"
    return forged("b''") + "\n" + forge


@needs_sandbox
class TestCollidingHashes:
    """Values that all hash alike: building the set (or dict) is quadratic, 100,000 of them take
    hours (the sandbox could not build one in time either, so the candidate sends the encoding:
    forged at import time). Wherever the host builds it (decoding, or the test's own
    ``set(...)``), a limit stops it."""

    INTS = "[i * (2**61 - 1) for i in range(1, 100_001)]"

    def test_a_set_returned_by_a_call(self) -> None:
        r = attack(forged_values(f"['l', [['s', {self.INTS}]]]"), {"fn_name": "f", "inputs": [[1]], "outputs": [[1]]})
        assert stopped(r), r

    def test_dict_keys_in_an_assert(self) -> None:
        r = attack(forged_values(f"['l', [['d', [[k, 0] for k in {self.INTS}]]]]"), ["assert f(1) == {1: 0}"])
        assert stopped(r), r

    def test_one_tuples_in_a_frozenset_inside_a_list(self) -> None:
        encoded = f"['l', [['l', [['f', [['t', [k]] for k in {self.INTS}]]]]]]"
        r = attack(forged_values(encoded), ["assert f(1) == [frozenset({(1,)})]"])
        assert stopped(r), r

    def test_the_tests_own_set_call(self) -> None:
        # The values decode as a list (cheap; f builds it honestly); the test's ``set(...)``,
        # evaluated on the host, collides.
        r = attack(f"def f(x):\n    return {self.INTS}", ["assert set(f(1)) == {1, 2, 3}"])
        assert stopped(r), r

    def test_stdin_stdout_mode(self) -> None:
        # A stdin/stdout program runs in a process without the values channel (the pipe it finds
        # is its own result pipe, capped); outputs are strings, whose hashes are per-process keyed.
        attack(forged_values(f"['l', [['s', {self.INTS}]]]") + "\nprint(1)", {"inputs": [""], "outputs": ["2"]})

    def test_control_a_large_ordinary_set_passes_quickly(self) -> None:
        r = honest("def f(x):\n    return set(range(100_000))", ["assert f(1) == set(range(100_000))"])
        assert r.elapsed_s < 5.0, r


@needs_sandbox
class TestHugeIntegers:
    """Integers of tens of millions of bits (the values channel carries any size in hex) in the
    test's arithmetic: multiplication, division and gcd take minutes; a limit stops them."""

    # Dense: (2**n - 1) // 3 is 0x5555...; a sparse 2**n + x multiplies in a fraction of a second.
    BIG = "((1 << 31_000_000) - 1) // (2 + x)"

    def test_product_of_two_31_million_bit_ints(self) -> None:
        r = attack(f"def f(x):\n    return {self.BIG}", ["assert f(1) * f(2) == 6"])
        assert stopped(r), r

    def test_modulo_by_a_15_million_bit_int(self) -> None:
        code = "def f(x):\n    return ((1 << (31_000_000 // x)) - 1) // 3"
        r = attack(code, ["assert f(1) % f(2) == 0"])
        assert stopped(r), r

    def test_floor_division(self) -> None:
        code = "def f(x):\n    return ((1 << (31_000_000 // x)) - 1) // 3"
        r = attack(code, ["assert f(1) // f(2) == 2"])
        assert stopped(r), r

    def test_gcd(self) -> None:
        code = "def f(x):\n    return ((1 << (31_000_000 // x)) - 1) // (2 + x)"
        r = attack(code, ["assert math.gcd(f(1), f(2)) == 1"])
        assert stopped(r), r

    def test_str_and_pow_and_shift_are_refused_quickly(self) -> None:
        # str() of a huge int, a huge power and a shift are bounded where they are evaluated: the
        # int-to-str limit, the host's power check, the judge process's own limits in the sandbox.
        for asserts in (["assert str(f(1)) == '1'"], ["assert f(1) ** 3 == 8"], ["assert f(1) << f(2) == 0"]):
            r = attack(f"def f(x):\n    return {self.BIG}", asserts)
            assert r.reason, r

    def test_control_ordinary_big_ints(self) -> None:
        honest("def f(x):\n    return 10**100 + x", ["assert f(1) * f(2) == (10**100 + 1) * (10**100 + 2)"])


@needs_sandbox
class TestManyTinyLines:
    """Tens of MiB of tiny lines forged on the values channel, one ``json.loads`` each (~30
    million): a limit stops the decoding, in every test mode."""

    MIB_60 = 60 << 20

    @pytest.mark.parametrize("line", [b"0\n", b"{}\n", b'{"i":-1}\n', b"[]\n"])
    def test_assert_mode(self, line: bytes) -> None:
        r = attack(forged(f"{line!r} * ({self.MIB_60} // {len(line)})"), ["assert f(1) == 2"])
        assert stopped(r), r

    def test_call_mode(self) -> None:
        r = attack(forged(f"b'0\\n' * ({self.MIB_60} // 2)"), {"fn_name": "f", "inputs": [[1]], "outputs": [2]})
        assert stopped(r), r

    def test_stdin_stdout_mode(self) -> None:
        # Here the program cannot reach the values channel (see TestCollidingHashes); it scores 0.
        attack(forged(f"b'1\\n' * ({self.MIB_60} // 2)") + "\nprint(3)", {"inputs": ["1\n"], "outputs": ["2\n"]})


@needs_sandbox
class TestFormatAndRepetition:
    """A returned string that the test's expression turns into gigabytes: ``%`` with a huge
    width or precision (str, bytes, mapping, tuple), ``list()`` of a long string, repetition.
    Where the host evaluates it, a limit or a size check stops it; where the expression goes to
    the sandbox (``str.format``, f-strings), the sandbox's own limits do."""

    @pytest.mark.parametrize(
        "value,expr",
        [
            ("'%01000000000d'", "f(1) % 5"),
            ("'%.999999999f'", "f(1) % 2.5"),
            ("b'%01000000000d'", "f(1) % 5"),
            ("'%(a)01000000000d'", "f(1) % {'a': 5}"),
            ("'%0500000000d%0500000000d'", "f(1) % (1, 2)"),
        ],
    )
    def test_percent_formatting(self, value: str, expr: str) -> None:
        r = attack(f"def f(x):\n    return {value}", [f"assert {expr} == '5'"])
        assert stopped(r), r

    def test_list_of_a_60_mb_string(self) -> None:
        # A call's values are capped at file_size_bytes (16 MiB); forged, one string takes 60 MiB.
        attack(forged_values("['l', ['ab' * (30 << 20)]]"), ["assert list(f(1)) == ['a']"])

    @pytest.mark.parametrize(
        "value,expr",
        [
            ("'ab' if x == 1 else 10**9", "f(1) * f(2)"),
            ("'ab' * (15 << 20)", "f(1) * 3"),
            ("[0] * 1000 if x == 1 else 10**6", "f(1) * f(2)"),
            ("'%01000000000d'", "f(1).format(5)"),
            ("'x'", "f'{f(1):>1000000000}'"),
        ],
    )
    def test_repetition_and_sandbox_side_formatting(self, value: str, expr: str) -> None:
        attack(f"def f(x):\n    return {value}", [f"assert {expr} == 'ab'"])

    def test_control_small_format(self) -> None:
        honest("def f(x):\n    return '%05d'", ["assert f(1) % 5 == '00005'", "assert f(1) * 2 == '%05d%05d'"])


@needs_sandbox
class TestExpandingPayloads:
    """Payloads under the values cap (64 MiB) that decode to many times their size: ``[]`` is 3
    bytes of JSON and 64 bytes of Python. A memory or time limit stops the decoding before the
    caller's memory grows."""

    N = (60 << 20) // 3

    @pytest.mark.parametrize("item", ["[]", "{}"])
    def test_a_forged_line_of_empty_containers(self, item: str) -> None:
        payload = f"b'[' + b'{item},' * {self.N - 1} + b'{item}]\\n'"
        r = attack(forged(payload), ["assert f(1) == 2"])
        assert stopped(r), r

    def test_forged_plain_data_inside_the_message(self) -> None:
        # JSON inside JSON, as the runner sends values: ["l", [["l", []], ...]] escaped in "v".
        count = (60 << 20) // 14
        inner = '["l",[' + ",".join(['["l",[]]'] * 2) + "]]"  # the shape, checked to decode
        assert json.loads(inner)
        payload = (
            f'b\'{{"i": 0, "v": "[\\\\"l\\\\",[\' + b\'[\\\\"l\\\\",[]],\' * {count} + b\'[\\\\"l\\\\",[]]]]"}}\\n\''
        )
        r = attack(forged(payload), ["assert f(1) == 2"])
        assert stopped(r), r

    def test_stdin_stdout_mode(self) -> None:
        payload = f"b'[' + b'[],' * {self.N - 1} + b'[]]\\n'"
        attack(forged(payload) + "\nprint(3)", {"inputs": ["1\n"], "outputs": ["2\n"]})

    def test_control_200k_shared_references(self) -> None:
        # 200,000 references to one list: 200,001 parts on the wire, decoded into separate lists.
        honest("def f(x):\n    return [[]] * 200_000", ["assert len(f(1)) == 200_000"])


@needs_sandbox
class TestTheResponseAndTheOutputs:
    """The other untrusted inputs of host-side work: the response (extracting its code, planning
    the asserts against it, which parses it) and a program's stdout (compared token by token)."""

    def test_a_response_whose_code_parses_into_gigabytes(self) -> None:
        code = "x = [" + "[]," * (12 << 20) + "]\ndef f(x):\n    return 0"
        r = attack(code, ["assert f(1) == 2"])
        assert "preparing the test" in r.reason and ("memory" in r.reason or "time" in r.reason), r

    @pytest.mark.parametrize("token", ["1" * 200_000 + "x", "1" * 200_000 + ".", "." + "1" * 200_000 + "e"])
    def test_a_long_stdout_token_against_a_float(self, token: str) -> None:
        # A number-like token compared with an expected float: the number pattern must be linear.
        start = time.monotonic()
        assert not outputs_match(token, "0.5")
        assert time.monotonic() - start < 0.5
        attack(f"print('{token}')", {"inputs": [""], "outputs": ["0.5"]})

    def test_the_cap_is_what_the_tests_allow(self) -> None:
        from iprime.verifiers.bounded import REPLY_GRACE_S
        from iprime.verifiers.code import JUDGE_ALLOWANCE_S
        from iprime.verifiers.sandbox.host import _STARTUP_ALLOWANCE_S

        assert _STARTUP_ALLOWANCE_S + JUDGE_ALLOWANCE_S + REPLY_GRACE_S + 0.5 == HARD_SLACK_S

    def test_verify_code_itself_returns_within_the_cap(self) -> None:
        for code, tests in (
            ("def f(x):\n    return ((1 << 31_000_000) - 1) // (2 + x)", ["assert f(1) * f(2) == 6"]),
            (forged(f"b'0\\n' * ({60 << 20} // 2)"), ["assert f(1) == 2"]),
        ):
            attack(code, tests, detailed=False)


class TestBoundedHelper:
    """:func:`iprime.verifiers.bounded.call_bounded` itself, with standard-library targets."""

    def test_a_result_comes_back_as_json(self) -> None:
        from iprime.verifiers.bounded import call_bounded

        assert call_bounded("builtins:divmod", (17, 5), wall_s=5.0) == [3, 2]
        assert call_bounded("builtins:len", (), blob=b"x" * 1000, wall_s=5.0) == 1000

    @pytest.mark.parametrize("target,args", [("time:sleep", (30,)), ("builtins:sum", (range(10**12),))])
    def test_the_wall_clock_stops_a_task_in_c_code(self, target: str, args: tuple) -> None:
        from iprime.verifiers.bounded import REPLY_GRACE_S, HostLimitExceeded, call_bounded

        start = time.monotonic()
        with pytest.raises(HostLimitExceeded, match="time limit|did not finish"):
            call_bounded(target, args, wall_s=0.5, what="the task")
        assert time.monotonic() - start < 0.5 + REPLY_GRACE_S + 0.5

    def test_the_memory_limit_stops_an_allocation(self) -> None:
        from iprime.verifiers.bounded import HostLimitExceeded, call_bounded

        with pytest.raises(HostLimitExceeded, match=r"the task: ran out of its memory limit \(64 MiB\)"):
            call_bounded("builtins:bytearray", (256 << 20,), wall_s=5.0, memory_bytes=64 << 20, what="the task")
        assert call_bounded("builtins:len", (bytearray(16 << 20),), wall_s=5.0, memory_bytes=64 << 20) == 16 << 20

    def test_an_exception_is_reported_with_its_type(self) -> None:
        from iprime.verifiers.bounded import HostLimitExceeded, call_bounded

        with pytest.raises(HostLimitExceeded, match="the task: ValueError: invalid literal"):
            call_bounded("builtins:int", ("x",), wall_s=5.0, what="the task")

    def test_a_killed_helper_is_replaced(self) -> None:
        from iprime.verifiers import bounded

        bounded.warm()
        helper = bounded._helper
        assert helper is not None
        helper.proc.kill()
        helper.proc.wait()
        assert bounded.call_bounded("builtins:abs", (-3,), wall_s=5.0) == 3
