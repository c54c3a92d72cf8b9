"""Evaluation: shipped benchmarks, metrics (pass@k, maj@k, best-of-N, PRM-weighted voting), the
evaluation loop (sample, verify, score: ``iprime eval`` and evaluation during training), the
resumable ``iprime eval`` runner, and re-ranking sampled responses with an implicit PRM.

Attributes are imported on first use (PEP 562), so the command line (``iprime --help``) does not
load torch and transformers through this package.
"""

from iprime._lazy import lazy_getattr

_EXPORTS = {
    "extract_answer": "answers",
    "group_answers": "answers",
    "math_equal": "answers",
    "normalize_answer": "answers",
    "CODE_SUFFIX": "benchmarks",
    "MATH_SUFFIX": "benchmarks",
    "benchmark_names": "benchmarks",
    "load_benchmark": "benchmarks",
    "load_jsonl_benchmark": "benchmarks",
    "avg_at_k": "metrics",
    "best_of_n": "metrics",
    "pass_at_k": "metrics",
    "summarize_rows": "metrics",
    "vote": "metrics",
    "vote_weights": "metrics",
    "AccuracyTally": "loop",
    "GroupTally": "loop",
    "evaluate_accuracy": "loop",
    "scored_chunks": "loop",
    "group_rows": "rerank",
    "rerank_groups": "rerank",
    "EvalConfig": "runner",
    "read_generations": "runner",
    "run_eval": "runner",
    "summary_markdown": "runner",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
