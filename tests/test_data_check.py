"""``iprime data check``: the summary it prints and its exit codes (0: all rows usable; 2: a bad
row, or data that cannot be read). The verifiers' row check is replaced by a fake here, so these
tests do not depend on what iprime.verifiers accepts; one test runs the real one."""

from __future__ import annotations

import json

import pytest
import typer
from eurus_data import eurus_rows, write_jsonl, write_parquet
from typer.testing import CliRunner

from iprime import data_check
from iprime.data_check import VerifierHooks, data_app, percentile

ENV = {"COLUMNS": "400", "NO_COLOR": "1"}  # wide enough for a tmp path (longer under pytest-xdist) on one line


def fake_check(reference, row):
    """Math references must be strings; code references JSON with inputs/outputs."""
    if row.get("ability") == "code":
        return [] if "inputs" in json.loads(reference) else ["code tests need 'inputs' and 'outputs'"]
    return [] if isinstance(reference, str) else [f"math reference must be a string, got {type(reference).__name__}"]


@pytest.fixture
def fake_verifiers(monkeypatch):
    calls = []

    def hooks(**keys):
        calls.append(keys)

        def check(reference, row):
            return fake_check(reference, row)

        return VerifierHooks(check, lambda row: f"v-{row.get('ability', 'none')}")

    monkeypatch.setattr(data_check, "verifier_hooks", hooks)
    return calls


def run(*args):
    return CliRunner().invoke(data_app, ["check", *map(str, args)], env=ENV)


def test_good_eurus_parquet_exits_0_with_summary(tmp_path, fake_verifiers):
    path = write_parquet(tmp_path / "train.parquet", eurus_rows())
    result = run(path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"read 4 rows from {path}" in out
    assert "rows per verifier" in out and "v-math" in out and "v-code" in out
    assert "rows per ability" in out and "rows per data_source" in out
    for source in ("numina_olympiads", "numina_cn_k12", "taco", "apps"):
        assert source in out
    assert "reference key: reward_model.ground_truth (auto)" in out
    assert "prompts of 4 usable rows: 4 chat message lists" in out
    assert "characters" in out and "give --tokenizer for tokens" in out
    assert "OK: 4 of 4 rows usable" in out
    assert fake_verifiers == [
        {"reference_key": "auto", "ability_key": "ability", "source_key": "data_source", "verifier": "auto"}
    ]


def test_bad_rows_exit_2_and_are_listed_with_where_and_field(tmp_path, fake_verifiers):
    rows = eurus_rows()
    rows[0]["reward_model"]["ground_truth"] = {"value": "5"}
    del rows[1]["prompt"]
    rows[3]["reward_model"]["ground_truth"] = json.dumps({"asserts": ["assert add(1, 2) == 3"]})
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    result = run(path)
    assert result.exit_code == 2, result.output
    out = result.output
    assert "read 4 rows" in out and "bad rows: 3 of 4" in out and "FAIL: 3 of 4 rows are bad" in out
    assert f"{path} line 1" in out and "math reference must be a string, got dict" in out
    assert f"{path} line 2" in out and "field 'prompt' is missing" in out
    assert f"{path} line 4" in out and "code tests need 'inputs' and 'outputs'" in out
    assert f"{path} line 3" not in out
    assert "reward_model.ground_truth" in out


def test_unreadable_data_exits_2_with_the_error(tmp_path, fake_verifiers):
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(eurus_rows()[0]).encode() + b'\n{"prompt": "\xff"}\n')
    result = run(path)
    assert result.exit_code == 2
    assert f"error: {path} line 2: not valid UTF-8" in result.output
    result = run(tmp_path / "missing.parquet")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = run(path, "--max-row-bytes", 100)
    assert result.exit_code == 2 and "line 1: line is longer than max_row_bytes=100" in result.output


def test_reference_key_auto_failure_and_explicit_keys(tmp_path, fake_verifiers):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1?", "solution": "2"}])
    result = run(path)
    assert result.exit_code == 2 and "set data.reference_key" in result.output
    result = run(path, "--prompt-key", "question", "--reference-key", "solution", "--system-prompt", "Be brief.")
    assert result.exit_code == 0, result.output
    assert "reference key: solution\n" in result.output
    assert "prompts of 1 usable row: 1 chat message list" in result.output  # the system prompt made it a list
    assert "(none)" in result.output  # no ability / data_source field


def test_directory_and_limit(tmp_path, fake_verifiers):
    rows = eurus_rows()
    write_jsonl(tmp_path / "a.jsonl", rows[:2])
    write_parquet(tmp_path / "b.parquet", rows[2:])
    assert "read 4 rows" in run(tmp_path).output
    result = run(tmp_path, "--limit", 3)
    assert result.exit_code == 0 and "read 3 rows" in result.output


def test_token_lengths_and_overlong(tmp_path, tiny_model_dir, fake_verifiers):
    rows = [
        {"prompt": "Compute 1 + 2.", "answer": "3"},
        {"prompt": "Compute " + " + ".join(["1"] * 40) + ".", "answer": "40"},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    result = run(path, "--tokenizer", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "tokens" in result.output and "chat template applied" in result.output
    result = run(path, "--tokenizer", tiny_model_dir, "--max-prompt-tokens", 30)
    assert result.exit_code == 0, result.output
    assert f"1 rows over --max-prompt-tokens=30 would be dropped (first: {path} line 2)" in result.output
    assert "OK: 1 of 2 rows usable" in result.output
    result = run(path, "--tokenizer", tiny_model_dir, "--max-prompt-tokens", 30, "--overlong", "error")
    assert result.exit_code == 2 and "over max_prompt_tokens=30" in result.output
    result = run(path, "--max-prompt-tokens", 30)
    assert result.exit_code == 2 and "needs --tokenizer" in result.output


def test_registers_as_iprime_data(tmp_path, fake_verifiers):
    app = typer.Typer()

    @app.command()
    def other() -> None:
        pass

    app.add_typer(data_app, name="data")
    path = write_parquet(tmp_path / "train.parquet", eurus_rows())
    result = CliRunner().invoke(app, ["data", "check", str(path)], env=ENV)
    assert result.exit_code == 0 and "OK: 4 of 4 rows usable" in result.output


def test_with_the_real_verifier_check(tmp_path):
    rows = [r for r in eurus_rows() if r["ability"] == "math"]
    rows[1]["reward_model"]["ground_truth"] = {"value": "2"}  # a dict is no math reference
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    result = run(path)
    assert result.exit_code == 2, result.output
    assert f"{path} line 2" in result.output and f"{path} line 1 " not in result.output


def test_primes_call_based_form_passes_the_real_check(tmp_path):
    # PRIME's own call-based form (testing_util.py:236-237 in its verl fork): each input a string
    # of JSON values, one per line, each output a JSON string.
    rows = eurus_rows()
    prime_form = {"fn_name": "add", "inputs": ["1\n2", "3\n4"], "outputs": ["3", "7"]}
    rows[3]["reward_model"]["ground_truth"] = json.dumps(prime_form)
    result = run(write_jsonl(tmp_path / "prime.jsonl", rows))
    assert result.exit_code == 0, result.output
    assert "OK: 4 of 4 rows usable" in result.output
    # a row in neither form: the problem names both accepted forms
    rows[3]["reward_model"]["ground_truth"] = json.dumps({"fn_name": "add", "inputs": [5], "outputs": ["3"]})
    path = write_jsonl(tmp_path / "neither.jsonl", rows)
    result = run(path)
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())  # the table may wrap the message
    assert f"{path} line 4" in out
    assert "list of the call's positional arguments" in out and "one JSON value per line" in out


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 50) == 7
