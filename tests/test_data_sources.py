"""iprime.data.sources: reading jsonl / json / parquet / directories / hf datasets into located
records, dotted fields, the reference key, and prepare_rows' checks (PRIME's own
Eurus-2-RL-Data format: message-list prompts, reward_model.ground_truth references)."""

from __future__ import annotations

import copy
import gzip
import json
import time
import tracemalloc

import pytest
from eurus_data import _msgs, eurus_rows, write_jsonl, write_parquet

from iprime.data import JsonlError, read_jsonl
from iprime.data.chat import render_prompt
from iprime.data.prompts import check_rows, load_rows
from iprime.data.sources import (
    DataError,
    DataFileNotFound,
    MissingField,
    Record,
    get_field,
    prepare_rows,
    read_records,
    resolve_reference_key,
)

# ------------------------------------------------------------------------------- reading


def test_eurus_parquet_reads_and_prepares(tmp_path):
    rows = eurus_rows()
    path = write_parquet(tmp_path / "train.parquet", rows)
    records = read_records(path)
    assert [r.row for r in records] == rows
    assert [r.where for r in records] == [f"{path} row {i}" for i in range(4)]

    data = prepare_rows(records)
    assert data.reference_key == "reward_model.ground_truth"
    assert data.prompts == [r["prompt"] for r in rows]
    assert data.references[:2] == ["5", "2"]
    assert json.loads(data.references[2]) == {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
    assert json.loads(data.references[3])["fn_name"] == "add"
    assert data.where == [r.where for r in records] and data.rows == rows
    assert data.dropped_overlong == [] and data.prompt_tokens is None


def test_jsonl_gz_json_list_and_jsonl_read_the_same_rows(tmp_path):
    rows = eurus_rows()
    plain = write_jsonl(tmp_path / "a.jsonl", rows)
    gz = write_jsonl(tmp_path / "a.jsonl.gz", rows, opener=gzip.open)
    as_list = tmp_path / "a.json"
    as_list.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    as_lines = write_jsonl(tmp_path / "lines.json", rows)
    for path in (plain, gz, as_list, as_lines):
        assert [r.row for r in read_records(path)] == rows, path
    assert read_records(gz)[2].where == f"{gz} line 3"
    assert read_records(as_list)[2].where == f"{as_list} row 2"
    assert [r.row for r in read_records(plain, limit=2)] == rows[:2]


def test_directory_reads_supported_files_sorted_by_name(tmp_path):
    rows = eurus_rows()
    write_parquet(tmp_path / "b.parquet", rows[2:])
    write_jsonl(tmp_path / "a.jsonl", rows[:2])
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "c.jsonl", rows)  # not recursive
    records = read_records(tmp_path)
    assert [r.row for r in records] == rows
    assert [r.where for r in records] == [
        f"{tmp_path / 'a.jsonl'} line 1",
        f"{tmp_path / 'a.jsonl'} line 2",
        f"{tmp_path / 'b.parquet'} row 0",
        f"{tmp_path / 'b.parquet'} row 1",
    ]
    assert len(read_records(tmp_path, limit=3)) == 3


def test_empty_directory_missing_file_and_unknown_kind_are_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no .jsonl"):
        read_records(empty)
    (empty / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"readme\.md"):
        read_records(empty)
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        read_records(tmp_path / "nope.jsonl")
    assert isinstance(info.value, DataFileNotFound) and isinstance(info.value, DataError)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported"):
        read_records(tmp_path / "x.csv")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no rows"):
        read_records(tmp_path / "blank.jsonl")


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\r\n')
    records = read_records(path)
    assert [(r.row, r.where) for r in records] == [({"a": 1}, f"{path} line 1"), ({"a": 2}, f"{path} line 4")]


@pytest.mark.parametrize(
    "content, line, match",
    [
        (b'{"a": 1}\n{"a": "caf\xe9"}\n', 2, r"not valid UTF-8 \(byte 0xe9"),
        (b'{"a": 1}\n\n{"a": \n', 3, r"invalid JSON \(Expecting value at column 7\)"),
        (b'{"a": 1}\n[1, 2]\n', 2, "expected a JSON object, got list"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, content, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path} line {line}: ")
    assert info.value.line == line and info.value.path == str(path)
    # the old readers give the same, as JsonlError (path:line:)
    with pytest.raises(JsonlError, match=match) as info:
        read_jsonl(path)
    assert info.value.line == line and f"bad.jsonl:{line}:" in str(info.value)


def test_non_utf8_in_json_list_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[\n {"a": 1},\n {"a": "\xff"}\n]\n')
    with pytest.raises(DataError, match=f"{path} line 3: not valid UTF-8"):
        read_records(path)


def test_line_byte_cap_boundary(tmp_path):
    cap = 1024
    exact = json.dumps({"a": "x" * (cap - 9)})  # exactly cap bytes
    assert len(exact.encode()) == cap
    path = tmp_path / "cap.jsonl"
    path.write_text(exact + "\n" + exact)  # the last line has no newline
    assert len(read_records(path, max_row_bytes=cap)) == 2
    path.write_text(exact + "\n" + json.dumps({"a": "x" * (cap - 8)}) + "\n")
    with pytest.raises(DataError, match=f"{path} line 2: line is longer than max_row_bytes={cap}"):
        read_records(path, max_row_bytes=cap)


def test_huge_line_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.jsonl"
    chunk = b"x" * (1 << 20)
    with path.open("wb") as f:
        f.write(b'{"prompt": "ok", "answer": "1"}\n{"prompt": "')
        for _ in range(100):  # a 100 MB line, written in 1 MB chunks
            f.write(chunk)
        f.write(b'", "answer": "2"}\n')
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError, match=r"line 2: line is longer than max_row_bytes=1048576") as info:
            read_records(path, max_row_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    assert info.value.line == 2
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB: the line was read whole"
    assert elapsed < 10, elapsed  # generous: reading the whole line and parsing it is what must not happen


def test_parquet_row_over_the_cap_is_refused(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b" * 5000, "answer": "2"}]
    path = write_parquet(tmp_path / "big.parquet", rows)
    with pytest.raises(DataError, match=f"{path} row 1: row is larger than max_row_bytes=2048"):
        read_records(path, max_row_bytes=2048)
    assert len(read_records(path, max_row_bytes=1 << 20)) == 2


def test_corrupt_parquet_is_a_data_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=f"{path}: cannot read parquet"):
        read_records(path)


def test_hf_without_datasets_says_what_to_install(tmp_path):
    try:
        import datasets  # noqa: F401
    except ImportError:
        path = write_parquet(tmp_path / "train.parquet", eurus_rows())
        with pytest.raises(ImportError, match="needs the Hugging Face `datasets` package"):
            read_records(f"hf:{path}")
    else:
        pytest.skip("datasets is installed")


def test_hf_local_files_and_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = eurus_rows()
    path = write_parquet(tmp_path / "train.parquet", rows)
    records = read_records(f"hf:{path}")
    assert [r.row for r in records] == rows and records[1].where == f"hf:{path}[train] row 1"
    saved = tmp_path / "saved"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(saved))
    assert [r.row for r in read_records(f"hf:{saved}:validation")] == rows[:2]
    with pytest.raises(DataError, match="no split 'train'"):
        read_records(f"hf:{saved}")


# -------------------------------------------------------------------------------- fields


def test_get_field_follows_dots_and_literal_keys_win():
    row = {"reward_model": {"ground_truth": "5", "style": "rule"}, "a.b": 1, "a": {"b": 2}, "p": [{"c": "x"}]}
    assert get_field(row, "reward_model.ground_truth") == "5"
    assert get_field(row, "a.b") == 1
    assert get_field(row, "a") == {"b": 2}
    assert get_field(row, "p.0.c") == "x"
    with pytest.raises(MissingField) as info:
        get_field(row, "reward_model.answer")
    assert isinstance(info.value, KeyError)
    assert info.value.missing == "reward_model.answer" and info.value.key == "reward_model.answer"
    assert "'ground_truth'" in str(info.value)  # what the mapping has
    with pytest.raises(MissingField) as info:
        get_field({"x": 1}, "reward_model.ground_truth")
    assert info.value.missing == "reward_model"
    with pytest.raises(MissingField):
        get_field({"reward_model": None}, "reward_model.ground_truth")


def test_resolve_reference_key():
    assert resolve_reference_key([{"answer": "1", "reward_model": {"ground_truth": "2"}}], "auto") == "answer"
    assert resolve_reference_key(eurus_rows(), "auto") == "reward_model.ground_truth"
    assert resolve_reference_key([{"x": 1}], "solution") == "solution"
    with pytest.raises(DataError, match=r"has \['prompt', 'solution'\].*set data.reference_key"):
        resolve_reference_key([{"prompt": "p", "solution": "1"}], "auto")


# ------------------------------------------------------------------------------ prepare


def _records(rows, name="d.jsonl"):
    return [Record(row, f"{name} line {i + 1}") for i, row in enumerate(rows)]


def test_system_prompt_goes_before_string_prompts_only_and_rows_are_untouched():
    rows = [{"prompt": "What is 1+1?", "answer": "2"}, {"prompt": _msgs("Q"), "answer": "3"}]
    before = copy.deepcopy(rows)
    data = prepare_rows(_records(rows), system_prompt="Think step by step.")
    assert data.reference_key == "answer"
    assert data.prompts[0] == [
        {"role": "system", "content": "Think step by step."},
        {"role": "user", "content": "What is 1+1?"},
    ]
    assert data.prompts[1] == _msgs("Q")
    assert rows == before
    assert prepare_rows(_records(rows)).prompts[0] == "What is 1+1?"


def test_dotted_prompt_key_and_explicit_reference_key():
    rows = [{"q": {"text": "hi"}, "sol": {"final": "1"}}]
    data = prepare_rows(_records(rows), prompt_key="q.text", reference_key="sol.final")
    assert data.prompts == ["hi"] and data.references == ["1"] and data.reference_key == "sol.final"


def test_missing_prompt_and_reference_are_named_with_where_and_field():
    rows = eurus_rows()
    del rows[1]["prompt"]
    rows[2]["reward_model"] = {"style": "rule"}
    with pytest.raises(DataError) as info:
        prepare_rows(_records(rows, "train.jsonl"))
    msg = str(info.value)
    assert msg.startswith("2 problem(s) in 2 of 4 rows:")
    assert "train.jsonl line 2: prompt: field 'prompt' is missing" in msg
    assert "train.jsonl line 3: reward_model.ground_truth: field 'reward_model.ground_truth' is missing" in msg
    assert [(w, f) for w, f, _ in info.value.problems] == [
        ("train.jsonl line 2", "prompt"),
        ("train.jsonl line 3", "reward_model.ground_truth"),
    ]


@pytest.mark.parametrize(
    "prompt, field, problem",
    [
        ("  ", "prompt", "empty prompt"),
        ([], "prompt", "empty message list"),
        (None, "prompt", "is null"),
        (7, "prompt", "got int"),
        ([{"role": "user"}], "prompt[0].content", "missing"),
        ([{"role": "user", "content": ["x"]}], "prompt[0].content", "must be a string, got list"),
        ([{"content": "x"}], "prompt[0].role", "missing"),
        (["hello"], "prompt[0]", "got str"),
    ],
)
def test_bad_prompts(prompt, field, problem):
    with pytest.raises(DataError) as info:
        prepare_rows(_records([{"prompt": prompt, "answer": "1"}]))
    ((where, got_field, got_problem),) = info.value.problems
    assert (where, got_field) == ("d.jsonl line 1", field) and problem in got_problem


@pytest.mark.parametrize("reference, problem", [(None, "null"), ("", "empty string")])
def test_empty_reference(reference, problem):
    with pytest.raises(DataError, match=f"d.jsonl line 1: answer: reference is .*{problem}"):
        prepare_rows(_records([{"prompt": "p", "answer": reference}]))


def test_all_problems_of_all_rows_in_one_error():
    rows = [{"prompt": "", "answer": ""} for _ in range(15)]  # two problems per row
    with pytest.raises(DataError) as info:
        prepare_rows(_records(rows))
    msg = str(info.value)
    assert msg.startswith("30 problem(s) in 15 of 15 rows:")
    assert msg.count("\n  d.jsonl line") == 20 and msg.endswith("... and 10 more")
    assert len(info.value.problems) == 30
    assert info.value.problems[-1] == ("d.jsonl line 15", "answer", "reference is an empty string")


def test_check_row_gets_reference_and_row_and_its_problems_are_reported():
    seen = []

    def check_row(reference, row):
        seen.append((reference, row["ability"]))
        if row["ability"] == "code":
            tests = json.loads(reference)
            return [] if "inputs" in tests else ["code tests need inputs/outputs"]
        if row["data_source"] == "boom":
            raise RuntimeError("verifier bug")
        return [] if isinstance(reference, str) else ["math reference must be a string"]

    rows = eurus_rows()
    data = prepare_rows(_records(rows), check_row=check_row)
    assert seen == [(r["reward_model"]["ground_truth"], r["ability"]) for r in rows]
    assert len(data.rows) == 4
    rows[0]["reward_model"]["ground_truth"] = {"value": "5"}
    rows[1]["data_source"] = "boom"
    rows[2]["reward_model"]["ground_truth"] = json.dumps({"asserts": []})
    with pytest.raises(DataError) as info:
        prepare_rows(_records(rows), check_row=check_row)
    assert info.value.problems == [
        ("d.jsonl line 1", "reward_model.ground_truth", "math reference must be a string"),
        ("d.jsonl line 2", "reward_model.ground_truth", "row check failed: RuntimeError: verifier bug"),
        ("d.jsonl line 3", "reward_model.ground_truth", "code tests need inputs/outputs"),
    ]


def test_prompt_tokens_drop_and_error(tiny_model_dir):
    from iprime.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    rows = [
        {"prompt": "Compute 1 + 2.", "answer": "3"},
        {"prompt": "Compute " + " + ".join(["1"] * 40) + ".", "answer": "40"},
        {"prompt": _msgs("Compute 2 + 2."), "answer": "4"},
    ]
    n = [len(tok(render_prompt(tok, r["prompt"]), add_special_tokens=False)["input_ids"]) for r in rows]
    assert n[1] > max(n[0], n[2])
    records = _records(rows)

    data = prepare_rows(records, tokenizer=tok)
    assert data.prompt_tokens == n and data.dropped_overlong == []

    limit = max(n[0], n[2])
    data = prepare_rows(records, tokenizer=tok, max_prompt_tokens=limit)
    assert data.references == ["3", "4"] and data.prompt_tokens == [n[0], n[2]]
    assert data.dropped_overlong == ["d.jsonl line 2"] and data.where == ["d.jsonl line 1", "d.jsonl line 3"]

    with pytest.raises(DataError, match=f"d.jsonl line 2: prompt: prompt is {n[1]} tokens, over max_prompt_tokens"):
        prepare_rows(records, tokenizer=tok, max_prompt_tokens=limit, overlong="error")
    with pytest.raises(DataError, match="all 3 rows have prompts over max_prompt_tokens=1"):
        prepare_rows(records, tokenizer=tok, max_prompt_tokens=1)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        prepare_rows(records, max_prompt_tokens=10)


# ---------------------------------------------------------- the old loaders use the reader


def test_load_rows_takes_message_prompts_dotted_and_auto_keys(tmp_path):
    rows = eurus_rows()
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    # used to fail with "field 'prompt' must be a string, got list"
    assert load_rows(path, required=["prompt", "auto"]) == rows
    assert load_rows(write_parquet(tmp_path / "t.parquet", rows), required=["reward_model.ground_truth"]) == rows
    rows[2]["reward_model"]["ground_truth"] = "  "
    write_jsonl(path, rows)
    with pytest.raises(DataError, match=r"train.jsonl line 3: missing or empty field 'reward_model.ground_truth'"):
        load_rows(path, required=["prompt", "auto"])
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path / "missing.jsonl")


def test_check_rows_dotted_and_auto():
    check_rows(eurus_rows(), ["prompt", "auto"])
    with pytest.raises(ValueError, match=r"train_dataset row 1: missing or empty field 'answer'"):
        check_rows(
            [{"prompt": "p", "answer": "1"}, {"prompt": "q", "answer": None}],
            ["prompt", "auto"],
            source="train_dataset",
        )
