"""Shipped benchmark loaders: row counts, gold answers, prompts, custom jsonl files."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from iprime.data.sources import DataError
from iprime.eval.benchmarks import CODE_SUFFIX, MATH_SUFFIX, benchmark_names, load_benchmark

EXPECTED_ROWS = {
    "math500": 500,
    "aime2024": 30,
    "aime": 90,  # 2022-2024
    "amc": 83,  # AMC 2022 (43) + 2023 (40)
    "minerva": 272,
    "olympiadbench": 675,  # text-only, English, open-ended maths
    "humaneval": 164,
    "mbpp": 399,
    "leetcode": 180,
    "arithmetic": 200,  # the quickstart's held-out rows
}


def test_every_shipped_benchmark_is_counted():
    assert set(benchmark_names()) == set(EXPECTED_ROWS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_benchmark_loads_with_expected_rows(name):
    rows = load_benchmark(name)
    assert len(rows) == EXPECTED_ROWS[name]
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "benchmark", "prompt", "reference", "kind", "verifier"}
        assert r["kind"] in ("math", "code") and r["benchmark"] == name
        if r["verifier"] == "math":
            assert r["prompt"].endswith(MATH_SUFFIX)
            assert r["reference"] and all(isinstance(g, str) and g.strip() for g in r["reference"]), r
        elif r["verifier"] == "code":
            assert r["prompt"].endswith(CODE_SUFFIX)
            assert r["reference"]["asserts"] and all(a.strip() for a in r["reference"]["asserts"])
        else:  # the built-in task: its own prompt, an integer answer
            assert r["prompt"].startswith("Compute ") and int(r["reference"]) == int(r["reference"])


def test_year_selection_and_limit():
    assert len(load_benchmark("aime2023")) == 30
    assert len(load_benchmark("amc2022")) == 43 and len(load_benchmark("amc2023")) == 40
    assert all(r["id"].startswith("2024_AIME") for r in load_benchmark("aime2024"))
    assert [r["id"] for r in load_benchmark("math500", limit=3)] == [r["id"] for r in load_benchmark("math500")[:3]]
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("gsm8k")


def test_arithmetic_rows_are_the_quickstart_rows():
    from iprime.presets import QUICKSTART

    task_rows = QUICKSTART.make_task().rows("test", QUICKSTART.eval_prompts, seed=QUICKSTART.seed + 1)
    rows = load_benchmark("arithmetic")
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in task_rows]
    assert [r["reference"] for r in rows] == [r["answer"] for r in task_rows]


def test_data_is_shipped_inside_the_package():
    data = resources.files("iprime.eval").joinpath("data")
    names = sorted(p.name for p in data.iterdir())
    assert names == sorted(
        [
            "aime.jsonl.gz",
            "amc.jsonl.gz",
            "humaneval.jsonl.gz",
            "leetcode.jsonl.gz",
            "math500.json.gz",
            "mbpp.json.gz",
            "minerva_math.jsonl.gz",
            "olympiadbench.jsonl.gz",
        ]
    )


def test_custom_jsonl_benchmark(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"q": "What is 1+1?", "a": 2, "key": "x1"})
        + "\n\n"
        + json.dumps({"q": "Name two halves.", "a": ["\\frac{1}{2}", "0.5"], "key": "x2"})
        + "\n"
    )
    rows = load_benchmark(str(path), prompt_key="q", answer_key="a", id_key="key")
    assert [r["id"] for r in rows] == ["x1", "x2"] and rows[0]["benchmark"] == "mine"
    assert rows[0]["reference"] == ["2"] and rows[1]["reference"] == ["\\frac{1}{2}", "0.5"]
    assert rows[0]["prompt"] == "What is 1+1?" + MATH_SUFFIX
    raw = load_benchmark(str(path), prompt_key="q", answer_key="a", add_suffix=False)
    assert raw[0]["prompt"] == "What is 1+1?" and raw[1]["id"] == "3"  # line numbers
    with pytest.raises(DataError, match=r"neither 'answer' nor 'reward_model.ground_truth'.*--answer-key"):
        load_benchmark(str(path), prompt_key="q")
    with pytest.raises(DataError, match=r"mine.jsonl line 1: answer: field 'answer' is missing"):
        load_benchmark(str(path), prompt_key="q", answer_key="answer")
    code = tmp_path / "code.jsonl"
    code.write_text(
        json.dumps({"prompt": "Write f.", "tests": {"asserts": ["assert f() == 1"]}})
        + "\n"
        + json.dumps({"prompt": "Write g.", "tests": "assert g()"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"code.jsonl line 2: tests: .*tests dict"):
        load_benchmark(str(code), answer_key="tests", kind="code")
    with pytest.raises(ValueError, match="only apply to benchmark files"):
        load_benchmark("math500", prompt_key="q")
