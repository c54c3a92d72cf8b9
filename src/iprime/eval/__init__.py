"""Evaluation: shipped benchmarks, metrics (pass@k, maj@k, best-of-N, PRM-weighted voting), the
resumable ``iprime eval`` runner, and re-ranking sampled responses with an implicit PRM."""

from .answers import extract_answer, group_answers, math_equal, normalize_answer
from .benchmarks import CODE_SUFFIX, MATH_SUFFIX, benchmark_names, load_benchmark, load_jsonl_benchmark
from .metrics import avg_at_k, best_of_n, pass_at_k, summarize_rows, vote, vote_weights
from .rerank import group_rows, rerank_groups
from .runner import EvalConfig, read_generations, run_eval, summary_markdown

__all__ = [
    "CODE_SUFFIX",
    "MATH_SUFFIX",
    "EvalConfig",
    "avg_at_k",
    "benchmark_names",
    "best_of_n",
    "extract_answer",
    "group_answers",
    "group_rows",
    "load_benchmark",
    "load_jsonl_benchmark",
    "math_equal",
    "normalize_answer",
    "pass_at_k",
    "read_generations",
    "rerank_groups",
    "run_eval",
    "summarize_rows",
    "summary_markdown",
    "vote",
    "vote_weights",
]
