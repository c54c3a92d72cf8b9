"""The built-in arithmetic task: generation, splits, slips, verifier, jsonl I/O."""

from __future__ import annotations

import json
import random

import pytest

from iprime.data import (
    ArithmeticConfig,
    ArithmeticTask,
    JsonlError,
    Problem,
    boxed_int_score,
    can_slip,
    drop_carries,
    first_wrong_step,
    generate_problems,
    last_boxed,
    parse_int_answer,
    problem_from_prompt,
    problem_split,
    read_jsonl,
    write_jsonl,
    write_sft_jsonl,
    write_solution,
)
from iprime.data.arithmetic import apply_op

CONFIGS = [
    ArithmeticConfig(),
    ArithmeticConfig(min_ops=1, max_ops=4, digits=1, first_digits=2),
    ArithmeticConfig(min_ops=2, max_ops=3, digits=3, operators=("+", "-", "*")),
    ArithmeticConfig(operators=("-",), allow_negative=True),
]


# --------------------------------------------------------------------- problems


def test_problem_text_and_solution_format():
    p = Problem((37, 48, 19), ("+", "-"))
    assert p.prompt == "Compute 37 + 48 - 19."
    assert p.answer == 66
    sol = write_solution(p)
    assert sol.text == "37 + 48 = 85\n85 - 19 = 66\nThe answer is \\boxed{66}"
    assert sol.correct and sol.final == 66


def test_multiplication_is_parenthesised_so_precedence_matches_left_to_right():
    p = Problem((37, 48, 3, 19, 2), ("+", "*", "-", "*"))
    assert p.expression == "((37 + 48) * 3 - 19) * 2"
    assert p.answer == eval(p.expression) == ((37 + 48) * 3 - 19) * 2
    assert Problem((5, 3, 2), ("*", "*")).expression == "5 * 3 * 2"


@pytest.mark.parametrize("config", CONFIGS)
def test_problems_respect_config_and_evaluate_like_python(config):
    problems = generate_problems(config, 300, split="train", seed=1)
    for p in problems:
        assert config.min_ops <= len(p.ops) <= config.max_ops
        assert set(p.ops) <= set(config.operators) | ({"+"} if "-" in config.operators else set())
        assert p.answer == eval(p.expression)
        if not config.allow_negative:
            assert all(s.result >= 0 for s in p.steps())
        for op, b in zip(p.ops, p.operands[1:]):
            assert (2 <= b <= config.mul_max) if op == "*" else len(str(b)) == config.digits
        assert len(str(p.operands[0])) == (config.first_digits or config.digits)


def test_generation_is_deterministic_in_seed():
    cfg = ArithmeticConfig()
    a = generate_problems(cfg, 200, seed=3)
    assert a == generate_problems(cfg, 200, seed=3)
    assert a != generate_problems(cfg, 200, seed=4)
    # the prefix of a longer draw is the shorter draw: n does not change earlier problems
    assert generate_problems(cfg, 50, seed=3) == a[:50]
    task = ArithmeticTask(cfg, slip_rate=0.5)
    assert task.sft_rows(100, seed=7) == task.sft_rows(100, seed=7)
    assert task.sft_rows(100, seed=7) != task.sft_rows(100, seed=8)


def test_generated_problems_are_unique():
    ps = generate_problems(ArithmeticConfig(), 2000, seed=0)
    assert len({p.expression for p in ps}) == 2000


@pytest.mark.parametrize("config", CONFIGS)
def test_train_and_test_never_overlap(config):
    train = {p.expression for seed in range(3) for p in generate_problems(config, 1000, split="train", seed=seed)}
    test = {p.expression for seed in range(3) for p in generate_problems(config, 400, split="test", seed=seed)}
    assert train and test and not (train & test)
    assert all(problem_split(e, config.test_fraction) == "test" for e in test)


def test_split_fraction_matches_test_fraction():
    rng = random.Random(0)
    exprs = [f"{rng.randint(0, 10**9)} + {i}" for i in range(20000)]
    share = sum(problem_split(e, 0.2) == "test" for e in exprs) / len(exprs)
    assert abs(share - 0.2) < 0.015


def test_too_small_problem_space_raises():
    cfg = ArithmeticConfig(min_ops=1, max_ops=1, digits=1, operators=("+",))  # 81 problems
    with pytest.raises(ValueError, match="could only find"):
        generate_problems(cfg, 500, split="test")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_ops": 0},
        {"min_ops": 3, "max_ops": 2},
        {"digits": 0},
        {"operators": ("/",)},
        {"operators": ()},
        {"test_fraction": 0.0},
        {"mul_max": 12},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        ArithmeticConfig(**kwargs)


def test_bad_split_and_slip_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        generate_problems(ArithmeticConfig(), 3, split="valid")
    p = Problem((37, 48), ("+",))
    with pytest.raises(ValueError, match="slip_rate"):
        write_solution(p, slip_rate=1.5, rng=random.Random(0))
    with pytest.raises(ValueError, match="slip_kind"):
        write_solution(p, slip_kind="typo")
    with pytest.raises(ValueError, match="rng"):
        write_solution(p, slip_rate=0.5)


# ------------------------------------------------------------------------ slips


@pytest.mark.parametrize(
    "a, op, b, expected",
    [
        (37, "+", 48, 75),
        (95, "+", 17, 102),
        (52, "-", 17, 45),
        (85, "*", 3, 245),
        (37, "+", 8, 35),
        (42, "-", 5, 47),
        (34, "+", 25, 59),  # no carry: exact
        (59, "-", 23, 36),  # no borrow: exact
    ],
)
def test_drop_carries(a, op, b, expected):
    assert drop_carries(a, op, b) == expected
    assert can_slip(a, op, b, "carry") == (expected != apply_op(a, op, b))


def test_correct_solutions_verify_and_slipped_ones_do_not():
    task = ArithmeticTask(ArithmeticConfig(min_ops=1, max_ops=3), slip_rate=0.5, slip_kind="carry")
    rows = task.sft_rows(500, seed=0)
    assert {r["correct"] for r in rows} == {True, False}
    for r in rows:
        assert task.verify(r["response"], r["answer"]) == (1.0 if r["correct"] else 0.0)
        assert r["response"].endswith("}") and "\\boxed{" in r["response"]


@pytest.mark.parametrize("kind", ["carry", "random"])
def test_slip_propagates_to_the_final_answer(kind):
    rng = random.Random(0)
    for p in generate_problems(ArithmeticConfig(min_ops=3, max_ops=3), 200, seed=2):
        sol = write_solution(p, slip_rate=1.0, slip_kind=kind, rng=rng)
        assert sol.n_slips == sol.n_eligible
        # each line's left operand is the previous line's (possibly wrong) result
        for prev, step in zip(sol.steps, sol.steps[1:]):
            assert step.left == prev.result
        if sol.n_slips:
            assert sol.final != p.answer and boxed_int_score(sol.text, str(p.answer)) == 0.0


@pytest.mark.parametrize("kind, rate", [("carry", 0.3), ("carry", 0.7), ("random", 0.2)])
def test_slip_rate_matches_configuration(kind, rate):
    rng = random.Random(1)
    slips = eligible = 0
    for p in generate_problems(ArithmeticConfig(min_ops=2, max_ops=3), 3000, seed=5):
        sol = write_solution(p, slip_rate=rate, slip_kind=kind, rng=rng)
        slips += sol.n_slips
        eligible += sol.n_eligible
    assert eligible > 3000
    # binomial standard error is < 0.01 here; 0.03 is a > 3-sigma band
    assert abs(slips / eligible - rate) < 0.03


@pytest.mark.parametrize("config", CONFIGS)
def test_problem_from_prompt_round_trips(config):
    for p in generate_problems(config, 100, seed=3):
        assert problem_from_prompt(p.prompt) == p


@pytest.mark.parametrize("prompt", ["What is 3 + 4?", "Compute 3 + .", "Compute 3 / 4.", "Compute ."])
def test_problem_from_prompt_rejects_other_text(prompt):
    with pytest.raises(ValueError):
        problem_from_prompt(prompt)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("37 + 48 = 85\n85 - 19 = 66\nThe answer is \\boxed{66}", None),
        ("37 + 48 = 75\n75 - 19 = 56\nThe answer is \\boxed{56}", 0),  # carry slip, propagated
        ("37 + 48 = 85\n85 - 19 = 76\nThe answer is \\boxed{76}", 1),  # borrow slip on line 2
        ("37 + 48 = 85\n84 - 19 = 65\nThe answer is \\boxed{65}", 1),  # wrong left operand
        ("37 + 48 = 85\n85 + 19 = 104", 1),  # wrong operator
        ("37 + 48 = 85", 1),  # missing step
        ("The answer is \\boxed{66}", 0),  # no steps at all
        ("", 0),
    ],
)
def test_first_wrong_step_by_hand(response, expected):
    assert first_wrong_step(problem_from_prompt("Compute 37 + 48 - 19."), response) == expected


def test_first_wrong_step_finds_every_written_slip():
    rng = random.Random(4)
    for p in generate_problems(ArithmeticConfig(min_ops=2, max_ops=4), 300, seed=6):
        sol = write_solution(p, slip_rate=0.5, slip_kind="carry", rng=rng)
        slipped = [i for i, (got, want) in enumerate(zip(sol.steps, p.steps())) if got != want]
        assert first_wrong_step(p, sol.text) == (slipped[0] if slipped else None)


def test_zero_slip_rate_gives_only_correct_solutions():
    rows = ArithmeticTask(slip_rate=0.0).sft_rows(300, seed=0)
    assert all(r["correct"] for r in rows)
    assert all(boxed_int_score(r["response"], r["answer"]) == 1.0 for r in rows)


def test_solutions_are_short():
    rows = ArithmeticTask(ArithmeticConfig(min_ops=2, max_ops=3)).sft_rows(200, seed=0)
    assert max(len(r["response"]) for r in rows) < 120


# --------------------------------------------------------------------- verifier


@pytest.mark.parametrize(
    "response, answer, score",
    [
        ("37 + 48 = 85\nThe answer is \\boxed{85}", "85", 1.0),
        ("The answer is \\boxed{85}", "86", 0.0),
        ("The answer is 85", "85", 0.0),  # no box
        ("", "85", 0.0),
        ("\\boxed{84} wait, \\boxed{85}", "85", 1.0),  # the last box counts
        ("\\boxed{85} no: \\boxed{84}", "85", 0.0),
        ("\\boxed{ 85 }", "85", 1.0),  # extra whitespace
        ("\\boxed{\n85\t}", " 85 ", 1.0),
        ("\\boxed{-12}", "-12", 1.0),  # negative numbers
        ("\\boxed{- 12}", "-12", 1.0),
        ("\\boxed{12}", "-12", 0.0),
        ("\\boxed{{85}}", "85", 1.0),  # nested braces
        ("\\boxed{\\frac{1}{2}}", "85", 0.0),
        ("\\boxed{85.0}", "85", 0.0),  # exact integers only
        ("\\boxed{1,085}", "1085", 0.0),
        ("\\boxed{085}", "85", 1.0),
        ("\\boxed{85", "85", 0.0),  # unclosed (truncated) box
        ("\\boxed{85}\\boxed{8", "85", 0.0),  # the last box is truncated: no answer
        ("\\boxed{}", "0", 0.0),
    ],
)
def test_verifier_edge_cases(response, answer, score):
    assert boxed_int_score(response, answer) == score
    assert ArithmeticTask.verify(response, answer) == score


def test_strict_box_keeps_nested_braces_and_ignores_earlier_boxes():
    assert last_boxed("x \\boxed{\\frac{1}{2}} y", strict=True) == "\\frac{1}{2}"
    assert last_boxed("no box", strict=True) is None
    # the final box is cut off: strictly no answer; leniently the earlier, complete box
    assert last_boxed("\\boxed{85}\\boxed{8", strict=True) is None
    assert last_boxed("\\boxed{85}\\boxed{8") == "85"
    # strict reads \\boxed{...} only
    assert last_boxed("\\boxed{1} \\fbox{2} \\boxed 3", strict=True) == "1"
    assert last_boxed("\\boxed{1} \\fbox{2}") == "2"


def _extract_boxed_before_unification(text):
    """The built-in task's box reader as it was before it became ``last_boxed(strict=True)``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def test_strict_box_scores_exactly_like_the_old_reader():
    """Integer answers are read the same, on random boxes among the characters that matter."""
    rng = random.Random(0)
    pieces = ["\\boxed{", "\\boxed", "\\fbox{", "{", "}", "\\", "\\{", "\\}", "1", "2", "-", " ", "\n", "x", "$"]
    inner = ["1", "2", "3", "1", "2", " ", "-", "{", "}", "\\", "\\{", "\\}", "x"]

    def junk(k):
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, k)))

    answered = 0
    for _ in range(20000):
        text = (
            junk(4)
            + "\\boxed{"
            + "".join(rng.choice(inner) for _ in range(rng.randint(0, 5)))
            + rng.choice(["}", "}", ""])
            + junk(3)
        )
        got = parse_int_answer(last_boxed(text, strict=True))
        assert got == parse_int_answer(_extract_boxed_before_unification(text)), text
        answered += got is not None
    assert answered > 1000  # the comparison is not vacuous


def test_verifier_rejects_non_integer_reference():
    with pytest.raises(ValueError, match="integer"):
        boxed_int_score("\\boxed{1}", "one")
    assert boxed_int_score("\\boxed{3}", 3) == 1.0


# ------------------------------------------------------------------------ jsonl


def test_rows_and_jsonl_round_trip(tmp_path):
    task = ArithmeticTask(slip_rate=0.3)
    rows = task.rows("test", 20, seed=0)
    assert all(set(r) >= {"prompt", "answer"} and r["split"] == "test" for r in rows)
    assert all(str(p.answer) == r["answer"] for p, r in zip(task.problems("test", 20, seed=0), rows))
    write_jsonl(tmp_path / "eval.jsonl", rows)
    assert read_jsonl(tmp_path / "eval.jsonl", required=("prompt", "answer")) == rows

    sft = task.sft_rows(10, seed=0)
    path = write_sft_jsonl(tmp_path / "sub" / "sft.jsonl", sft)
    back = read_jsonl(path)
    assert back == [{"prompt": r["prompt"], "response": r["response"]} for r in sft]


@pytest.mark.parametrize(
    "lines, line, match",
    [
        (['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": '], 2, "invalid JSON"),
        (['{"prompt": "a", "answer": "1"}', "", '["not", "an", "object"]'], 3, "JSON object"),
        (['{"prompt": "a"}'], 1, "missing field 'answer'"),
        (['{"prompt": "a", "answer": "1"}', '{"prompt": 5, "answer": "1"}'], 2, "must be a string"),
    ],
)
def test_malformed_jsonl_reports_line_number(tmp_path, lines, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(JsonlError, match=match) as info:
        read_jsonl(path, required=("prompt", "answer"))
    assert info.value.line == line
    assert f"bad.jsonl:{line}:" in str(info.value)


def test_write_jsonl_with_fields_requires_them(tmp_path):
    with pytest.raises(ValueError, match="row 1"):
        write_jsonl(
            tmp_path / "x.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}], fields=("prompt", "response")
        )
    assert json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0]) == {"prompt": "a", "response": "b"}
