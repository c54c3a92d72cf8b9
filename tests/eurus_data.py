"""Eurus-2-RL-Data rows as PRIME's data script / verl write them, and writers for the file
formats: shared by the data tests."""

from __future__ import annotations

import json

SYSTEM = "When tackling complex reasoning tasks, you have access to the following actions."


def _msgs(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def eurus_rows() -> list[dict]:
    """Rows as PRIME's data script / verl write Eurus-2-RL-Data: two math, two code (stdio and
    call-based APPS tests as JSON strings)."""
    stdio = {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
    call = {"fn_name": "add", "inputs": [[1, 2]], "outputs": [[3]]}
    return [
        {
            "data_source": "numina_olympiads",
            "prompt": _msgs("What is $2+3$? Present the answer in LaTex format: \\boxed{Your answer}"),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": "5"},
            "extra_info": {"split": "train", "index": 0},
        },
        {
            "data_source": "numina_cn_k12",
            "prompt": _msgs("Solve $x^2 = 4$ for $x > 0$."),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": "2"},
            "extra_info": {"split": "train", "index": 1},
        },
        {
            "data_source": "taco",
            "prompt": _msgs("Read two integers and print their sum. Write Python code."),
            "ability": "code",
            "reward_model": {"style": "rule", "ground_truth": json.dumps(stdio)},
            "extra_info": {"split": "train", "index": 2},
        },
        {
            "data_source": "apps",
            "prompt": _msgs("Write a function add(a, b) returning a + b."),
            "ability": "code",
            "reward_model": {"style": "rule", "ground_truth": json.dumps(call)},
            "extra_info": {"split": "train", "index": 3},
        },
    ]


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
