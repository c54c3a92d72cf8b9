"""Per-row rewards: each row's verifier by ability / data source, reward functions, the pool."""

from __future__ import annotations

import json
import math
import textwrap
import time

import pytest

from iprime.verifiers import (
    RowScoring,
    SandboxUnavailable,
    VerifierPool,
    VerifyResult,
    check_row,
    dispatch,
    register_row_verifier,
    score_row,
    score_row_detailed,
    score_rows,
    verifier_for_row,
)
from iprime.verifiers.sandbox import check_isolation_available

# ------------------------------------------------------------------ rows in Eurus-2-RL-Data form


def math_row(truth="42", source="numina_olympiads") -> dict:
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": "What is 6 times 7?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {"split": "train", "index": 0},
    }


SUM_TESTS = json.dumps({"inputs": ["1 2\n", "10 -4\n", "0 0\n"], "outputs": ["3\n", "6\n", "0\n"]})


def code_row(tests=SUM_TESTS, source="apps") -> dict:
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": "Read two integers and print their sum."}],
        "ability": "code",
        "reward_model": {"style": "rule", "ground_truth": tests},
        "extra_info": {"split": "train", "index": 1},
    }


RIGHT_MATH = r"6 times 7 is \boxed{42}."
WRONG_MATH = r"6 times 7 is \boxed{48}."
RIGHT_CODE = "Read, add, print.\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG_CODE = "```python\na, b = map(int, input().split())\nprint(a * b)\n```"


@pytest.fixture
def sandbox() -> None:
    try:
        check_isolation_available("namespaces")
    except SandboxUnavailable as exc:
        pytest.skip(f"code sandbox unavailable: {exc}")


@pytest.fixture
def rules(monkeypatch):
    """A private copy of the dispatch rules, so registrations end with the test."""
    monkeypatch.setattr(dispatch, "_ROW_VERIFIERS", dict(dispatch._ROW_VERIFIERS))


# Module-level so worker processes can unpickle them.
def sleepy_verifier(response: str, reference) -> float:
    if response == "sleep":
        time.sleep(60)
    return float(response == reference)


def exact_verifier(response: str, reference) -> float:
    return float(response.strip() == str(reference))


def mixed_batch() -> tuple[list[str], list[dict], list[float]]:
    m, c = math_row(), code_row()
    responses = [RIGHT_MATH, WRONG_MATH, RIGHT_CODE, WRONG_CODE, "no answer at all", RIGHT_MATH]
    rows = [m, m, c, c, c, math_row(["41", "42"])]
    return responses, rows, [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]


# ------------------------------------------------------------------ dispatch and scores


def test_math_and_code_rows_score_by_their_own_verifier(sandbox) -> None:
    responses, rows, expected = mixed_batch()
    assert [score_row(r, row) for r, row in zip(responses, rows)] == expected
    assert verifier_for_row(math_row())[0] == "math" and verifier_for_row(code_row())[0] == "code"
    detail = score_row_detailed(WRONG_CODE, code_row())
    assert detail.passed < detail.total == 3 and not detail.timed_out and "wrong output" in detail.reason
    # a dict of tests works as well as its JSON string
    assert score_row(RIGHT_CODE, code_row(json.loads(SUM_TESTS))) == 1.0


def test_mixed_rows_through_the_pool_match_inline(sandbox) -> None:
    responses, rows, expected = mixed_batch()
    inline = score_rows(responses, rows, workers=0)
    with VerifierPool(workers=2) as pool:
        pooled = score_rows(responses, rows, pool=pool)
        again = pool.score_rows(responses, rows)  # the same pool, reused
    assert [r.score for r in inline] == [r.score for r in pooled] == [r.score for r in again] == expected
    assert all(isinstance(r, VerifyResult) and not r.timed_out for r in pooled)


def test_assert_style_code_row(sandbox) -> None:
    tests = json.dumps({"setup": "", "asserts": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]})
    row = code_row(tests, source="mbpp")
    assert score_row("```python\ndef add(a, b):\n    return a + b\n```", row) == 1.0
    assert score_row("```python\ndef add(a, b):\n    return a - b\n```", row) == 0.0


def test_scores_use_reference_key_and_single_verifier_settings() -> None:
    row = {"question": "1+1?", "meta": {"gold": "2"}}  # no ability, no data source
    with pytest.raises(ValueError, match="no verifier for this row"):
        score_row(r"\boxed{2}", row, RowScoring(reference_key="meta.gold"))
    scoring = RowScoring(reference_key="meta.gold", verifier="math")
    assert score_row(r"\boxed{2}", row, scoring) == 1.0 and score_row(r"\boxed{3}", row, scoring) == 0.0
    # auto: a top-level answer wins over reward_model.ground_truth
    row = dict(math_row("7"), answer="42")
    assert score_row(RIGHT_MATH, row) == 1.0
    arithmetic = RowScoring(verifier="arithmetic")
    assert score_row(r"\boxed{12}", {"answer": "12"}, arithmetic) == 1.0
    assert check_row("twelve", {"answer": "twelve"}, arithmetic) != []


# ------------------------------------------------------------------ refusals instead of silent zeros


def test_dict_reference_on_a_math_row_is_refused_not_scored_zero() -> None:
    row = math_row()
    wrong_key = RowScoring(reference_key="reward_model")
    problems = check_row(row["reward_model"], row, wrong_key)
    assert len(problems) == 1
    assert "reference is a dict with keys ['ground_truth', 'style']" in problems[0]
    assert "did you mean data.reference_key=reward_model.ground_truth?" in problems[0]
    with pytest.raises(ValueError, match="did you mean data.reference_key=reward_model.ground_truth"):
        score_row(RIGHT_MATH, row, wrong_key)
    # batches refuse before scoring anything, naming the row
    with pytest.raises(ValueError, match=r"row 1: .*reference is a dict"):
        score_rows([RIGHT_MATH, RIGHT_MATH], [{"ability": "math", "reward_model": "42"}, row], wrong_key, workers=0)
    with pytest.raises(ValueError, match=r"row 0: .*reference is a dict"):
        score_rows([RIGHT_MATH], [row], wrong_key, workers=2)
    # the right key, and the default (auto), are fine
    assert check_row("42", row, RowScoring(reference_key="reward_model.ground_truth")) == []
    assert check_row("42", row) == []


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("", "empty string"),
        ([], "empty list"),
        ({"value": 3}, "point data.reference_key at the gold answer"),
        (True, "a math reference is a string or a number"),
        (None, "missing or null"),
        (["1", {"a": 1}], "a reference item is a dict"),
    ],
)
def test_math_reference_problems(reference, problem) -> None:
    problems = check_row(reference, math_row())
    assert len(problems) == 1 and problem in problems[0] and problems[0].startswith("math row:")


@pytest.mark.parametrize(
    ("tests", "problem"),
    [
        ('{"inputs": ["1 2"]', "not valid JSON"),
        (json.dumps({"inputs": [], "outputs": []}), "empty"),
        (json.dumps({"inputs": ["1"], "outputs": ["1", "2"]}), "1 inputs but 2 outputs"),
        (json.dumps({"inputs": [[1, 2]], "outputs": [[3]]}), "fn_name"),
        (json.dumps({"asserts": []}), "empty"),
        (json.dumps({"stdin": ["1"], "stdout": ["1"]}), "expected 'inputs' and 'outputs'"),
    ],
)
def test_code_reference_problems(tests, problem) -> None:
    problems = check_row(tests, code_row(tests))
    assert len(problems) == 1 and problems[0].startswith("code row: ") and problem in problems[0], problems
    with pytest.raises(ValueError, match="code row: "):
        score_row(RIGHT_CODE, code_row(tests))


def test_code_reference_good_rows_and_call_based() -> None:
    assert check_row(SUM_TESTS, code_row()) == []
    assert check_row(json.loads(SUM_TESTS), code_row()) == []
    call_based = json.dumps({"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]})
    assert check_row(call_based, code_row(call_based)) == []  # the code verifier reads call-based tests itself


def test_call_based_code_rows_score(sandbox) -> None:
    row = code_row(json.dumps({"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]}))
    assert score_row("```python\ndef add(a, b):\n    return a + b\n```", row) == 1.0
    assert score_row("```python\ndef add(a, b):\n    return a * b\n```", row) == 0.0


def test_unknown_ability_is_a_clear_error() -> None:
    row = {"ability": "poetry", "data_source": "sonnets", "answer": "x"}
    with pytest.raises(ValueError) as err:
        score_row("x", row)
    message = str(err.value)
    assert "ability='poetry'" in message and "data_source='sonnets'" in message
    assert "'math'" in message and "'code'" in message and "register_row_verifier" in message
    assert check_row("x", row) == [message]
    with pytest.raises(ValueError, match="row 0: no verifier"):
        score_rows(["x"], [row], workers=0)
    with pytest.raises(ValueError, match="unknown verifier 'nope'"):
        score_row("x", {"answer": "x"}, RowScoring(verifier="nope"))


# ------------------------------------------------------------------ the registry


def test_source_wins_over_ability_and_prefixes(rules) -> None:
    register_row_verifier("exact_source", exact_verifier)
    row = {"ability": "math", "data_source": "exact_source", "answer": "42"}
    name, verifier = verifier_for_row(row)
    assert verifier is exact_verifier and name.endswith(":exact_verifier")
    assert score_row("42", row) == 1.0  # exact string match: "\boxed{42}" would score 0 here
    assert score_row(r"\boxed{42}", row) == 0.0
    assert score_row(r"\boxed{42}", dict(row, data_source="other")) == 1.0  # falls back to the ability
    # prefixes: "*" and "/" keys, the longest prefix wins, an exact key beats a prefix
    register_row_verifier("numina_*", "math")
    register_row_verifier("numina_exact*", exact_verifier)
    assert verifier_for_row({"data_source": "numina_olympiads"})[0] == "math"
    assert verifier_for_row({"data_source": "numina_exact_v2"})[1] is exact_verifier
    register_row_verifier("numina_olympiads", exact_verifier)
    assert verifier_for_row({"data_source": "numina_olympiads"})[1] is exact_verifier
    # the gym family: the value after the prefix names the dataset
    assert verifier_for_row({"data_source": "reasoning_gym/chain_sum"})[0] == "gym:chain_sum"
    assert verifier_for_row({"ability": "gym:basic_arithmetic"})[0] == "gym:basic_arithmetic"
    register_row_verifier("my_gym/", "gym:")
    assert verifier_for_row({"data_source": "my_gym/chain_sum"})[0] == "gym:chain_sum"
    with pytest.raises(ValueError, match="prefix key"):
        register_row_verifier("exact", "gym:")
    with pytest.raises(ValueError, match="unknown verifier"):
        register_row_verifier("x", "no_such_verifier")


def test_gym_rows() -> None:
    pytest.importorskip("reasoning_gym")
    from iprime.verifiers import GymTask

    task = GymTask("chain_sum", size=3, seed=1)
    rows = [dict(r, ability="gym:chain_sum") for r in task]  # answer + entry, as GymTask writes
    bare = {"data_source": "reasoning_gym/chain_sum", "answer": rows[1]["answer"]}  # just the answer
    for row in (rows[0], bare):
        assert check_row(row["answer"], row) == []
        assert score_row(f"<answer>{row['answer']}</answer>", row) == 1.0
        assert score_row("<answer>-1</answer>", row) == 0.0
    (problem,) = check_row("1", {"data_source": "reasoning_gym/no_such_dataset", "answer": "1"})
    assert "no_such_dataset" in problem
    results = score_rows([f"<answer>{r['answer']}</answer>" for r in rows], rows, workers=0)
    assert [r.score for r in results] == [1.0] * 3


# ------------------------------------------------------------------ reward functions


REWARDS = """
import math

def format_bonus(response, row):
    return 1.0 if "<think>" in response else 0.0

def length_penalty(response, row):
    return -1.0 if len(response) > 40 else 0.0

def reads_row(response, row):
    return 0.25 if row["extra_info"]["index"] == 0 else 0.0

def nan_reward(response, row):
    return math.nan

def none_reward(response, row):
    return None

def fails_on_third(response, row):
    if row["extra_info"]["index"] % 3 == 0:
        raise ZeroDivisionError("division by zero")
    return 0.0
"""


@pytest.fixture
def rewards_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "dispatch_test_rewards.py").write_text(textwrap.dedent(REWARDS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "dispatch_test_rewards"


def test_reward_functions_by_import_path_with_weights(rewards_module) -> None:
    m = rewards_module
    scoring = RowScoring(
        reward_functions=(f"{m}:format_bonus", f"{m}:length_penalty", f"{m}:reads_row"),
        reward_weights=(0.5, 0.25, 1.0),
    )
    row = math_row()
    long_right = r"<think>6*7</think> the product of six and seven is \boxed{42}"
    cases = {
        r"\boxed{48}": 0.0 + 0.25,  # wrong, short, reads_row 0.25
        r"<think></think>\boxed{48}": 0.5 + 0.25,  # wrong + format bonus
        r"\boxed{42}": 1.0,  # 1 + 0.25, clipped
        "no answer, but a long response that runs on and on": 0.0,  # 0 - 0.25 + 0.25
        long_right: 1.0,  # 1 + 0.5 - 0.25 + 0.25 = 1.5, clipped
    }
    scores = {response: score_row(response, row, scoring) for response in cases}
    assert scores == pytest.approx(cases)
    detail = score_row_detailed(r"\boxed{48}", row, scoring)
    assert detail.passed == 0 and f"{m}:reads_row=0.25x1" in detail.reason
    # unit weights by default
    plain = RowScoring(reward_functions=(f"{m}:length_penalty",))
    assert score_row(long_right, row, plain) == 0.0
    # the same through a worker process (the module is on sys.path when the pool starts)
    with VerifierPool(workers=1, preload=(m,)) as pool:
        pooled = score_rows(list(cases), [row] * len(cases), scoring, pool=pool)
        assert [r.score for r in pooled] == pytest.approx(list(cases.values()))
        # a bad value fails its sample only: 0, the reason naming the function (counted, not fatal)
        (failed,) = score_rows([RIGHT_MATH], [row], RowScoring(reward_functions=(f"{m}:nan_reward",)), pool=pool)
        assert failed.score == 0.0 and failed.reason.startswith(f"verifier failed: reward function '{m}:nan_reward'")


def test_bad_reward_functions_are_errors_naming_them(rewards_module) -> None:
    m = rewards_module
    for fn, returned in (("nan_reward", "nan"), ("none_reward", "None")):
        scoring = RowScoring(reward_functions=(f"{m}:{fn}",))
        with pytest.raises(ValueError, match=f"reward function '{m}:{fn}' returned {returned}.*finite float"):
            score_row(RIGHT_MATH, math_row(), scoring)
        (failed,) = score_rows([RIGHT_MATH], [math_row()], scoring, workers=0)
        assert failed.score == 0.0 and f"reward function '{m}:{fn}' returned {returned}" in failed.reason
    with pytest.raises(ValueError, match="has no 'missing'"):
        score_row(RIGHT_MATH, math_row(), RowScoring(reward_functions=(f"{m}:missing",)))
    with pytest.raises(ValueError, match="cannot import"):
        score_rows([RIGHT_MATH], [math_row()], RowScoring(reward_functions=("no_such_module_xyz:f",)))
    with pytest.raises(ValueError, match="import path"):
        RowScoring(reward_functions=("not a path",))
    with pytest.raises(ValueError, match="one weight per function"):
        RowScoring(reward_functions=(f"{m}:format_bonus",), reward_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="finite"):
        RowScoring(reward_functions=(f"{m}:format_bonus",), reward_weights=(math.inf,))


def test_a_reward_function_failing_on_some_samples_fails_only_those(rewards_module) -> None:
    """A third of the rows make the function raise: those samples score 0 with the reason (as the
    trainer counts them in verify/failed); the others keep their verifier's score; score_row
    alone still raises."""
    m = rewards_module
    scoring = RowScoring(reward_functions=(f"{m}:fails_on_third",))
    rows = [dict(math_row(), extra_info={"index": i}) for i in range(6)]
    for kwargs in ({"workers": 0}, {"workers": 1}):
        results = score_rows([RIGHT_MATH] * 6, rows, scoring, **kwargs)
        assert [r.score for r in results] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
        assert results[0].reason == (
            f"verifier failed: reward function '{m}:fails_on_third' raised ZeroDivisionError: division by zero"
        )
        assert not results[0].timed_out and results[1].reason.startswith("correct")
    with pytest.raises(ValueError, match="raised ZeroDivisionError"):
        score_row(RIGHT_MATH, rows[0], scoring)


# ------------------------------------------------------------------ deadlines


def test_a_sample_past_its_deadline_scores_zero_and_the_batch_goes_on(rules) -> None:
    register_row_verifier("sleepy", sleepy_verifier)
    sleepy = {"ability": "sleepy", "answer": "a"}
    responses = ["a", "sleep", RIGHT_MATH, "b", WRONG_MATH, "a"]
    rows = [sleepy, sleepy, math_row(), sleepy, math_row(), sleepy]
    with VerifierPool(workers=2) as pool:
        results = score_rows(responses, rows, pool=pool, timeout_s=0.5)  # killed at 0.5 + 3 s, not after 60 s
        assert [r.score for r in score_rows(["a"], [sleepy], pool=pool)] == [1.0]  # a replacement worker
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert [r.timed_out for r in results] == [False, True, False, False, False, False]
    assert "timed out" in results[1].reason


def test_the_verifiers_own_timeout_sets_timed_out() -> None:
    row = math_row("2")
    (inline,) = score_rows([r"\boxed{9^{9^{9^{9}}}}"], [row], workers=0, timeout_s=1.0)
    assert inline.score == 0.0 and inline.timed_out and inline.reason.startswith("timed out")
    assert not score_row_detailed(WRONG_MATH, row).timed_out
    assert VerifyResult(1.0, 1, 1, "ok", 0.1).timed_out is False  # old constructors keep working


def test_score_rows_argument_checks() -> None:
    with pytest.raises(ValueError, match="2 responses but 1 rows"):
        score_rows(["a", "b"], [math_row()])
    assert score_rows([], [], workers=2) == []
    # references read by the loader can be passed in
    (result,) = score_rows([RIGHT_MATH], [{"ability": "math"}], references=["42"], workers=0)
    assert result.score == 1.0
