"""verify_math: answer extraction, equivalences and timeouts."""

from __future__ import annotations

import threading
import time

import pytest

from iprime.data.boxed import last_boxed
from iprime.verifiers import verify_math, verify_math_detailed
from iprime.verifiers.extract import answer_is_fallback, extract_final_answer
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
