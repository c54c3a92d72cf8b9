"""verify_math: answer extraction, equivalences and timeouts."""

from __future__ import annotations

import random
import re
import threading
import time

import pytest

from iprime.data.boxed import last_boxed
from iprime.verifiers import verify_math, verify_math_detailed
from iprime.verifiers.extract import (
    answer_is_fallback,
    extract_final_answer,
    final_statement_answer,
    strip_math_delimiters,
)
from iprime.verifiers.rows import aime_golds, amc_golds, math500_golds, minerva_golds, olympiadbench_golds


def test_last_boxed_nested_and_variants() -> None:
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"so \boxed 5$.") == "5"
    assert last_boxed(r"\boxed{3} and a cut-off \boxed{\frac{1}{") == "3"
    assert last_boxed("no box") is None


def test_answer_is_fallback() -> None:
    assert answer_is_fallback("Thus the answer is $3.5$.") == "3.5"
    assert answer_is_fallback("Final answer: 12\nbye") == "12"
    assert extract_final_answer(r"The answer is 4 but \boxed{5}") == "5"
    assert extract_final_answer("nothing here") is None


@pytest.mark.parametrize(
    "response,gold",
    [
        (r"\boxed{\frac12}", "0.5"),
        (r"\boxed{x \in [-2,7]}", "[-2,7]"),
        (r"\boxed{4.5\times 10^{33}}", "4.5e33"),
        (r"\boxed{2.88 \times 10^{-19}}", "2.88e-19"),
        (r"\boxed{142}", 142.0),
        (r"\boxed{84, 69}", "$69$,$84$"),
        (r"\boxed{30^\circ}", "30"),
        (r"\boxed{5\text{ cm}}", "5"),
        (r"The answer is $\frac{3}{4}$.", "0.75"),
        (r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
        (r"\boxed{(2,7,13), (1,8,19)}", "$(1,8,19), (2,7,13)$"),
        (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}"),
        (r"\boxed{\{2,1\}}", r"\{1,2\}"),
        (r"\boxed{7.}", "7"),
    ],
)
def test_equivalent_answers_accepted(response: str, gold) -> None:
    assert verify_math(response, gold) == 1.0, verify_math_detailed(response, gold).reason


@pytest.mark.parametrize(
    "response,gold",
    [
        (r"\boxed{3}", "4"),
        (r"\boxed{69}", "$69$,$84$"),
        (r"\boxed{1.325e-27}", "2.88e-19"),  # tiny magnitudes are not all "0"
        (r"\boxed{(-2,7)}", "[-2,7]"),
        ("I don't know", "4"),
    ],
)
def test_wrong_answers_rejected(response: str, gold) -> None:
    assert verify_math(response, gold) == 0.0


def test_reasons() -> None:
    assert verify_math_detailed("no answer", "1").reason == "no final answer found"
    assert verify_math_detailed(r"\boxed{1}", "1").reason == "correct"
    assert verify_math_detailed(r"\boxed{2}", ["3", "2"]).score == 1.0  # any accepted gold


def test_timeout_in_main_thread() -> None:
    start = time.monotonic()
    result = verify_math_detailed(r"\boxed{9^{9^{9^{9}}}}", "3", timeout_s=1.0)
    assert result.score == 0.0 and "timed out" in result.reason
    assert time.monotonic() - start < 3.0


def test_timeout_outside_main_thread() -> None:
    results = {}

    def work() -> None:
        results["ok"] = verify_math_detailed(r"\boxed{\frac{1}{2}}", "0.5", timeout_s=2.0)
        start = time.monotonic()
        results["slow"] = verify_math_detailed(r"\boxed{9^{9^{9^{9}}}}", "3", timeout_s=1.0)
        results["slow_s"] = time.monotonic() - start

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert results["ok"].score == 1.0
    assert results["slow"].score == 0.0 and "timed out" in results["slow"].reason
    assert results["slow_s"] < 5.0


def test_row_adapters() -> None:
    assert aime_golds({"answer": "116"}) == ["116"]
    assert amc_golds({"answer": 142.0}) == ["142"]
    assert math500_golds({"expected_answer": "[-2,7]"}) == ["[-2,7]"]
    assert math500_golds({"answer": "4"}) == ["4"]
    assert minerva_golds({"solution": r"so $s=\boxed{1.6} \mathrm{~cm}$"}) == ["1.6"]
    assert olympiadbench_golds({"final_answer": ["$69$,$84$"]}) == ["$69$,$84$"]
    with pytest.raises(KeyError):
        aime_golds({"question": "?"})


# ------------------------------------------------------------------ PRIME's math reward, cause by cause
# PRIME scores math with evaluate_math (training/verl/utils/reward_score/evaluation_utils/math_util/
# __init__.py:376): match_answer reads the answer (:333), grade_answer (:240) then math_equal
# (grader.py:163) compare it. Each case: (response, gold, PRIME's reward by its logic at the cited
# line, ours). Where they differ it is a decision of docs/fidelity.md, named in the comment.
M = "training/verl/utils/reward_score/evaluation_utils/math_util/"
PRIME_CASES = [
    # an exact answer in terms of pi for a decimal gold: pi = 3.14 or math.pi within 1e-4 (__init__.py:396-400,
    # grader.py:136-161 put the number in, :201 compares); kept
    (r"so the answer is \boxed{2\pi}", "6.28", 1, 1),  # 2 * 3.14 = 6.28
    (r"\boxed{25\pi}", "78.54", 1, 1),  # 78.5398..., 2.5e-6 off
    (r"\boxed{9\pi}", "28.26", 1, 1),  # "use pi = 3.14": 9 * 3.14
    (r"\boxed{x = 2\pi}", "6.28", 1, 1),
    (r"\boxed{\pi^2}", "9.87", 1, 1),
    (r"\boxed{\frac{\pi}{2}}", "1.57", 0, 1),  # PRIME's eval() cannot read \frac: the same rule, applied
    (r"\boxed{4\pi}", "12.57", 0, 0),  # 12.566 is 3e-4 off and 4 * 3.14 = 12.56: outside the tolerance
    (r"\boxed{2\pi}", "6.3", 0, 0),
    (r"\boxed{2\pi r}", "6.28", 0, 0),  # not a number
    (r"\boxed{\pi - 3.14}", "0", 1, 0),  # not copied: 3.14 only for a rational multiple of pi, no cancellation
    (r"\boxed{6.28}", "2\\pi", 1, 0),  # not copied: a decimal for an exact pi gold (PRIME puts 3.14 in the gold)
    # an unboxed final statement (match_answer's markers, __init__.py:362; a digit required, :370); kept
    ("Since 2x = 10, x = 5.", "5", 1, 1),
    ("We get 2x = 10.\nSo x = 5.", "5", 1, 1),
    ("The area is 25.", "25", 1, 1),
    ("x = 5", "5", 1, 1),
    ("So x = 5 and y = 3.", "5", 0, 0),  # the last value stated is 3
    ("First, 2x = 10. So x = 5.", "5", 0, 1),  # PRIME cuts at the last ". " and grades 10 (:357-360)
    ("Thus $x = \\frac{1}{2}$.", "\\frac{1}{2}", 0, 1),  # PRIME grades "\frac{1}{2}$." with its dollar
    ("The area is 25 square units.", "25", 0, 1),  # PRIME's "are " matches inside "square": it grades "units."
    ("Let me check: 2 + 3 = 5. Now I need to multiply by 4", "20", 0, 0),  # stopped mid-way: no answer
    ("I don't know", "4", 0, 0),
    # percentages: PRIME also accepts the gold / 100 and * 100 (grader.py:195-196); not copied
    (r"\boxed{0.25}", "25", 1, 0),
    (r"\boxed{2500}", "25", 1, 0),
    (r"\boxed{25\%}", "25", 1, 1),
    (r"\boxed{0.25}", r"25\%", 1, 1),  # 25% is 0.25: equal values, both accept
    # interval brackets: PRIME strips them when the reference does not open with the other bracket
    # (grader.py:220-228); not copied
    (r"\boxed{(1,2)}", "(1,2]", 1, 0),
    (r"\boxed{(1,2)}", "[1,2]", 0, 0),
    # sets: PRIME compares comma-separated elements in order (__init__.py:280, grader.py:251-264); not copied
    (r"\boxed{\{2,1\}}", r"\{1,2\}", 0, 1),
    (r"\boxed{3, 1}", "1, 3", 0, 1),
    (r"\boxed{(2,1)}", "(1,2)", 0, 0),  # a tuple stays ordered
]


@pytest.mark.parametrize("response,gold,prime,ours", PRIME_CASES)
def test_prime_math_reward_cause_by_cause(response: str, gold: str, prime: int, ours: int) -> None:
    assert verify_math(response, gold) == float(ours), verify_math_detailed(response, gold).reason


def test_final_statement_reading() -> None:
    assert final_statement_answer("Since 2x = 10, x = 5.") == "5"
    assert final_statement_answer("Thus $x = \\frac{1}{2}$.") == "\\frac{1}{2}"
    assert final_statement_answer("So the sum is \\(12\\).") == "12"
    assert final_statement_answer("Therefore\n\\[\nx = 5\n\\]\n") == "5"  # a trailing display block
    assert final_statement_answer("$$\n\\frac{1}{2}\n$$") == "\\frac{1}{2}"
    assert final_statement_answer("$-3$.") == "-3" and final_statement_answer("5") == "5"
    assert final_statement_answer("The ratio is 3:4.") == "3:4"  # ":" marks a value only before a space
    assert final_statement_answer("This is the sum, 7.") == "the sum, 7"  # "is" the word, not inside "This"
    assert final_statement_answer("2x = 10. Now divide by 2.") is None  # the last sentence states nothing
    assert final_statement_answer("so x = \\pi") is None  # a digit is required (PRIME __init__.py:370)
    assert final_statement_answer("") is None and final_statement_answer("Hope this helps") is None
    # a box or "the answer is" comes first
    assert extract_final_answer("The answer is 4. So x = 5.") == "4"
    assert extract_final_answer("\\boxed{3} and x = 5.") == "3"


# ------------------------------------------------------------------ box reading is linear


# The per-box scanner last_boxed used before (kept as the reference): it scanned from every box
# to the end of the text, quadratic in a response of unclosed boxes.
def _reference_brace_group(text: str, start: int) -> tuple[str, int] | None:
    if start >= len(text) or text[start] != "{":
        return None
    depth, i = 0, start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def _reference_last_boxed(text: str, strict: bool = False) -> str | None:
    for match in reversed(list(re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text))):
        pos = match.end()
        if strict:
            if match.group(0) != "\\boxed" or not text.startswith("{", pos):
                continue
            group = _reference_brace_group(text, pos)
            return None if group is None else group[0].strip()
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos < len(text) and text[pos] == "{":
            group = _reference_brace_group(text, pos)
            if group is not None:
                return group[0].strip()
            continue
        token = re.match(r"[^\s$]+", text[pos:])
        if match.end() < pos and token:
            return token.group(0).strip()
    return None


class TestBoxReadingIsLinear:
    """Math answers read in time linear in the response (the host-side bound issue 24's item 4 sets
    for code blocks): unclosed boxes (10k ``\\boxed{`` took 52 s with a scan from each box), runs
    of periods and nested delimiters (1.28M periods took 44 s, one sliced copy per period)."""

    @pytest.mark.parametrize(
        "text",
        [
            "\\boxed{" * 50_000,
            "\\boxed{\\boxed{\\[" * 30_000,
            "\\fbox{{" * 50_000 + "}",
            "\\boxed " * 50_000,
            "$$\\boxed{" * 60_000,
            # Final statements: a run of periods, nested delimiters (each layer was a sliced copy).
            "." * 400_000,
            ". " * 200_000,
            "\\(" * 100_000 + "x" + "\\)" * 100_000,
            "$" * 400_000,
        ],
    )
    def test_hostile_response_reads_fast(self, text: str) -> None:
        start = time.monotonic()
        extract_final_answer(text)
        last_boxed(text, strict=True)
        assert time.monotonic() - start < 3.0

    @pytest.mark.parametrize("seed", range(3))
    def test_same_boxes_as_the_per_box_scanner(self, seed: int) -> None:
        rng = random.Random(seed)
        pieces = ["\\boxed", "\\fbox", "{", "}", "\\{", "\\}", "\\", " ", "x", "1", "$", "\n", "\\boxedx"]
        for _ in range(5000):
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
            for strict in (False, True):
                assert last_boxed(text, strict=strict) == _reference_last_boxed(text, strict), repr(text)


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ("$x$.", "x"),
        ("\\( \\[ 5 \\] \\) . .", "5"),
        ("$x.$", "x"),
        ("$$ $1$ $$", "1"),
        ("x . .  .", "x"),
        ("\\(\\)", ""),
        ("$", "$"),
        ("  3.5 ", "3.5"),
    ],
)
def test_strip_math_delimiters(text: str, stripped: str) -> None:
    assert strip_math_delimiters(text) == stripped
