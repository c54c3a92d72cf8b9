"""Accuracy by ability and by data source: the rollout metrics of a step (``rollout/acc/<ability>``),
evaluation during training (``eval/<set>/acc/<ability>``), and under torchrun the same global
numbers and the same names on every rank, a rank that sampled no row of an ability included.

Run as a script, this file is one rank of the 2-rank check (``run_rank``); no model is built:
a scripted generator answers each prompt with known right and wrong responses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import launch_ranks

from iprime.config import load_config
from iprime.eval.loop import MAX_SOURCE_GROUPS, GroupTally, row_label
from iprime.rollout import GeneratorBase, RolloutBatch, SamplingParams
from iprime.train.collect import RolloutCollector, group_stats
from iprime.train.evaluate import EvalSet, run_evals
from iprime.train.scoring import RolloutScorer

# 8 rows: 4 math from two sources, then 4 code from two sources. RIGHT[i] of row i's 2 responses
# are right, so each group's accuracy is known by hand:
#   math: (2 + 1 + 0 + 1) / 8 = 0.5          code: (2 + 2 + 1 + 0) / 8 = 0.625
#   numina_olympiads (rows 0, 1): 3/4    numina_amc_aime (2, 3): 1/4    apps (4, 5): 4/4    taco (6, 7): 1/4
SOURCES = ["numina_olympiads"] * 2 + ["numina_amc_aime"] * 2 + ["apps"] * 2 + ["taco"] * 2
ROWS = [
    {
        "prompt": f"question {i}",
        "answer": f"answer {i}",
        "ability": "math" if i < 4 else "code",
        "data_source": SOURCES[i],
    }
    for i in range(8)
]
RIGHT = [2, 1, 0, 1, 2, 2, 1, 0]
EXPECTED = {
    "rollout/acc/math": 0.5,
    "rollout/count/math": 8.0,
    "rollout/acc/code": 0.625,
    "rollout/count/code": 8.0,
    "rollout/acc/source/numina_olympiads": 0.75,
    "rollout/count/source/numina_olympiads": 4.0,
    "rollout/acc/source/numina_amc_aime": 0.25,
    "rollout/count/source/numina_amc_aime": 4.0,
    "rollout/acc/source/apps": 1.0,
    "rollout/count/source/apps": 4.0,
    "rollout/acc/source/taco": 0.25,
    "rollout/count/source/taco": 4.0,
}


def exact_verifier(text: str, answer: str) -> float:
    return float(text == answer)


class ScriptedGenerator(GeneratorBase):
    """Answers prompt ``question i`` with ``answer i`` for its first ``RIGHT[i]`` responses and
    ``wrong`` for the rest (one token per character; no tokenizer)."""

    def generate(self, prompts, params) -> RolloutBatch:
        K = params.n
        texts = []
        for prompt in prompts:
            i = int(prompt.rsplit(" ", 1)[1])
            texts += [f"answer {i}" if k < RIGHT[i] else "wrong" for k in range(K)]
        B, T = len(texts), max(map(len, texts))
        response_ids = torch.zeros((B, T), dtype=torch.long)
        response_mask = torch.zeros((B, T), dtype=torch.long)
        for r, text in enumerate(texts):
            response_ids[r, : len(text)] = torch.tensor([ord(c) for c in text])
            response_mask[r, : len(text)] = 1
        return RolloutBatch(
            prompt_ids=torch.ones((B, 2), dtype=torch.long),
            prompt_mask=torch.ones((B, 2), dtype=torch.long),
            response_ids=response_ids,
            response_mask=response_mask,
            sampling_logprobs=torch.zeros((B, T)),
            truncated=torch.zeros(B, dtype=torch.bool),
            prompt_index=torch.arange(B) // K,
            texts=texts,
            prompt_texts=[prompts[r // K] for r in range(B)],
            pad_id=0,
        )


class PlainTokenizer:
    """What evaluation needs of a tokenizer: a chat template that returns the user message."""

    chat_template = "plain"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return messages[-1]["content"]


def config(*extra: str):
    return load_config(
        None,
        [
            "train.tensorboard=false",
            "verify.workers=0",
            "rollout.n=2",
            "rollout.prompts_per_step=4",
            "rollout.oversample=2.0",  # one round of all 8 rows: rank 0 samples rows 0-3, rank 1 rows 4-7
            "rollout.max_rounds=1",
            "filter.enabled=false",
            "data.shuffle=false",
            "train.eval_n=2",
            "train.eval_temperature=1.0",
            "rollout.max_new_tokens=16",
            *extra,
        ],
    )


def collect_once(dist=None) -> dict[str, float]:
    """One step's rollout metrics from the scripted generator on ROWS (all 8 rows in one round)."""
    from iprime.train import distributed as D

    cfg = config()
    dist = dist or D.DistContext()
    scorer = RolloutScorer(cfg, exact_verifier)
    collector = RolloutCollector(
        cfg,
        dist,
        torch.device("cpu"),
        ScriptedGenerator(),
        ROWS,
        [r["prompt"] for r in ROWS],
        [r["answer"] for r in ROWS],
        scorer,
    )
    _, stats = collector.collect(0)
    return stats


def group_keys(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith(("rollout/acc/", "rollout/count/", "eval/mixed/"))}


# ------------------------------------------------------------------ the tally


def test_row_labels_read_nested_fields_and_skip_missing_ones():
    assert row_label({"ability": "math"}, "ability") == "math"
    assert row_label({"extra_info": {"kind": 3}}, "extra_info.kind") == "3"
    assert row_label({"prompt": "x"}, "ability") is None
    assert row_label({"ability": None}, "ability") is None and row_label({"ability": ""}, "ability") is None


def test_group_tally_by_hand_on_a_mixed_batch():
    tally = GroupTally.for_rows(ROWS)
    assert tally.names == ["code", "math"] + [f"source/{s}" for s in sorted(set(SOURCES))]
    per_sample_rows = [row for row in ROWS for _ in range(2)]
    scores = [float(k < RIGHT[i]) for i in range(8) for k in range(2)]
    tally.add(per_sample_rows, scores)
    assert tally.metrics("rollout") == EXPECTED
    # partial credit counts as its score (a code row passing 2 of 3 tests)
    partial = GroupTally.for_rows(ROWS[4:6])
    partial.add([ROWS[4], ROWS[5], ROWS[5]], [2 / 3, 0.0, 1.0])
    assert partial.metrics("x") == {
        "x/acc/code": pytest.approx(5 / 9),
        "x/count/code": 3.0,
        "x/acc/source/apps": pytest.approx(5 / 9),
        "x/count/source/apps": 3.0,
    }


def test_sources_are_left_out_when_there_are_many_and_rows_without_labels_count_nowhere():
    many = [{"ability": "math", "data_source": f"s{i}"} for i in range(MAX_SOURCE_GROUPS + 1)]
    assert GroupTally.for_rows(many).names == ["math"]
    assert len(GroupTally.for_rows(many[:MAX_SOURCE_GROUPS]).names) == 1 + MAX_SOURCE_GROUPS
    tally = GroupTally.for_rows([{"ability": "math"}, {"prompt": "no labels"}])
    tally.add([{"ability": "math"}, {"prompt": "no labels"}, {"ability": "math"}], [1.0, 1.0, 0.0])
    assert tally.metrics("r") == {"r/acc/math": 0.5, "r/count/math": 2.0}
    assert GroupTally.for_rows([{"prompt": "x", "answer": "1"}]).metrics("r") == {}  # unlabelled rows: no keys


def test_a_tally_refuses_rows_it_was_not_made_for_and_sums_of_another_shape():
    tally = GroupTally.for_rows([{"ability": "math", "data_source": "a"}])
    with pytest.raises(ValueError, match="'code' is not one of this tally's groups"):
        tally.add([{"ability": "code"}], [1.0])
    with pytest.raises(ValueError, match="'source/b' is not one"):
        tally.add([{"ability": "math", "data_source": "b"}], [1.0])
    with pytest.raises(ValueError, match="2 rows for 1 scores"):
        tally.add([{"ability": "math"}] * 2, [1.0])
    with pytest.raises(ValueError, match="3 sums for 2 groups"):
        tally.with_sums([1.0, 2.0, 3.0])


def test_sums_from_ranks_that_saw_different_groups_add_up():
    """What all-reducing :meth:`GroupTally.as_list` computes: rank 0 saw only math rows, rank 1 only code."""
    rank0, rank1 = GroupTally.for_rows(ROWS), GroupTally.for_rows(ROWS)
    rank0.add([row for row in ROWS[:4] for _ in range(2)], [float(k < RIGHT[i]) for i in range(4) for k in range(2)])
    rank1.add([row for row in ROWS[4:] for _ in range(2)], [float(k < RIGHT[i]) for i in range(4, 8) for k in range(2)])
    assert rank0.metrics("rollout").keys() < EXPECTED.keys()  # each rank alone has only its groups
    total = [a + b for a, b in zip(rank0.as_list(), rank1.as_list())]
    assert rank0.with_sums(total).metrics("rollout") == EXPECTED


# ------------------------------------------------------------------ a training step and evaluation


def test_a_step_logs_accuracy_by_ability_and_source_before_the_filter():
    stats = collect_once()
    assert group_keys(stats) == EXPECTED
    assert stats["rollout/acc_before_filter"] == (4 + 5) / 16


def test_group_stats_follow_the_configured_keys():
    batch = ScriptedGenerator().generate(["question 0", "question 4"], SamplingParams(n=2))
    batch.tensors["outcome"] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    batch.meta["row"] = [0, 0, 1, 1]
    rows = [{"meta": {"kind": "math"}, "origin": "x"}, {"meta": {"kind": "code"}, "origin": "y"}]
    assert group_stats([batch], rows, "meta.kind", "origin") == {
        "rollout/acc/code": 1.0,
        "rollout/count/code": 2.0,
        "rollout/acc/math": 1.0,
        "rollout/count/math": 2.0,
        "rollout/acc/source/x": 1.0,
        "rollout/count/source/x": 2.0,
        "rollout/acc/source/y": 1.0,
        "rollout/count/source/y": 2.0,
    }
    assert group_stats([], rows, "ability", "data_source") == {}  # a step served from the buffer


def eval_mixed(dist=None) -> dict[str, float]:
    """``eval/mixed/...`` of ROWS as an eval set: 2 samples per row, 4 rows per chunk."""
    cfg = config("rollout.oversample=1.0")  # a chunk: 4 prompts x 2 samples = rows 0-3 (math), then 4-7 (code)
    eval_set = EvalSet("mixed", [r["prompt"] for r in ROWS], [r["answer"] for r in ROWS], ROWS)
    scorer = RolloutScorer(cfg, exact_verifier)
    return run_evals(ScriptedGenerator(), PlainTokenizer(), [eval_set], scorer, cfg, dist=dist)


def test_evaluation_reports_each_ability_and_source():
    metrics = eval_mixed()
    assert metrics["eval/mixed/acc"] == 9 / 16
    want = {k.replace("rollout/", "eval/mixed/"): v for k, v in EXPECTED.items()}
    assert {k: v for k, v in metrics.items() if "/acc/" in k or "/count/" in k} == want


# ------------------------------------------------------------------ torchrun: 2 ranks


def run_rank(out_file: str) -> None:
    """One rank: a step's rollout metrics and an evaluation, written to ``out_file.<rank>``."""
    from iprime.train import distributed as D

    torch.set_num_threads(1)
    ctx, _ = D.init_distributed("cpu")
    metrics = {**collect_once(ctx), **eval_mixed(ctx)}
    Path(f"{out_file}.{ctx.rank}").write_text(json.dumps(group_keys(metrics)))


@pytest.mark.slow  # starts two processes
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_ranks_log_the_global_numbers_under_the_same_names(tmp_path):
    """Rank 0 samples and evaluates only the math rows, rank 1 only the code rows: both log every
    group, with the numbers of all rows."""
    out = tmp_path / "metrics"
    launch_ranks([str(out)], script=Path(__file__))
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]
    want = {**EXPECTED, **{k.replace("rollout/", "eval/mixed/"): v for k, v in EXPECTED.items()}}
    for metrics in ranks:
        assert {k: v for k, v in metrics.items() if "/acc/" in k or "/count/" in k} == want


if __name__ == "__main__":
    run_rank(sys.argv[1])
