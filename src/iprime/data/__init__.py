"""Datasets: the built-in arithmetic task, its verifier, prompt rendering, jsonl I/O, and training
data from files and datasets (:mod:`iprime.data.sources`)."""

from .arithmetic import (
    OPERATORS,
    SLIP_KINDS,
    ArithmeticConfig,
    ArithmeticTask,
    Problem,
    Solution,
    Step,
    can_slip,
    drop_carries,
    first_wrong_step,
    generate_problems,
    problem_from_prompt,
    problem_row,
    problem_split,
    write_solution,
)
from .boxed import boxed_int_score, last_boxed, parse_int_answer
from .chat import render_prompt
from .jsonl import JsonlError, read_jsonl, write_jsonl, write_sft_jsonl
from .sources import (
    DataError,
    DataFileNotFound,
    MissingField,
    PreparedData,
    Record,
    get_field,
    prepare_rows,
    read_records,
    resolve_reference_key,
)

__all__ = [
    "OPERATORS",
    "SLIP_KINDS",
    "ArithmeticConfig",
    "ArithmeticTask",
    "DataError",
    "DataFileNotFound",
    "JsonlError",
    "MissingField",
    "PreparedData",
    "Problem",
    "Record",
    "Solution",
    "Step",
    "boxed_int_score",
    "can_slip",
    "drop_carries",
    "first_wrong_step",
    "generate_problems",
    "get_field",
    "last_boxed",
    "parse_int_answer",
    "prepare_rows",
    "problem_from_prompt",
    "problem_row",
    "problem_split",
    "read_jsonl",
    "read_records",
    "render_prompt",
    "resolve_reference_key",
    "write_jsonl",
    "write_sft_jsonl",
    "write_solution",
]
