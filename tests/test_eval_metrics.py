"""Eval metrics against hand-computed cases (pure functions, no models)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from iprime.eval.answers import extract_answer, group_answers, math_equal, normalize_answer
from iprime.eval.metrics import avg_at_k, best_of_n, pass_at_k, summarize_rows, vote, vote_weights


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_pass_at_k_hand_cases():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(3, 2, 2) == 1.0  # n - c < k: every pair has a correct sample
    assert pass_at_k(4, 4, 4) == 1.0


def test_pass_at_k_is_stable_for_large_n():
    # C(200, 100) ~ 9e58; the product form must match the exact rational value
    exact = 1 - Fraction(math.comb(190, 100), math.comb(200, 100))
    assert pass_at_k(200, 10, 100) == pytest.approx(float(exact), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_avg_and_best_of_n():
    assert avg_at_k([1, 0, 1, 1], 2) == 0.5
    assert avg_at_k([1, 0, 1, 1], 4) == 0.75
    assert best_of_n([0.1, 0.7, 0.7, 0.2]) == 1  # tie -> lowest index
    assert best_of_n([0.1, 0.7, 0.9], k=2) == 1  # only the first k compete
    with pytest.raises(ValueError):
        best_of_n([0.1], k=2)


def test_majority_vote_tie_goes_to_the_earliest_group():
    groups = [0, 1, 0, None, 1]
    assert vote(groups) == 0  # 2 votes each: group 0 was seen first
    assert vote([1, 0, 0, None]) == 1  # group "0" wins 2-1; its first member is sample 1
    assert vote([None, 1, 1, 3]) == 1
    assert vote([None, None]) is None  # nobody answered
    assert vote([0, 1, 1], k=1) == 0  # first k samples only


def test_weighted_vote():
    groups = [0, 1, 0, None, 1]
    # group 0: 0.1 + 0.1; group 1: 0.9 + 0.2; the unanswered sample's weight counts for nothing
    assert vote(groups, [0.1, 0.9, 0.1, 5.0, 0.2]) == 1
    assert vote_weights([0.0, 2.0, -800.0]) == pytest.approx([0.5, sig(2.0), 0.0])
    assert vote_weights([1.0, 3.0], "exp") == pytest.approx([math.exp(-2), 1.0])
    assert vote_weights([1.0, 3.0], "one") == [1.0, 1.0]
    with pytest.raises(ValueError):
        vote_weights([1.0], "softmax")


def test_normalize_answer():
    assert normalize_answer("$142.0$") == "142"
    assert normalize_answer("0.50") == "0.5"
    assert normalize_answer("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize_answer("90^\\circ") == "90"
    assert normalize_answer("\\text{(A)}") == "(A)"
    assert normalize_answer("x = 3.") == "x=3"


def test_extract_answer():
    assert extract_answer("so \\boxed{0.50}", "math") == "0.5"
    assert extract_answer("no box here", "math") is None
    assert extract_answer("The answer is \\boxed{ 08 }", "arithmetic") == "8"
    assert extract_answer("```python\nprint(1)\n```", "code") is None


def test_group_answers_exact_then_math_equivalence():
    answers = ["\\frac{1}{2}", "0.5", "3", None, "0.5"]
    assert group_answers(answers) == [0, 1, 2, None, 1]
    assert group_answers(answers, math_equal) == [0, 0, 2, None, 0]
    calls = []
    group_answers(["a", "b", "a", "b", "c"], lambda x, y: calls.append((x, y)) or False)
    assert calls == [("a", "b"), ("a", "c"), ("b", "c")]  # distinct answers only


def _records():
    # Row A (gold 2): answers 2,3,3,2. Row B (gold 5): -,5,7,7.
    a = {
        "scores": [1, 0, 0, 1],
        "groups": [0, 1, 1, 0],
        "prm_rewards": [0.5, 2.0, -3.0, 0.1],
        "truncated": [False] * 4,
        "num_tokens": [10, 10, 10, 10],
    }
    b = {
        "scores": [0, 1, 0, 0],
        "groups": [None, 1, 2, 2],
        "prm_rewards": [9.0, 3.0, -1.0, -1.0],
        "truncated": [True, False, False, False],
        "num_tokens": [20, 10, 10, 10],
    }
    return [a, b]


def test_summary_matches_hand_computation():
    s = summarize_rows(_records(), ks=[1, 4])
    assert s["rows"] == 2 and s["samples"] == 8 and s["n"] == 4
    assert s["avg@4"] == pytest.approx(3 / 8)
    assert s["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert s["pass@4"] == 1.0
    # maj@4: A ties 2-2, the earlier group (answer 2, correct) wins; B's "7" wins (wrong)
    assert s["maj@4"] == 0.5
    assert s["maj@1"] == 0.5  # A's first sample is right, B's has no answer
    # bon@4: A picks sample 1 (reward 2.0, wrong); B picks sample 0 (9.0, no answer, wrong)
    assert s["bon@4"] == 0.0
    assert s["bon@1"] == 0.5
    # wvote@4 (sigmoid): A: s(.5)+s(.1)=1.147 > s(2)+s(-3)=0.928 -> "2" right;
    #                    B: s(3)=0.953 > 2 s(-1)=0.538 -> "5" right (majority said "7")
    assert sig(0.5) + sig(0.1) > sig(2) + sig(-3) and sig(3) > 2 * sig(-1)
    assert s["wvote@4"] == 1.0
    assert s["wvote@1"] == 0.5
    assert s["truncated_frac"] == pytest.approx(1 / 8)
    assert s["mean_tokens"] == pytest.approx(90 / 8)


def test_summary_without_prm_and_for_code_rows():
    recs = [{**r, "prm_rewards": None} for r in _records()]
    s = summarize_rows(recs, ks=[2])
    assert "bon@2" not in s and "wvote@2" not in s and "maj@2" in s
    code = [{**r, "votable": False} for r in _records()]
    s = summarize_rows(code, ks=[4])
    assert "maj@4" not in s and "wvote@4" not in s and s["bon@4"] == 0.0
    with pytest.raises(ValueError, match="different sample counts"):
        summarize_rows([_records()[0], {**_records()[1], "scores": [1, 0]}], ks=[1])
