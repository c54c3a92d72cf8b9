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
* asserts: each snippet is parsed here with :mod:`ast`. One that compares a computed
  value with a constant (``assert f(x) == 3``, ``!=``, ``<``, ``in``, ``is None``..., also
  through ``set(...)``, ``sorted(...)``, ``abs(f(x) - 0.5) < 1e-6``, ``math.isclose(...)``)
  or asserts a call of the candidate's function with constant arguments
  (``assert is_prime(7)``, ``assert not f(4)``) sends only the computed expressions to
  the sandbox and evaluates the comparison here: the expected values never enter it.
  Any other snippet (HumanEval's ``check(candidate)``, LeetCode's multi-line blocks)
  runs in a separate judge process that holds the test but never the candidate's code;
  the candidate's functions and objects are remote handles that answer with plain data.

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

All execution happens in :mod:`iprime.verifiers.sandbox`; ``docs/security.md`` states
the guarantees and their limits.
"""

from __future__ import annotations

import ast
import json
import keyword
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .extract import extract_code
from .result import VerifyResult
from .sandbox import (
    PlainDataError,
    SandboxLimits,
    SandboxRun,
    check_isolation_available,
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
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


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


class _NotHost(Exception):
    pass


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
}
_SAFE_MATH: dict[str, Callable] = {"isclose": math.isclose, "fabs": math.fabs}
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


def _compile(node: ast.expr, holes: list[str], shadowed: frozenset[str] = frozenset()) -> Callable[[list], Any]:
    """Compile ``node`` for evaluation on the host; subexpressions outside the safe
    grammar become *holes* (their source goes to the sandbox, their value comes back).
    Names in ``shadowed`` (bound by the setup or the candidate's code) are never taken
    for the builtins of the safe grammar: ``sum(10, 15)`` may be the candidate's ``sum``."""
    try:
        return _compile_safe(node, holes, shadowed)
    except _NotHost:
        index = len(holes)
        holes.append(ast.unparse(node))
        return lambda values: values[index]


def _compile_safe(node: ast.expr, holes: list[str], shadowed: frozenset[str]) -> Callable[[list], Any]:
    if isinstance(node, ast.Constant):
        if type(node.value) not in _CONSTANT_TYPES:
            raise _NotHost
        value = node.value
        return lambda values: value
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        if any(isinstance(e, ast.Starred) for e in node.elts):
            raise _NotHost
        parts = [_compile(e, holes, shadowed) for e in node.elts]
        build = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
        return lambda values: build(p(values) for p in parts)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _NotHost
        pairs = [(_compile(k, holes, shadowed), _compile(v, holes, shadowed)) for k, v in zip(node.keys, node.values)]
        return lambda values: {k(values): v(values) for k, v in pairs}
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, holes, shadowed)
        op = {ast.USub: lambda x: -x, ast.UAdd: lambda x: +x, ast.Not: lambda x: not x, ast.Invert: lambda x: ~x}[
            type(node.op)
        ]
        return lambda values: op(operand(values))
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)):
            raise _NotHost
        left, right, op = _compile(node.left, holes, shadowed), _compile(node.right, holes, shadowed), node.op
        return lambda values: _binop(op, left(values), right(values))
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, holes, shadowed) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda values: all(p(values) for p in parts)
        return lambda values: any(p(values) for p in parts)
    if isinstance(node, ast.Compare):
        left = _compile(node.left, holes, shadowed)
        rights = [_compile(c, holes, shadowed) for c in node.comparators]
        ops = [_COMPARE[type(op)] for op in node.ops]

        def compare(values):
            a = left(values)
            for op, right in zip(ops, rights):
                b = right(values)
                if not op(a, b):
                    return False
                a = b
            return True

        return compare
    if isinstance(node, ast.Call) and not any(isinstance(a, ast.Starred) for a in node.args):
        fn = None
        allowed_keywords: set[str] = set()
        if isinstance(node.func, ast.Name) and node.func.id in _SAFE_FUNCS and node.func.id not in shadowed:
            fn = _SAFE_FUNCS[node.func.id]
        elif (
            isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "math"
            and "math" not in shadowed
            and node.func.attr in _SAFE_MATH
        ):
            fn = _SAFE_MATH[node.func.attr]
            allowed_keywords = {"rel_tol", "abs_tol"} if node.func.attr == "isclose" else set()
        if fn is None or any(k.arg not in allowed_keywords for k in node.keywords):
            raise _NotHost
        args = [_compile(a, holes, shadowed) for a in node.args]
        kwargs = {k.arg: _compile(k.value, holes, shadowed) for k in node.keywords}
        return lambda values: fn(*(a(values) for a in args), **{k: v(values) for k, v in kwargs.items()})
    raise _NotHost


def _pure(node: ast.expr, shadowed: frozenset[str] = frozenset()) -> bool:
    holes: list[str] = []
    _compile(node, holes, shadowed)
    return not holes


@dataclass(frozen=True)
class _HostAssert:
    source: str
    exprs: list[str]  # evaluated in the sandbox, in order
    check: Callable[[list], Any]  # on the host, with their values


def _bound_names(source: str) -> tuple[set[str], bool]:
    """Names ``source`` binds at top level, and whether it has a star import (or does not parse)."""
    try:
        tree = ast.parse(source or "")
    except SyntaxError:
        return set(), True
    names: set[str] = set()
    star = False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    star = True
                else:
                    names.add((alias.asname or alias.name).split(".")[0])
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    return names, star


_SINGLETONS = (None, True, False)


def plan_assert(source: str, setup: str = "", code: str = "") -> _HostAssert | None:
    """How the host judges assert snippet ``source``, or None if it fits no such pattern.

    Patterns (one ``assert`` statement, its message ignored):

    * a comparison with a single operator where one side is built from constants only
      (and safe builtins: ``set``, ``sorted``, ``abs``, ``round``, ``math.isclose``... unless
      the setup or the candidate's ``code`` binds that name): the other side's non-constant
      subexpressions are evaluated in the sandbox, the comparison here;
    * ``math.isclose(a, b, rel_tol=..., abs_tol=...)`` with ``a`` or ``b`` constant;
    * ``assert f(consts...)`` / ``assert not f(consts...)`` where ``f`` is not bound by the
      setup (it is the candidate's), and ``x is None`` / ``is not None`` / ``is True`` /
      ``is False``: the sandbox computes the truth value (there is no expected value to
      hide: "true" is all the test asks, and any function can return ``True``).

    The constant side (the expected value) stays on the host.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    test = tree.body[0].test
    setup_names, setup_star = _bound_names(setup)
    setup_names -= stub_names(setup)
    code_names, code_star = _bound_names(code)
    shadowed = frozenset(setup_names | code_names)
    if setup_star or code_star:  # a star import may bind any of them
        shadowed |= frozenset(_SAFE_FUNCS) | {"math"}
    pure = lambda node: _pure(node, shadowed)  # noqa: E731
    holes: list[str] = []
    check = None
    negate = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
    inner = test.operand if negate else test
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], (ast.Is, ast.IsNot))
        and any(isinstance(n, ast.Constant) and n.value in _SINGLETONS for n in (test.left, test.comparators[0]))
    ):
        holes.append(f"bool({ast.unparse(test)})")
        check = lambda values: values[0] is True  # noqa: E731
    elif isinstance(test, ast.Compare) and len(test.ops) == 1:
        if pure(test.left) != pure(test.comparators[0]):
            check = _compile(test, holes, shadowed)
    elif (
        isinstance(test, ast.Call)
        and isinstance(test.func, ast.Attribute)
        and isinstance(test.func.value, ast.Name)
        and test.func.value.id == "math"
        and "math" not in shadowed
        and test.func.attr == "isclose"
        and len(test.args) == 2
        and all(pure(k.value) for k in test.keywords)
    ):
        if pure(test.args[0]) != pure(test.args[1]):
            check = _compile(test, holes, shadowed)
    elif (
        isinstance(inner, ast.Call)
        and isinstance(inner.func, ast.Name)
        and not setup_star
        and inner.func.id not in setup_names
        and (inner.func.id not in _SAFE_FUNCS or inner.func.id in code_names)
        and all(pure(a) for a in inner.args)
        and all(k.arg is not None and pure(k.value) for k in inner.keywords)
    ):
        holes.append(f"bool({ast.unparse(inner)})")
        check = (lambda values: values[0] is False) if negate else (lambda values: values[0] is True)
    if check is None or not holes:
        return None
    return _HostAssert(source, holes, check)


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
    code = extract_code(response)
    if code is None or not code.strip():
        return VerifyResult(0.0, 0, 0, "no code block found", time.monotonic() - start)
    base = limits or SandboxLimits()
    limits = SandboxLimits(**{**base.__dict__, "wall_s": timeout_s})
    setup = setup_with_prelude(tests, prelude)
    kind = tests["kind"]
    outcomes: dict[int, tuple[bool, str]] = {}
    sandbox = {"isolation": concrete, "setup": setup, "limits": limits, "test_timeout_s": test_timeout_s}

    if kind == "stdio":
        inputs, expected = tests["inputs"], tests["outputs"]
        total = len(inputs)
        run = run_checked(code, stdin_inputs=inputs, **sandbox)
        for i in range(total):
            got = run.outputs[i] if i < len(run.outputs) else None
            if got is None:
                outcomes[i] = (False, run.output_reasons[i] if i < len(run.output_reasons) else "not run")
            elif not run.output_ok[i]:
                outcomes[i] = (False, run.output_reasons[i])
            elif outputs_match(got, expected[i], stdout_compare):
                outcomes[i] = (True, "passed")
            else:
                outcomes[i] = (False, f"wrong output: got {_short(got)}, expected {_short(expected[i])}")
    elif kind == "call":
        total = len(tests["inputs"])
        calls = [{"i": i, "fn": tests["fn_name"], "args": args} for i, args in enumerate(tests["inputs"])]
        run = run_checked(code, calls=calls, **sandbox)
        for i, expected in enumerate(tests["outputs"]):
            outcome = run.calls.get(i)
            if outcome is None:
                outcomes[i] = (False, "not run")
            elif not outcome.ok:
                outcomes[i] = (False, outcome.reason)
            elif len(outcome.values) != 1:
                outcomes[i] = (False, "malformed result")
            elif call_output_matches(outcome.values[0], expected):
                outcomes[i] = (True, "passed")
            else:
                got = _short(outcome.values[0])
                outcomes[i] = (False, f"wrong result: {tests['fn_name']} returned {got}, expected {_short(expected)}")
    else:
        asserts = tests["asserts"]
        total = len(asserts)
        plans = [plan_assert(a, setup, code) for a in asserts]
        calls = [{"i": i, "exprs": p.exprs} for i, p in enumerate(plans) if p is not None]
        judged_index = [i for i, p in enumerate(plans) if p is None]
        run = run_checked(
            code,
            calls=calls or None,
            judged=[asserts[i] for i in judged_index] or None,
            stop_on_failure=reward == "pass_all",
            **sandbox,
        )
        for i, plan in enumerate(plans):
            if plan is None:
                continue
            outcome = run.calls.get(i)
            if outcome is None:
                outcomes[i] = (False, "not run")
            elif not outcome.ok:
                outcomes[i] = (False, outcome.reason)
            else:
                outcomes[i] = _judge_assert(plan, outcome.values)
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


# How the runner marks tests that the sample's time limit left unrun (sandbox/runner.py).
_SAMPLE_LIMIT = "not run: sample time limit reached"


def _judge_assert(plan: _HostAssert, values: list) -> tuple[bool, str]:
    try:
        ok = bool(plan.check(values))
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
