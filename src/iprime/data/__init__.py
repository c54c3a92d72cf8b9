"""Datasets: the built-in arithmetic task, its verifier, prompt rendering, and jsonl I/O."""

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

__all__ = [
    "OPERATORS",
    "SLIP_KINDS",
    "ArithmeticConfig",
    "ArithmeticTask",
    "JsonlError",
    "Problem",
    "Solution",
    "Step",
    "boxed_int_score",
    "can_slip",
    "drop_carries",
    "first_wrong_step",
    "generate_problems",
    "last_boxed",
    "parse_int_answer",
    "problem_from_prompt",
    "problem_row",
    "problem_split",
    "read_jsonl",
    "render_prompt",
    "write_jsonl",
    "write_sft_jsonl",
    "write_solution",
]
