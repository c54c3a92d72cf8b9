"""Code verification: extract the program from a response and run its tests.

``tests`` comes in any of the shapes :func:`parse_tests` accepts (a dict or its JSON
string): stdin/stdout pairs (APPS, CodeContests), call-based tests with ``fn_name``
(APPS, LeetCode-style), or assert snippets with an optional setup (HumanEval, MBPP,
LeetCode; see :mod:`iprime.verifiers.rows` for adapters from benchmark rows).

**The host judges.** Nothing the candidate's code can reach decides whether a test
passed:

* stdin/stdout: the program runs once per input in the sandbox; its stdout comes back
  and is compared here (:func:`outputs_match`): token by token (``"tokens"``, whitespace
  layout ignored) or line by line (``"lines"``, PRIME's), a number written with a
  fractional part or an exponent in the expected output matching any number within
  ``1e-5`` relative (+ ``1e-8`` absolute) of it.
* call-based: the function (or ``Solution().<fn_name>``) is called in the sandbox with
  each input; its return value comes back as plain data (:func:`encode_plain`: None,
  bool, numbers, str, bytes, lists, tuples, dicts, sets; any other object fails) and is
  compared here with the expected value, also unwrapped from a one-element list as the
  APPS/TACO evaluators do.
* asserts: each snippet is parsed here with :mod:`ast`. One ``assert`` the host can evaluate
  (:func:`plan_assert`: comparisons of any kind, ``is None``/``True``/``False`` included,
  ``not``/``and``/``or``, arithmetic, subscripts, builtins such as ``set``, ``sorted``, ``abs``,
  ``isinstance``, and ``math.isclose``/``factorial``/... with the host's own objects) sends only
  its *holes* to the sandbox, expressions rooted at a name of the candidate's (``f(3)``) with no
  comparison, builtin or name of the test's in them, and evaluates the rest here with their
  values (plain data): no expected value and no comparison ever enters the sandbox. Any other
  snippet (HumanEval's ``check(candidate)``, LeetCode's multi-line blocks, an assert that uses
  a setup helper or a module the host does not evaluate) runs in a separate judge process that
  holds the test but never the candidate's code; the candidate's functions and objects are
  remote handles that answer with plain data, and the test's modules are the judge's own.

**The reward** (``reward=``, the config's ``verify.code_reward``): ``"pass_all"`` is 1.0
when every test passes, else 0.0; ``"prime"`` is PRIME's scorer's (``prime.py`` and
``code_util/__init__.py`` in the PRIME repository's ``training/verl/utils/reward_score``):
1.0 when every test passes, else the share of the first ``min(#tests, 10)`` tests that
pass, each run on its own (:func:`prime_code_reward`); ``"fraction"`` (``all_or_nothing=False``)
is the share of all tests that pass. Each test runs in a process of its own with
``test_timeout_s``; a test that times out fails alone, and under ``"pass_all"`` that fails
the sample.

**The prelude** (``prelude=``, the config's ``verify.code_prelude``): ``"none"`` runs the
program as written; ``"prime"`` runs stdin/stdout and call-based programs after PRIME's
(:data:`PRIME_PRELUDE`: star imports of ``collections``, ``math``, ``sys``... and a recursion
limit of 600,000), so a program that uses ``Counter`` or ``sys`` without importing them, or
recurses 10,000 deep, runs as it did there. Recursion deep enough to overflow the C stack
(through ``functools.lru_cache`` or ``__init__``, tens of thousands of frames on an 8 MiB stack)
crashes that test's process: the test fails, as the program crashed the original's process.

**Host-side work is bounded.** Extracting the code, planning the asserts, decoding what the
sandbox sends back and judging it run in a child of :mod:`iprime.verifiers.bounded` (address-space,
CPU and wall-clock limits), so no response or value can hold the caller past ``timeout_s`` plus a
few seconds or grow its memory (the comment "host-side bounds" below).

All execution happens in :mod:`iprime.verifiers.sandbox`; ``docs/security.md`` states
the guarantees and their limits.
"""

from __future__ import annotations

import ast
import builtins
import json
import keyword
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .bounded import HostLimitExceeded, call_bounded
from .bounded import warm as warm_helper
from .extract import extract_code
from .result import VerifyResult
from .sandbox import (
    CallOutcome,
    PlainDataError,
    SandboxLimits,
    SandboxRun,
    apply_values,
    check_isolation_available,
    decode_call,
    encode_plain,
    run_checked,
    stub_names,
)

__all__ = [
    "CODE_REWARDS",
    "PRIME_TESTS",
    "STDOUT_COMPARES",
    "parse_tests",
    "prime_code_reward",
    "verify_code",
    "verify_code_detailed",
    "outputs_match",
    "call_output_matches",
    "CALL_PRELUDE",
    "CODE_PRELUDES",
    "LEETCODE_PRELUDE",
    "PRIME_PRELUDE",
    "setup_with_prelude",
]

# LeetCode solutions assume these names are already imported.
LEETCODE_PRELUDE = "\n".join(
    [
        "from typing import *",
        "from collections import *",
        "from functools import *",
        "from itertools import *",
        "from heapq import *",
        "from bisect import *",
        "from math import *",
        "import math, heapq, bisect, collections, itertools, functools, string, re",
    ]
)
# What APPS's evaluator puts before call-based solutions (they assume these imports).
CALL_PRELUDE = LEETCODE_PRELUDE + "\nimport sys, time, random, fractions"

# PRIME's scorer runs every program, stdin/stdout and call-based, after a prelude of its own
# (testing_util.py:120 in the PRIME repository's verl/utils/reward_score/evaluation_utils/code_util,
# put before the call-based solution at :126 and the stdin program at :192): star imports of these
# standard-library modules in this order, so that a later module's name wins (``pow`` is the
# builtin, not math's; ``Counter`` is typing's alias of collections.Counter; ``time`` is
# datetime's class), then the modules themselves but builtins and typing, then a recursion limit
# of 600,000. So a program there may use ``sys``, ``Counter`` or ``gcd`` without importing them
# and recurse far deeper than Python's default 1,000 frames. Every module is one any program may
# import itself, and the prelude runs inside the sandbox, in the confined solution process, like
# the program: it grants nothing the program could not take.
_PRIME_STAR_IMPORTS = (
    "string",
    "re",
    "datetime",
    "collections",
    "heapq",
    "bisect",
    "copy",
    "math",
    "random",
    "statistics",
    "itertools",
    "functools",
    "operator",
    "io",
    "sys",
    "json",
    "builtins",
    "typing",
)
PRIME_RECURSION_LIMIT = 600_000
PRIME_PRELUDE = (
    "".join(f"from {module} import *\n" for module in _PRIME_STAR_IMPORTS)
    + "import "
    + ", ".join(m for m in _PRIME_STAR_IMPORTS if m not in ("builtins", "typing"))
    + f"\nsys.setrecursionlimit({PRIME_RECURSION_LIMIT})\n"
)


CODE_REWARDS = ("pass_all", "prime", "fraction")
STDOUT_COMPARES = ("tokens", "lines")
CODE_PRELUDES = ("none", "prime")
# PRIME's scorer reruns at most the first 10 tests one by one (code_util/__init__.py:60-61) and
# divides by min(#tests, 10) (prime.py:71-73).
PRIME_TESTS = 10
# numpy.allclose's defaults, which PRIME's stdout comparison uses (testing_util.py:518-523):
# |got - expected| <= FLOAT_ATOL + FLOAT_RTOL * |expected|.
FLOAT_RTOL = 1e-5
FLOAT_ATOL = 1e-8
# A decimal number as a program prints it (no "_", "inf" or "nan": float() reads those too).
# Written so that no two parts can match the same digits (``\d+(?:\.\d*)?``, not ``\d+\.?\d*``),
# which keeps a failed match linear: the other form backtracks quadratically, and a 200,000-digit
# stdout token took minutes to refuse.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _token_matches(got: str, expected: str) -> bool:
    """Two output tokens agree: the same text, or ``expected`` is a number written with a
    fractional part or an exponent (``0.50000``, ``1e-3``) and ``got`` a number within
    ``FLOAT_ATOL + FLOAT_RTOL * |expected|`` of it. An expected integer is matched exactly, so
    ``1000001`` or ``5.0`` never pass for ``1000000`` or ``5``."""
    if got == expected:
        return True
    if not (_NUMBER.fullmatch(expected) and _NUMBER.fullmatch(got)) or not any(c in expected for c in ".eE"):
        return False
    g, e = float(got), float(expected)
    return math.isfinite(g) and math.isfinite(e) and abs(g - e) <= FLOAT_ATOL + FLOAT_RTOL * abs(e)


def _tokens_match(got: Sequence[str], expected: Sequence[str]) -> bool:
    return len(got) == len(expected) and all(_token_matches(g, e) for g, e in zip(got, expected))


def _nonblank_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


def outputs_match(got: str, expected: str, compare: str = "tokens") -> bool:
    """Whether a program's stdout ``got`` is the ``expected`` output.

    ``compare="tokens"`` (the default; the competitive-programming judges' usual checker):
    the two whitespace-separated token sequences agree, whatever the layout (``"1 2"``
    matches ``"1\\n2"``). ``compare="lines"`` (PRIME's, ``testing_util.py:415-548``): the
    non-blank lines agree one to one, each line's tokens as above (spaces around and between
    tokens and blank lines ignored). In both, tokens agree by :func:`_token_matches`: equal
    text, or numbers within ``1e-5`` relative of an expected number written with a fraction
    or an exponent (``0.5`` and ``0.50000000`` match ``0.50000``).
    """
    if compare == "tokens":
        return _tokens_match(got.split(), expected.split())
    if compare == "lines":
        got_lines, expected_lines = _nonblank_lines(got), _nonblank_lines(expected)
        return len(got_lines) == len(expected_lines) and all(
            _tokens_match(g, e) for g, e in zip(got_lines, expected_lines)
        )
    raise ValueError(f"compare must be one of {STDOUT_COMPARES}, got {compare!r}")


def prime_code_reward(passed: Sequence[bool]) -> float:
    """PRIME's code reward from the outcome of each test, in the tests' order.

    1.0 when every test passes (``code_util/__init__.py:18-27``); otherwise the share of the
    first ``k = min(#tests, 10)`` tests that pass, each run on its own
    (``code_util/__init__.py:31-61``, ``prime.py:69-77``). One change: the original gives a
    solution that fails only tests past the tenth ``k / k = 1.0``, the reward of a correct
    one; here it gets at most ``(k - 1) / k``, as if one of its counted tests had failed, so
    1.0 always means "every test passed".
    """
    n = len(passed)
    if n == 0:
        raise ValueError("no test outcomes: PRIME's reward needs at least one test")
    if all(passed):
        return 1.0
    k = min(n, PRIME_TESTS)
    return min(sum(1 for ok in passed[:k] if ok) / k, (k - 1) / k)


def call_output_matches(got: Any, expected: Any) -> bool:
    """APPS/TACO comparison of a call's return value with the expected one.

    Tuples compare as lists (JSON has no tuples); an expected one-element list is also
    tried unwrapped (the datasets wrap some return values); an expected dict whose keys
    are all digit strings is also tried with int keys (JSON turned them into strings).
    ``got`` must be plain data (it is: it was decoded from the sandbox's answer).
    """
    candidates = [expected]
    if isinstance(expected, list) and len(expected) == 1:
        candidates.append(expected[0])
    for c in list(candidates):
        if isinstance(c, dict) and c and all(isinstance(k, str) and k.lstrip("-").isdigit() for k in c):
            candidates.append({int(k): v for k, v in c.items()})
    got = _untuple(got)
    for c in candidates:
        try:
            if got == _untuple(c):
                return True
        except (TypeError, ValueError, RecursionError):
            continue
    return False


def _untuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_untuple(x) for x in value]
    if isinstance(value, dict):
        return {k: _untuple(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- test formats

_ASSERT_KEYS = {"asserts", "setup", "kind"}
_IO_KEYS = {"inputs", "outputs", "fn_name", "setup", "kind"}


def parse_tests(tests: Mapping[str, Any] | Sequence[str] | str) -> dict:
    """Check a code reference and return it in canonical form; ``ValueError`` says what is wrong.

    Accepted (as a dict, or as a JSON string of one):

    * stdin/stdout (APPS, CodeContests): ``{"inputs": [...], "outputs": [...]}``, each
      input the program's stdin text and each output its expected stdout (a list of
      lines is joined with newlines, as APPS's evaluator does);
    * call-based (APPS ``fn_name`` rows, LeetCode-style): ``{"fn_name": "f", "inputs":
      [[args...], ...], "outputs": [expected, ...]}``: ``f`` (or ``Solution().f`` when the
      code defines a class ``Solution``) is called with each input's positional
      arguments and its return value compared with the expected one; an expected value
      that is a one-element list is also compared unwrapped, as the APPS/TACO
      evaluators do (the datasets wrap some return values). PRIME's own form is read too:
      ``{"fn_name": "f", "inputs": ["1\\n2", ...], "outputs": ["3", ...]}``, each input a
      string of JSON values, one per line (the arguments), each output a JSON string;
    * asserts (HumanEval, MBPP, LeetCode): ``{"asserts": [...], "setup": "..."}``, or a
      plain list of assert snippets.

    The canonical forms, which this function also accepts unchanged:

    * ``{"kind": "stdio", "inputs": [str, ...], "outputs": [str, ...], "setup": str}``
    * ``{"kind": "call", "fn_name": str, "inputs": [[arg, ...], ...], "outputs": [value, ...],
      "setup": str}`` (``setup`` defaults to APPS's import prelude, which its solutions
      assume: ``typing``, ``collections``, ``heapq``, ``math``...)
    * ``{"kind": "asserts", "asserts": [str, ...], "setup": str}``

    Lists are never empty, inputs and outputs have equal lengths, and call arguments
    and expected values are plain data (None, bool, int, float, str, lists, tuples,
    dicts, sets of those).
    """
    if isinstance(tests, (bytes, bytearray)):
        tests = tests.decode()
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError as err:
            raise ValueError(f"code tests are not valid JSON: {err}") from None
    if isinstance(tests, (list, tuple)):
        tests = {"asserts": list(tests)}
    if not isinstance(tests, Mapping):
        raise ValueError(f"code tests must be a dict, a JSON object or a list of asserts, got {type(tests).__name__}")
    keys = set(tests)
    kind = tests.get("kind")
    if "asserts" in keys:
        if keys - _ASSERT_KEYS:
            raise ValueError(f"assert tests take 'asserts' and 'setup', not {sorted(map(str, keys - _ASSERT_KEYS))}")
        _check_kind(kind, "asserts")
        return {"kind": "asserts", "asserts": _assert_list(tests["asserts"]), "setup": _setup(tests)}
    if "inputs" in keys or "outputs" in keys:
        if keys - _IO_KEYS:
            raise ValueError(
                "input/output tests take 'inputs', 'outputs' and optionally 'fn_name' and 'setup', "
                f"not {sorted(map(str, keys - _IO_KEYS))}"
            )
        inputs, outputs = _io_lists(tests)
        fn_name = tests.get("fn_name")
        if fn_name is None:
            _check_kind(kind, "stdio")
            return {
                "kind": "stdio",
                "inputs": [_text(x, "inputs", i) for i, x in enumerate(inputs)],
                "outputs": [_text(x, "outputs", i) for i, x in enumerate(outputs)],
                "setup": _setup(tests),
            }
        _check_kind(kind, "call")
        if not isinstance(fn_name, str) or not fn_name.isidentifier() or keyword.iskeyword(fn_name):
            raise ValueError(f"tests['fn_name'] must be a Python identifier, got {fn_name!r}")
        if all(isinstance(x, str) for x in inputs):
            args, expected = _prime_call_tests(inputs, outputs)
        else:
            args, expected = [], list(outputs)
            for i, x in enumerate(inputs):
                if not isinstance(x, (list, tuple)):
                    raise ValueError(
                        f"tests['inputs'][{i}] is {type(x).__name__} {_short(x)}; {_CALL_FORMS}"
                        + (" (every input in the same form)" if isinstance(x, str) else "")
                    )
                _plain(x, f"tests['inputs'][{i}]")
                args.append(list(x))
            for i, x in enumerate(outputs):
                _plain(x, f"tests['outputs'][{i}]")
        setup = tests.get("setup")
        return {
            "kind": "call",
            "fn_name": fn_name,
            "inputs": args,
            "outputs": expected,
            "setup": CALL_PRELUDE if setup is None else _setup(tests),
        }
    raise ValueError(
        f"code tests have keys {sorted(map(str, keys))}; expected 'inputs' and 'outputs' (and 'fn_name' for "
        "call-based tests), or 'asserts' (and 'setup')"
    )


_CALL_FORMS = (
    "a call-based test's input is either the list of the call's positional arguments (its output "
    "the expected value) or, PRIME's form, a string with one JSON value per line, one line per "
    "argument (its output the expected value as a JSON string)"
)


def _int_keyed(value: Any) -> Any:
    """A dict whose keys all read as integers, with int keys (JSON made them strings)."""
    if isinstance(value, dict) and value and all(isinstance(k, str) and k.lstrip("-").isdigit() for k in value):
        return {int(k): v for k, v in value.items()}
    return value


def _prime_call_tests(inputs: list[str], outputs: list) -> tuple[list[list], list]:
    """PRIME's call-based tests (``testing_util.py:236-237``, LiveCodeBench's format): each
    input a string of JSON values, one per line (the call's arguments), each output a JSON
    string (the expected value). As the original does (``testing_util.py:251-255``), a first
    argument that is a dict with integer-like keys gets int keys back; unlike it, the other
    arguments are kept (it passed the converted dict alone)."""
    args = []
    for i, text in enumerate(inputs):
        call = []
        for line_no, line in enumerate(text.split("\n"), 1):
            try:
                call.append(json.loads(line))
            except ValueError as err:
                raise ValueError(
                    f"tests['inputs'][{i}] line {line_no} ({_short(line)}) is not a JSON value ({err}); {_CALL_FORMS}"
                ) from None
        _plain(call, f"tests['inputs'][{i}]")
        if call:
            call[0] = _int_keyed(call[0])
        args.append(call)
    expected = []
    for i, text in enumerate(outputs):
        if not isinstance(text, str):
            raise ValueError(
                f"tests['outputs'][{i}] is {type(text).__name__} {_short(text)}, but the inputs are strings "
                f"(PRIME's form), whose outputs are JSON strings; {_CALL_FORMS}"
            )
        try:
            value = json.loads(text)
        except ValueError as err:
            raise ValueError(
                f"tests['outputs'][{i}] ({_short(text)}) is not a JSON string ({err}); {_CALL_FORMS}"
            ) from None
        _plain(value, f"tests['outputs'][{i}]")
        expected.append(value)
    return args, expected


def _check_kind(kind: Any, actual: str) -> None:
    if kind is not None and kind != actual:
        raise ValueError(f"tests['kind'] is {kind!r} but the tests have the shape of {actual!r} tests")


def _setup(tests: Mapping[str, Any]) -> str:
    setup = tests.get("setup")
    if setup is None:
        return ""
    if not isinstance(setup, str):
        raise ValueError(f"tests['setup'] must be a string, got {type(setup).__name__}")
    return setup


def _assert_list(asserts: Any) -> list[str]:
    if isinstance(asserts, str) or not isinstance(asserts, Sequence):
        raise ValueError(f"tests['asserts'] must be a list of strings, got {type(asserts).__name__}")
    if len(asserts) == 0:
        raise ValueError("tests['asserts'] is empty: nothing would be verified")
    for i, a in enumerate(asserts):
        if not isinstance(a, str) or not a.strip():
            raise ValueError(f"tests['asserts'][{i}] must be a non-empty string, got {_short(a)}")
    return list(asserts)


def _io_lists(tests: Mapping[str, Any]) -> tuple[list, list]:
    for key in ("inputs", "outputs"):
        value = tests.get(key)
        if value is None:
            raise ValueError(f"tests have no {key!r}: input/output tests need both 'inputs' and 'outputs'")
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"tests[{key!r}] must be a list, got {type(value).__name__}")
    inputs, outputs = list(tests["inputs"]), list(tests["outputs"])
    if not inputs:
        raise ValueError("tests['inputs'] is empty: nothing would be verified")
    if len(inputs) != len(outputs):
        raise ValueError(f"tests have {len(inputs)} inputs but {len(outputs)} outputs")
    return inputs, outputs


def _text(value: Any, key: str, index: int) -> str:
    """stdin/stdout text; a list of lines is joined with newlines (APPS's evaluator does so)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(line, str) for line in value):
        return "\n".join(value)
    raise ValueError(
        f"tests[{key!r}][{index}] must be text (or a list of lines) in stdin/stdout tests, got "
        f"{type(value).__name__} {_short(value)}; call-based tests need 'fn_name'"
    )


def _plain(value: Any, where: str) -> None:
    try:
        encode_plain(value)
    except PlainDataError as err:
        raise ValueError(f"{where} is not plain data ({err})") from None


def _short(value: Any, width: int = 80) -> str:
    try:
        text = value if isinstance(value, str) and width > 80 else repr(value)
    except (ValueError, RecursionError):  # an int past the str-conversion limit; absurd nesting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------- host-judged asserts
#
# Where an assert snippet is judged (issue 24). Never in the process that holds the candidate's
# code, and never with a name of the test taken from the candidate:
#
# * on the host (:func:`plan_assert`), from plain data: every comparison (``==``, ``<``, ``in``,
#   ``is None``/``True``/``False``, chained), ``not``/``and``/``or``, arithmetic, subscripts and
#   the calls of the builtins and ``math`` functions the test uses (:data:`_SAFE_FUNCS`,
#   :data:`_SAFE_MATH`), with the host's own builtins and ``math`` module whatever the candidate
#   or the sandbox bound to those names. The sandbox evaluates only *holes*: expressions rooted
#   at a name of the candidate's (``f(3)``, ``Solution().two_sum([2, 7], 9)``) made of the
#   candidate's names, constants, containers, calls, attributes and subscripts alone: no
#   comparison or boolean operator, no conditional, lambda or comprehension, no builtin (which the
#   candidate may rebind) and no name of the test's (a helper or import of the setup, a module).
#   Each hole's value comes back as plain data (:func:`~iprime.verifiers.sandbox.encode_plain`),
#   so an object with a lying ``__eq__``/``__bool__`` fails, and the source the sandbox sees holds
#   no expected value for a frame-reading candidate to find.
# * in the judge process, everything else (several statements, a setup helper, a builtin on the
#   candidate's side of an input, a module function the host does not know): it runs the setup
#   and the test but not the candidate's code, whose objects are remote handles answering with
#   plain data, and binds the test's modules to its own imports (sandbox/runner.py).
#
# One name may be the candidate's although it is a builtin's: the task's entry point (MBPP/126
# asks for a function ``sum``), taken as such when the candidate's code binds it and the test
# calls it with constant arguments only (``assert sum(10, 15) == 25``); called with anything
# else (``abs(f(x) - 0.5) < 1e-6``) it is the test's builtin.


class _NotHost(Exception):
    """A subexpression the host does not evaluate: it becomes a hole."""


class _NotPlannable(Exception):
    """A hole that may not go to the sandbox: the judge process runs the whole snippet."""


_SAFE_FUNCS: dict[str, Callable] = {
    "abs": abs,
    "round": round,
    "len": len,
    "set": set,
    "frozenset": frozenset,
    "sorted": sorted,
    "list": list,
    "tuple": tuple,
    "min": min,
    "max": max,
    "sum": sum,
    "bool": bool,
    "float": float,
    "int": int,
    "str": str,
    "all": all,
    "any": any,
    "isinstance": isinstance,
}
_SAFE_KEYWORDS = {"sorted": {"reverse"}}
# The builtins whose first argument is any iterable: a hole there is iterated in the sandbox
# (``[*(f(x))]``, no name the candidate could rebind), so ``list(gen(3))`` and ``sum(map(...))``
# judge a generator, a map or a dict view by its items, as in process.
_ITERABLE_FIRST = frozenset({"list", "tuple", "set", "frozenset", "sorted", "sum", "min", "max", "all", "any"})
# Builtin types a test may name as values (``isinstance(f(x), (int, float))``).
_TYPE_NAMES: dict[str, type] = {
    t.__name__: t for t in (int, float, complex, str, bytes, bool, list, tuple, dict, set, frozenset)
}
# math.factorial's argument is bounded: a value from the sandbox must not make the host compute
# a million-digit number.
_MAX_FACTORIAL = 10_000


def _factorial(n: Any) -> int:
    if isinstance(n, int) and n > _MAX_FACTORIAL:
        raise ValueError(f"factorial argument above {_MAX_FACTORIAL}")
    return math.factorial(n)


_SAFE_MATH: dict[str, Callable] = {
    "isclose": math.isclose,
    "fabs": math.fabs,
    "sqrt": math.sqrt,
    "floor": math.floor,
    "ceil": math.ceil,
    "trunc": math.trunc,
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "hypot": math.hypot,
    "gcd": math.gcd,
    "factorial": _factorial,
}
_MATH_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}
_CONSTANT_TYPES = (int, float, complex, str, bytes, bool, type(None))
_COMPARE = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
# ``is`` means something for plain data only against these (decoding makes them the singletons).
_SINGLETONS = (None, True, False, Ellipsis)
# What a hole may not contain: the host makes every comparison and boolean decision, and
# whatever defines its own scope (a lambda, a comprehension) could hide one.
_NOT_IN_HOLES = (
    ast.Compare,
    ast.BoolOp,
    ast.IfExp,
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.NamedExpr,
    ast.Await,
    ast.Yield,
    ast.YieldFrom,
    ast.Starred,
)
_MAX_PRODUCT = 10**7


def _binop(op: ast.operator, a: Any, b: Any) -> Any:
    sequence = (str, bytes, list, tuple)
    if isinstance(op, ast.Add):
        return a + b
    if isinstance(op, ast.Sub):
        return a - b
    if isinstance(op, ast.Mult):
        for seq, n in ((a, b), (b, a)):
            if isinstance(seq, sequence) and isinstance(n, int) and len(seq) * max(n, 0) > _MAX_PRODUCT:
                raise ValueError("product too large")
        return a * b
    if isinstance(op, ast.Div):
        return a / b
    if isinstance(op, ast.FloorDiv):
        return a // b
    if isinstance(op, ast.Mod):
        return a % b
    if isinstance(op, ast.Pow):
        if isinstance(a, int) and isinstance(b, int) and abs(b) * max(a.bit_length(), 1) > 1_000_000:
            raise ValueError("power too large")
        return a**b
    raise _NotHost


@dataclass(frozen=True)
class _Scope:
    """Whose each name of an assert is.

    ``test_names``: what the setup binds (its helpers and imports), less the stubs the candidate
    fills in (:func:`~iprime.verifiers.sandbox.stub_names`); ``setup_imports``: those of them bound
    by a plain ``import m``; ``setup_star``: the setup star-imports (it may bind any name);
    ``code_names``: what the candidate's code binds at top level.
    """

    test_names: frozenset[str]
    setup_imports: frozenset[str]
    setup_star: bool
    code_names: frozenset[str]

    def builtin(self, name: str) -> bool:
        """``name`` is the test's builtin, evaluated with the host's own."""
        return hasattr(builtins, name) and name not in self.test_names and not self.setup_star

    def host_math(self) -> bool:
        """``math`` is the test's math module (the setup imports it, or it is not bound at all:
        an MBPP row without ``test_imports``), evaluated with the host's own whatever the
        candidate binds to the name."""
        return not self.setup_star and ("math" not in self.test_names or "math" in self.setup_imports)

    def candidate(self, name: str, entry_point: bool = False) -> bool:
        """``name`` is the candidate's (resolved in the sandbox). ``entry_point``: the test calls
        it with constant arguments only, where a builtin's name the code binds is the task's."""
        if name in self.test_names or (self.setup_star and name not in self.code_names):
            return False
        if hasattr(builtins, name):
            return entry_point and name in self.code_names
        return True


def _compile(
    node: ast.expr, holes: list[str], scope: _Scope, truth: bool = False, items: bool = False
) -> Callable[[list], Any]:
    """Compile ``node`` for evaluation on the host; a subexpression outside the host's grammar
    becomes a *hole* (its source goes to the sandbox, its value comes back as plain data) when
    :func:`_check_hole` allows it, else :class:`_NotPlannable` is raised.

    ``truth``: only the truth value of ``node`` matters (the assert's whole test, an operand of
    ``not``, of ``and``/``or`` there). A hole there asks the sandbox for the truth value alone
    (``(True if f(x) else False)``), so ``assert re.match(...)``-style answers that are no plain
    data still count: the truth of the candidate's value is its whole answer, and no expected
    value is involved.

    ``items``: ``node`` is the iterable argument of a builtin that only iterates it
    (:data:`_ITERABLE_FIRST`). A hole there asks for its items (``[*(f(x))]``), so a generator
    or a ``map`` object, which is no plain data, still answers ``list(f(x)) == [...]``."""
    try:
        return _compile_safe(node, holes, scope, truth)
    except _NotHost:
        _check_hole(node, scope)
        index = len(holes)
        source = ast.unparse(node)
        holes.append(f"(True if ({source}) else False)" if truth else f"[*({source})]" if items else source)
        return lambda values: values[index]


def _pure(node: ast.expr, scope: _Scope) -> bool:
    """``node`` is computed on the host alone (constants and the test's builtins, no hole)."""
    holes: list[str] = []
    try:
        _compile(node, holes, scope)
    except _NotPlannable:
        return False
    return not holes


def _hole_root(node: ast.expr) -> ast.expr:
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _check_hole(node: ast.expr, scope: _Scope) -> None:
    """Raise :class:`_NotPlannable` unless ``node`` may be evaluated in the sandbox: rooted at a
    name of the candidate's, and holding nothing but the candidate's names, constants,
    containers, calls, attributes and subscripts (the rule above)."""
    root = _hole_root(node)
    if not isinstance(root, ast.Name):
        raise _NotPlannable
    entry_point = (
        isinstance(node, ast.Call)
        and node.func is root
        and all(_pure(a, scope) for a in node.args)
        and all(k.arg is not None and _pure(k.value, scope) for k in node.keywords)
    )
    for sub in ast.walk(node):
        if isinstance(sub, _NOT_IN_HOLES) or (isinstance(sub, ast.UnaryOp) and isinstance(sub.op, ast.Not)):
            raise _NotPlannable
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            if sub.value.id in sys.stdlib_module_names:  # a module: the test's, never the candidate's
                raise _NotPlannable
        if isinstance(sub, ast.Name) and not scope.candidate(sub.id, entry_point and sub is root):
            raise _NotPlannable


def _compile_call(node: ast.Call, holes: list[str], scope: _Scope) -> Callable[[list], Any]:
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise _NotHost
    fn, allowed = None, set()
    if isinstance(node.func, ast.Name):
        name = node.func.id
        entry_point = all(_pure(a, scope) for a in node.args) and all(_pure(k.value, scope) for k in node.keywords)
        if name in _SAFE_FUNCS and scope.builtin(name) and not scope.candidate(name, entry_point):
            fn, allowed = _SAFE_FUNCS[name], _SAFE_KEYWORDS.get(name, set())
    elif (
        isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "math"
        and scope.host_math()
        and node.func.attr in _SAFE_MATH
    ):
        fn = _SAFE_MATH[node.func.attr]
        allowed = {"rel_tol", "abs_tol"} if node.func.attr == "isclose" else set()
    if fn is None or any(k.arg not in allowed for k in node.keywords):
        raise _NotHost
    name = node.func.id if isinstance(node.func, ast.Name) else None
    # min/max take an iterable only as their one positional argument; sum's first is always one.
    iterated = name in _ITERABLE_FIRST and (len(node.args) == 1 or name == "sum")
    args = [_compile(a, holes, scope, items=iterated and i == 0) for i, a in enumerate(node.args)]
    kwargs = {k.arg: _compile(k.value, holes, scope) for k in node.keywords}
    return lambda values: fn(*(a(values) for a in args), **{k: v(values) for k, v in kwargs.items()})


def _compile_compare(node: ast.Compare, holes: list[str], scope: _Scope) -> Callable[[list], Any]:
    sides = [node.left, *node.comparators]
    for i, op in enumerate(node.ops):
        if isinstance(op, (ast.Is, ast.IsNot)) and not any(
            isinstance(n, ast.Constant) and any(n.value is s for s in _SINGLETONS) for n in sides[i : i + 2]
        ):
            raise _NotHost  # identity of two decoded values means nothing: the judge process runs it
    parts = [_compile(n, holes, scope) for n in sides]
    ops = [_COMPARE[type(op)] for op in node.ops]

    def compare(values):
        a = parts[0](values)
        for op, right in zip(ops, parts[1:]):
            b = right(values)
            if not op(a, b):
                return False
            a = b
        return True

    return compare


def _compile_safe(node: ast.expr, holes: list[str], scope: _Scope, truth: bool = False) -> Callable[[list], Any]:
    if isinstance(node, ast.Constant):
        if type(node.value) not in _CONSTANT_TYPES:
            raise _NotHost
        value = node.value
        return lambda values: value
    if isinstance(node, ast.Name):
        if node.id not in _TYPE_NAMES or not scope.builtin(node.id):
            raise _NotHost
        cls = _TYPE_NAMES[node.id]
        return lambda values: cls
    if isinstance(node, ast.Attribute):
        if not (
            isinstance(node.value, ast.Name)
            and node.value.id == "math"
            and scope.host_math()
            and node.attr in _MATH_CONSTANTS
        ):
            raise _NotHost
        constant = _MATH_CONSTANTS[node.attr]
        return lambda values: constant
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        if any(isinstance(e, ast.Starred) for e in node.elts):
            raise _NotHost
        parts = [_compile(e, holes, scope) for e in node.elts]
        build = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
        return lambda values: build(p(values) for p in parts)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotHost
        pairs = [(_compile(k, holes, scope), _compile(v, holes, scope)) for k, v in zip(node.keys, node.values)]
        return lambda values: {k(values): v(values) for k, v in pairs}
    if isinstance(node, ast.Subscript):
        return _compile_subscript(node, holes, scope)
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, holes, scope, isinstance(node.op, ast.Not))
        op = {ast.USub: lambda x: -x, ast.UAdd: lambda x: +x, ast.Not: lambda x: not x, ast.Invert: lambda x: ~x}[
            type(node.op)
        ]
        return lambda values: op(operand(values))
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)):
            raise _NotHost
        left, right, op = _compile(node.left, holes, scope), _compile(node.right, holes, scope), node.op
        return lambda values: _binop(op, left(values), right(values))
    if isinstance(node, ast.BoolOp):
        # Python's values: ``a or b`` is ``a`` when ``a`` is true, else ``b`` (every hole was
        # evaluated already, so a hole past the deciding operand may have failed the test).
        parts = [_compile(v, holes, scope, truth) for v in node.values]
        stop_when = not isinstance(node.op, ast.And)

        def boolop(values):
            for p in parts:
                value = p(values)
                if bool(value) is stop_when:
                    return value
            return value

        return boolop
    if isinstance(node, ast.Compare):
        return _compile_compare(node, holes, scope)
    if isinstance(node, ast.Call):
        return _compile_call(node, holes, scope)
    raise _NotHost


def _compile_subscript(node: ast.Subscript, holes: list[str], scope: _Scope) -> Callable[[list], Any]:
    """``value[index]`` or ``value[lower:upper:step]`` on the host, on plain data."""
    index = node.slice
    if isinstance(index, ast.Slice):
        bounds = [None if b is None else _compile(b, holes, scope) for b in (index.lower, index.upper, index.step)]
        value = _compile(node.value, holes, scope)

        def key(values):
            return slice(*(None if b is None else b(values) for b in bounds))

    else:
        value = _compile(node.value, holes, scope)
        key = _compile(index, holes, scope)
    return lambda values: value(values)[key(values)]


@dataclass(frozen=True)
class _HostAssert:
    source: str
    exprs: list[str]  # evaluated in the sandbox, in order
    check: Callable[[list], Any]  # on the host, with their values


def _bound_names(source: str) -> tuple[set[str], set[str], bool]:
    """Names ``source`` binds at top level, those of them bound by a plain ``import m``, and
    whether it has a star import (or does not parse)."""
    try:
        tree = ast.parse(source or "")
    except SyntaxError:
        return set(), set(), True
    names: set[str] = set()
    imports: set[str] = set()
    star = False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    star = True
                    continue
                names.add((alias.asname or alias.name).split(".")[0])
                if isinstance(node, ast.Import) and alias.asname is None:
                    imports.add(alias.name.split(".")[0])
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    return names, imports, star


def assert_scope(setup: str = "", code: str = "") -> _Scope:
    """The names an assert plan resolves against (:class:`_Scope`): the setup's (less its
    stubs), its imports and star import, and the candidate code's. It depends on ``setup`` and
    ``code`` only, so a sample's asserts share one (parsing the code once, not once per assert)."""
    setup_names, setup_imports, setup_star = _bound_names(setup)
    setup_names -= stub_names(setup)
    code_names, _, _ = _bound_names(code)
    return _Scope(frozenset(setup_names), frozenset(setup_imports & setup_names), setup_star, frozenset(code_names))


def plan_assert(source: str, setup: str = "", code: str = "", *, scope: _Scope | None = None) -> _HostAssert | None:
    """How the host judges assert snippet ``source`` (one ``assert`` statement, its message
    ignored), or None where the judge process must run it (the rule in the comment above).

    The whole test is compiled for the host (:func:`_compile`): comparisons of any kind,
    ``not``/``and``/``or``, arithmetic, subscripts, the test's builtins and ``math`` functions.
    What it cannot evaluate becomes a hole, one expression of the candidate's names the sandbox
    evaluates and returns as plain data; ``assert f(3)`` is one hole, judged by its truth value
    here. None when a hole would hold a comparison, a builtin, or a name of the test (a setup
    helper, a module), or when there is no hole at all (nothing of the candidate's to ask).
    ``scope``: :func:`assert_scope` of ``setup`` and ``code``, when the caller already has it.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    if scope is None:
        scope = assert_scope(setup, code)
    holes: list[str] = []
    try:
        check = _compile(tree.body[0].test, holes, scope, truth=True)
    except _NotPlannable:
        return None
    if not holes:
        return None
    if len(holes) > 1 and any(hasattr(builtins, _hole_root_name(h)) for h in holes):
        # A builtin's name taken for the task's entry point is the candidate's answer only where
        # nothing else of the candidate's is asked: ``sorted([3, 1]) == my_sort([3, 1])`` means
        # the real sorted, which the judge process has.
        return None
    return _HostAssert(source, holes, check)


def _hole_root_name(source: str) -> str:
    node = ast.parse(source, mode="eval").body
    if isinstance(node, ast.IfExp):  # a truth-tested hole: (True if (expr) else False)
        node = node.test
    if isinstance(node, ast.List) and len(node.elts) == 1 and isinstance(node.elts[0], ast.Starred):
        node = node.elts[0].value  # an iterated hole: [*(expr)]
    root = _hole_root(node)
    return root.id if isinstance(root, ast.Name) else ""


# ----------------------------------------------------------------------------- verification


def setup_with_prelude(tests: Mapping[str, Any], prelude: str) -> str:
    """The setup the sandbox runs before the candidate's program, for canonical ``tests``
    (:func:`parse_tests`) and a ``prelude`` of :data:`CODE_PRELUDES`.

    ``"none"``: the tests' own setup. ``"prime"``: for stdin/stdout and call-based tests (the
    two forms PRIME's scorer runs), :data:`PRIME_PRELUDE` followed by the tests' own setup, so
    that a name the row's setup binds wins; a call-based row's default setup
    (:data:`CALL_PRELUDE`, which stands in for APPS's evaluator's imports) is dropped, since it
    would rebind some of PRIME's names (``pow`` to math's, ``time`` to the module) where the
    original has its prelude alone. Assert tests, which PRIME's scorer never runs, keep their
    setup: it is also the judge's namespace, where extra names would shadow the candidate's.

    The setup is compiled apart from the program (``<setup>`` and ``<solution>``), so line
    numbers in the program's errors stay its own.
    """
    if prelude not in CODE_PRELUDES:
        raise ValueError(f"prelude must be one of {CODE_PRELUDES}, got {prelude!r}")
    own = tests["setup"]
    if prelude == "none" or tests["kind"] == "asserts":
        return own
    if tests["kind"] == "call" and own == CALL_PRELUDE:
        own = ""
    return PRIME_PRELUDE + own


def verify_code_detailed(
    response: str,
    tests: Mapping[str, Any] | Sequence[str] | str,
    timeout_s: float = 10.0,
    all_or_nothing: bool = True,
    *,
    limits: SandboxLimits | None = None,
    isolation: str | None = None,
    reward: str | None = None,
    test_timeout_s: float | None = None,
    stdout_compare: str = "tokens",
    prelude: str = "none",
) -> VerifyResult:
    """Run the response's code against ``tests``; see :func:`verify_code`.

    ``timeout_s`` is the wall limit for the whole sample (all tests), ``test_timeout_s``
    the limit of each test (``None``: the sample's). ``reward``: ``"pass_all"``,
    ``"prime"`` or ``"fraction"`` (module docstring); ``None`` takes it from
    ``all_or_nothing`` (``True``: ``"pass_all"``, ``False``: ``"fraction"``). Under
    ``"pass_all"`` the remaining judged tests are skipped after the first failure, since
    they cannot change the score. ``stdout_compare``: ``"tokens"`` or ``"lines"``
    (:func:`outputs_match`). ``prelude``: ``"none"`` (programs run as written) or
    ``"prime"`` (stdin/stdout and call-based programs run after :data:`PRIME_PRELUDE`,
    PRIME's imports and recursion limit; :func:`setup_with_prelude`). ``limits`` overrides
    the other sandbox limits (its ``wall_s`` is replaced by ``timeout_s``). ``isolation``:
    ``"auto"`` (``None``: ``$IPRIME_SANDBOX``, else ``"auto"``), ``"namespaces"``,
    ``"userns"`` or ``"rlimits"`` (see :mod:`iprime.verifiers.sandbox`).

    A sample that exceeds the output limit scores 0. One that runs out of its own time
    (``timeout_s``) scores 0 under ``"pass_all"`` and ``"fraction"``; under ``"prime"`` the
    tests it left unrun fail and the others count, as a test's own timeout does.

    Bad tests or settings raise ``ValueError``; a machine where the sandbox cannot isolate
    raises :class:`~iprime.verifiers.sandbox.SandboxUnavailable` (whatever the response, even
    one without code: never a silent 0); bad code never raises.

    **Hard cap.** Whatever the response and whatever its code sends back, this returns within
    ``timeout_s + 4.5 s`` (plus ~0.2 s once per process, to start the bounded helper): extracting
    and planning (which counts against ``timeout_s``), decoding and judging (what is left of
    ``timeout_s`` plus :data:`JUDGE_ALLOWANCE_S`) run in a child of the bounded helper
    (:mod:`iprime.verifiers.bounded`) with their own memory limit, and a sample that breaks
    one of those limits scores 0 with the step and the limit in its reason. The caller holds at
    most the channels' capped bytes (``result_bytes`` twice, ``output_bytes``, 4 MiB).
    """
    start = time.monotonic()
    tests = parse_tests(tests)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if test_timeout_s is not None and not test_timeout_s > 0:
        raise ValueError(f"test_timeout_s must be > 0 (or None), got {test_timeout_s}")
    if reward is None:
        reward = "pass_all" if all_or_nothing else "fraction"
    if reward not in CODE_REWARDS:
        raise ValueError(f"reward must be one of {CODE_REWARDS}, got {reward!r}")
    if stdout_compare not in STDOUT_COMPARES:
        raise ValueError(f"stdout_compare must be one of {STDOUT_COMPARES}, got {stdout_compare!r}")
    if prelude not in CODE_PRELUDES:
        raise ValueError(f"prelude must be one of {CODE_PRELUDES}, got {prelude!r}")
    concrete = check_isolation_available(isolation)
    total = len(tests["asserts"] if tests["kind"] == "asserts" else tests["inputs"])
    # Every step on the untrusted response and values runs in a bounded process (module comment
    # "host-side bounds"); the helper's one-time start is not the sample's time.
    warm_helper()
    budget_start = time.monotonic()
    setup = setup_with_prelude(tests, prelude)
    kind = tests["kind"]
    try:
        prepared = call_bounded(
            f"{__name__}:_prepare_sample",
            (response, kind, tests.get("asserts"), setup),
            wall_s=timeout_s,
            what="preparing the test (extracting and planning)",
        )
    except HostLimitExceeded as exc:
        return VerifyResult(0.0, 0, total, str(exc), time.monotonic() - start)
    code = prepared["code"]
    if code is None:
        return VerifyResult(0.0, 0, 0, "no code block found", time.monotonic() - start)
    wall_s = timeout_s - (time.monotonic() - budget_start)  # preparing counts against the sample's time
    if wall_s <= 0:
        return VerifyResult(
            0.0, 0, total, f"timed out after {timeout_s:g}s preparing the test", time.monotonic() - start
        )
    base = limits or SandboxLimits()
    limits = SandboxLimits(**{**base.__dict__, "wall_s": wall_s})
    sandbox = {
        "isolation": concrete,
        "setup": setup,
        "limits": limits,
        "test_timeout_s": test_timeout_s,
        "decode": False,
    }

    judged_index: list[int] = []
    if kind == "stdio":
        run = run_checked(code, stdin_inputs=tests["inputs"], **sandbox)
    elif kind == "call":
        calls = [{"i": i, "fn": tests["fn_name"], "args": args} for i, args in enumerate(tests["inputs"])]
        run = run_checked(code, calls=calls, **sandbox)
    else:
        holes = prepared["holes"]
        calls = [{"i": i, "exprs": h} for i, h in enumerate(holes) if h is not None]
        judged_index = [i for i, h in enumerate(holes) if h is None]
        run = run_checked(
            code,
            calls=calls or None,
            judged=[tests["asserts"][i] for i in judged_index] or None,
            stop_on_failure=reward == "pass_all",
            **sandbox,
        )
    outcomes: dict[int, tuple[bool, str]] = {}
    if not run.output_limit_exceeded:  # else the score is 0 whatever the values say
        spec = {
            "kind": kind,
            "outputs": tests.get("outputs"),
            "fn_name": tests.get("fn_name"),
            "asserts": tests.get("asserts"),
            "holes": prepared["holes"],
            "setup": setup if kind == "asserts" else "",  # to plan the asserts again (the holes' checks)
            "code": code if kind == "asserts" else "",
            "stdout_compare": stdout_compare,
        }
        data, run.values_data = run.values_data, b""
        try:
            judged = call_bounded(
                f"{__name__}:_judge_sample",
                (spec,),
                blob=data,
                wall_s=max(budget_start + timeout_s - time.monotonic(), 0.0) + JUDGE_ALLOWANCE_S,
                what="decoding and judging the returned values",
            )
        except HostLimitExceeded as exc:
            return VerifyResult(0.0, 0, total, str(exc), time.monotonic() - start)
        del data
        outcomes = {int(i): (bool(ok), str(why)) for i, ok, why in judged["outcomes"]}
        if judged["error"] and not run.error:
            run.error = judged["error"]
    for t in run.tests:
        if 0 <= t.index < len(judged_index):
            outcomes[judged_index[t.index]] = (t.passed, t.reason)
    for i in judged_index:
        outcomes.setdefault(i, (False, "not run"))

    passed_list = [outcomes.get(i, (False, "not run"))[0] for i in range(total)]
    passed = sum(passed_list)
    # The sample ran out of its own time: the runner was stopped, or tests were left unrun.
    out_of_time = run.timed_out or any(r.startswith(_SAMPLE_LIMIT) for _, r in outcomes.values())
    if run.output_limit_exceeded:
        # A flood of output earns nothing: its reported passes may be from before it misbehaved.
        score, passed = 0.0, 0
    elif reward == "prime":
        # Each test ran in a process of its own, judged here: a pass before a later test ran out
        # of time stands (PRIME fails only the test that timed out, code_util/__init__.py:42-58).
        score = prime_code_reward(passed_list)
    else:
        if run.timed_out:  # a run cut off by the sample's limit earns nothing
            passed = 0
        score = (1.0 if passed == total else 0.0) if reward == "pass_all" else passed / total
    reason = _reason(run, outcomes, total, passed)
    if reward == "prime" and not run.output_limit_exceeded:
        if out_of_time and not run.timed_out:
            reason = f"timed out after {timeout_s:g}s; {reason}"
        elif run.timed_out:
            reason = f"{reason}; passed {passed}/{total}"
        if 0.0 < score < 1.0:
            reason += f"; PRIME credit {score:.4g} (first {min(total, PRIME_TESTS)} tests)"
    return VerifyResult(score, passed, total, reason, time.monotonic() - start)


# ----------------------------------------------------------------------------- host-side bounds
#
# What the candidate controls reaches the host twice: its response (extraction, planning the
# asserts against its code) and what its code sends back (decoding the values, comparing them
# with the expected ones). Both steps run in a child of the bounded helper
# (iprime.verifiers.bounded: its own address-space limit, CPU and wall-clock limits, killed at
# its deadline), never in the caller's process: values that all hash alike, huge integers in the
# test's arithmetic, a format string with a huge width, tens of MiB of tiny lines, payloads that
# decode to many times their size each stop at a limit and score 0 with the reason. What stays in
# the caller is bounded by sizes: the sandbox's channels are read with caps (result_bytes,
# output_bytes, 4 MiB of report) and the scoring of the outcomes is linear in the test count.
# docs/security.md ("Host-side cost") has the numbers (benchmarks/host_bounds.py).

# Judging gets what is left of the sample's time plus this, so the values of a run that used all
# of its time are still judged; verify_code returns within timeout_s + _STARTUP_ALLOWANCE_S (the
# sandbox's, 2 s) + this + REPLY_GRACE_S + a few tens of ms.
JUDGE_ALLOWANCE_S = 2.0


def _prepare_sample(response: str, kind: str, asserts: list[str] | None, setup: str) -> dict:
    """In the bounded helper: the response's code (None: no code block) and, for assert tests,
    each assert's holes (:func:`plan_assert`; None: the judge process runs it)."""
    code = extract_code(response)
    if code is None or not code.strip():
        return {"code": None, "holes": None}
    holes = None
    if kind == "asserts":
        scope = assert_scope(setup, code)
        plans = [plan_assert(a, scope=scope) for a in asserts or []]
        holes = [None if p is None else p.exprs for p in plans]
    return {"code": code, "holes": holes}


def _judge_sample(spec: dict, values: bytes) -> dict:
    """In the bounded helper: decode the values channel (:func:`~iprime.verifiers.sandbox.apply_values`)
    and judge each host-judged test; ``{"outcomes": [[index, passed, reason], ...], "error": ...}``
    (``error``: the code's load error, if it sent one)."""
    run = SandboxRun()
    kind = spec["kind"]
    outcomes: list[list] = []
    if kind == "stdio":
        expected = spec["outputs"]
        apply_values(run, values, len(expected))
        for i, want in enumerate(expected):
            got = run.outputs[i]
            if got is None or not run.output_ok[i]:
                outcomes.append([i, False, run.output_reasons[i]])
            elif outputs_match(got, want, spec["stdout_compare"]):
                outcomes.append([i, True, "passed"])
            else:
                outcomes.append([i, False, f"wrong output: got {_short(got)}, expected {_short(want)}"])
    elif kind == "call":
        apply_values(run, values, None, decode=False)
        del values
        for i, want in enumerate(spec["outputs"]):
            outcome = _decoded(run, i)
            if outcome is None:
                outcomes.append([i, False, "not run"])
            elif not outcome.ok:
                outcomes.append([i, False, outcome.reason])
            elif len(outcome.values) != 1:
                outcomes.append([i, False, "malformed result"])
            elif call_output_matches(outcome.values[0], want):
                outcomes.append([i, True, "passed"])
            else:
                got = _short(outcome.values[0])
                outcomes.append([i, False, f"wrong result: {spec['fn_name']} returned {got}, expected {_short(want)}"])
    else:
        apply_values(run, values, None, decode=False)
        del values
        scope = assert_scope(spec["setup"], spec["code"]) if any(h is not None for h in spec["holes"]) else None
        for i, (source, holes) in enumerate(zip(spec["asserts"], spec["holes"])):
            if holes is None:
                continue
            plan = plan_assert(source, scope=scope)  # the plan the holes came from
            if plan is None or plan.exprs != holes:
                raise RuntimeError(f"assert {i} planned differently twice")  # pragma: no cover
            outcome = _decoded(run, i)
            if outcome is None:
                outcomes.append([i, False, "not run"])
            elif not outcome.ok:
                outcomes.append([i, False, outcome.reason])
            else:
                outcomes.append([i, *_judge_assert(plan, outcome.values)])
    return {"outcomes": outcomes, "error": run.error}


def _decoded(run: SandboxRun, index: int) -> CallOutcome | None:
    """Call ``index``'s outcome with its values decoded, one call at a time (each call's values,
    up to ``file_size_bytes`` of JSON, are decoded only when judged: an honest sample with
    several large results never holds them all decoded at once)."""
    outcome = run.calls.pop(index, None)
    if outcome is None or not outcome.ok:
        return outcome
    return decode_call(outcome)


# How the runner marks tests that the sample's time limit left unrun (sandbox/runner.py).
_SAMPLE_LIMIT = "not run: sample time limit reached"


def _judge_assert(plan: _HostAssert, values: list) -> tuple[bool, str]:
    try:
        ok = bool(plan.check(values))
    except MemoryError:
        raise  # the bounded helper's memory limit: reported as such (iprime.verifiers.bounded)
    except Exception as exc:  # noqa: BLE001 - e.g. comparing a str with an int
        return False, f"{type(exc).__name__} evaluating {_short(plan.source, 120)}: {str(exc)[:100]}"
    if ok:
        return True, "passed"
    got = ", ".join(f"{expr} = {_short(v)}" for expr, v in zip(plan.exprs, values))
    return False, f"AssertionError: {_short(plan.source, 120)} (got {got})"[:400]


def _reason(run: SandboxRun, outcomes: dict, total: int, passed: int) -> str:
    if run.output_limit_exceeded:
        return "output limit exceeded"
    if run.timed_out:
        return f"timed out after {run.elapsed_s:.1f}s"
    if run.error:
        return run.error
    if passed == total:
        return f"passed {passed}/{total}"
    failures = [(i, r) for i, (ok, r) in sorted(outcomes.items()) if not ok]
    if failures:
        index, why = failures[0]
        return f"passed {passed}/{total}; test {index} failed: {why}"
    if not run.completed:
        tail = run.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {run.exit_code}"]
        return f"passed {passed}/{total}; run ended early: {tail[0][:300]}"
    return f"passed {passed}/{total}"


def verify_code(
    response: str,
    tests: Mapping[str, Any] | Sequence[str] | str,
    timeout_s: float = 10.0,
    all_or_nothing: bool = True,
    *,
    limits: SandboxLimits | None = None,
    isolation: str | None = None,
    reward: str | None = None,
    test_timeout_s: float | None = None,
    stdout_compare: str = "tokens",
    prelude: str = "none",
) -> float:
    """Score a response's program (:func:`~iprime.verifiers.extract.extract_code`) against
    ``tests`` in the sandbox.

    ``reward="pass_all"`` (the default through ``all_or_nothing=True``): 1.0 when every test
    passes, else 0.0. ``reward="prime"``: PRIME's scorer's partial credit
    (:func:`prime_code_reward`). ``all_or_nothing=False``: the fraction of tests passed. No
    code, a syntax error or a crash score 0; a test that runs out of ``test_timeout_s`` fails.
    ``prelude="prime"`` runs stdin/stdout and call-based programs after PRIME's imports and
    recursion limit (:data:`PRIME_PRELUDE`).
    ``tests``: any shape :func:`parse_tests` accepts. Raises ``ValueError`` for bad tests and
    :class:`~iprime.verifiers.sandbox.SandboxUnavailable` where the code cannot be isolated
    (see :func:`verify_code_detailed`).
    """
    return verify_code_detailed(
        response,
        tests,
        timeout_s,
        all_or_nothing,
        limits=limits,
        isolation=isolation,
        reward=reward,
        test_timeout_s=test_timeout_s,
        stdout_compare=stdout_compare,
        prelude=prelude,
    ).score
