"""Training on data as users bring it: verl / Eurus-2-RL-Data rows (chat prompts, nested
``reward_model.ground_truth``, math and code mixed) in parquet and jsonl, scored per row in the
verifier pool; broken rows refused with their location; runs that would train blind stop."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from iprime.config import load_config
from iprime.data.chat import render_prompt
from iprime.models import load_tokenizer
from iprime.rollout import GeneratorBase, RolloutBatch
from iprime.train.prime import EmptyStepsError, PrimeTrainer

SYSTEM = {"role": "system", "content": "Think step by step, then give the final answer."}
ADD_TESTS = {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
READ_TWO = "```python\na, b = map(int, input().split())\n"
RIGHT = {"math": "So the answer is \\boxed{{{answer}}}.", "code": READ_TWO + "print(a + b)\n```"}
WRONG = {"math": "So the answer is \\boxed{{{answer}1}}.", "code": READ_TWO + "print(a - b)\n```"}


def eurus_rows(n_math: int = 4, n_code: int = 4) -> list[dict]:
    """Rows shaped like the PRIME repository's Eurus-2-RL-Data parquet."""
    rows = []
    for i in range(n_math):
        rows.append(
            {
                "data_source": "numina_synthetic_math",
                "prompt": [SYSTEM, {"role": "user", "content": f"What is {i} + {i + 2}?"}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(2 * i + 2)},
                "extra_info": {"split": "train", "index": i},
            }
        )
    for i in range(n_code):
        rows.append(
            {
                "data_source": "codecontests",
                "prompt": [SYSTEM, {"role": "user", "content": f"Read two integers and print their sum. ({i})"}],
                "ability": "code",
                "reward_model": {"style": "rule", "ground_truth": json.dumps(ADD_TESTS)},
                "extra_info": {"split": "train", "index": n_math + i},
            }
        )
    return rows


def write_parquet(rows: list[dict], path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(rows: list[dict], path):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ScriptedGenerator(GeneratorBase):
    """Answers every prompt with K scripted responses, right and wrong alternating, so the
    expected score of each sample is known (the tiny model itself never solves anything)."""

    def __init__(self, tokenizer, rows: list[dict]):
        self.tok = tokenizer
        self.script = {}
        for row in rows:
            kind, gold = row["ability"], row["reward_model"]["ground_truth"]
            text = render_prompt(tokenizer, row["prompt"])
            self.script[text] = [RIGHT[kind].format(answer=gold), WRONG[kind].format(answer=gold)]

    def generate(self, prompts, params) -> RolloutBatch:
        K, tok = params.n, self.tok
        encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        texts = [self.script[p][k % 2] for p in prompts for k in range(K)]
        responses = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
        B, P, T, pad = len(texts), max(map(len, encoded)), max(map(len, responses)), int(tok.pad_token_id)
        prompt_ids = torch.full((B, P), pad)
        prompt_mask = torch.zeros((B, P), dtype=torch.long)
        response_ids = torch.full((B, T), pad)
        response_mask = torch.zeros((B, T), dtype=torch.long)
        for r in range(B):
            p, y = encoded[r // K], responses[r]
            prompt_ids[r, P - len(p) :], prompt_mask[r, P - len(p) :] = torch.tensor(p), 1
            response_ids[r, : len(y)], response_mask[r, : len(y)] = torch.tensor(y), 1
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            sampling_logprobs=torch.zeros((B, T)),
            truncated=torch.zeros(B, dtype=torch.bool),
            prompt_index=torch.arange(B) // K,
            texts=texts,
            prompt_texts=[prompts[r // K] for r in range(B)],
            pad_id=pad,
            tensors={},
        )


def config(tmp_path, *extra: str):
    return load_config(
        None,
        [
            f"train.out_dir={tmp_path / 'run'}",
            "train.steps=2",
            "train.save_every=0",
            "train.tensorboard=false",
            "train.log_samples_every=0",
            "rollout.n=4",
            "rollout.prompts_per_step=4",
            "rollout.oversample=1.0",
            "rollout.max_rounds=1",
            "rollout.max_new_tokens=48",
            "optim.micro_batch_size=8",
            "optim.mini_batch_size=16",
            "prm.micro_batch_size=8",
            "verify.workers=1",
            "verify.timeout_s=20",
            "data.shuffle=false",
            *extra,
        ],
    )


@pytest.mark.sandbox  # the code rows run in the sandbox
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_mixed_math_and_code_rows_train_with_per_row_rewards(tiny_model_dir, tmp_path, fmt):
    from iprime.data.sources import read_records

    rows = eurus_rows()
    path = (write_parquet if fmt == "parquet" else write_jsonl)(rows, tmp_path / f"train.{fmt}")
    tok = load_tokenizer(tiny_model_dir)
    # no data options at all: the reference is found at reward_model.ground_truth, the verifier by ability
    trainer = PrimeTrainer(
        str(tiny_model_dir), config(tmp_path), read_records(path), generator=ScriptedGenerator(tok, rows)
    )
    assert trainer.data.reference_key == "reward_model.ground_truth"
    try:
        for step in range(2):  # step 0: the 4 math rows, step 1: the 4 code rows (no shuffle)
            batch, stats = trainer.collector.generate_round(step, 0)
            kinds = {rows[r]["ability"] for r in batch.meta["row"]}
            assert kinds == {"math" if step == 0 else "code"}
            # right responses score 1 and wrong ones 0, code and math alike
            assert batch.tensors["outcome"].tolist() == [1.0, 0.0] * 8
            assert stats["verify/timeouts"] == 0 and stats["verify/failed"] == 0
        trainer.collector.stream.epoch = trainer.collector.stream.position = 0
        history = trainer.train(progress=False)
    finally:
        trainer.scorer.close()
    assert [m["batch/acc"] for m in history] == [0.5, 0.5]
    # accuracy by ability and source (rows unshuffled: step 1 samples the math rows, step 2 the code rows)
    assert {k: v for k, v in history[0].items() if k.startswith(("rollout/acc/", "rollout/count/"))} == {
        "rollout/acc/math": 0.5,
        "rollout/count/math": 16.0,
        "rollout/acc/source/numina_synthetic_math": 0.5,
        "rollout/count/source/numina_synthetic_math": 16.0,
    }
    assert history[1]["rollout/acc/code"] == 0.5 and history[1]["rollout/count/source/codecontests"] == 16.0
    assert all(m["policy/updates"] >= 1 and "empty" not in m for m in history)


def test_broken_rows_are_refused_with_their_lines(tiny_model_dir, tmp_path):
    from iprime.data.sources import DataError, read_records

    rows = eurus_rows(2, 2)
    rows.insert(1, {**rows[0], "reward_model": {"style": "rule", "ground_truth": {"answer": "4"}}})  # a dict
    rows.insert(4, {**rows[3], "reward_model": {"style": "rule", "ground_truth": "{not json"}})  # bad tests
    path = write_jsonl(rows, tmp_path / "train.jsonl")
    with pytest.raises(DataError) as err:
        PrimeTrainer(str(tiny_model_dir), config(tmp_path), read_records(path))
    message = str(err.value)
    assert "train.jsonl line 2" in message and "train.jsonl line 5" in message
    assert "line 1:" not in message and "line 3" not in message


def test_a_nested_reward_model_as_the_reference_cannot_train_on_silent_zeros(tiny_model_dir, tmp_path):
    from iprime.data.sources import DataError, read_records

    path = write_parquet(eurus_rows(3, 0), tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"reward_model\.ground_truth"):  # the error says what to set
        PrimeTrainer(str(tiny_model_dir), config(tmp_path, "data.reference_key=reward_model"), read_records(path))


def test_steps_with_nothing_to_learn_stop_the_run_and_say_what_to_check(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"Compute {i} + 1.", "answer": str(i + 1)} for i in range(8)]
    cfg = config(
        tmp_path,
        "train.steps=10",
        "train.max_empty_steps=3",
        "verify.workers=0",
        "filter.enabled=false",
        "rollout.max_new_tokens=4",
        "data.verifier=arithmetic",
    )
    trainer = PrimeTrainer(str(tiny_model_dir), cfg, rows)  # the untrained tiny model never answers
    with pytest.raises(EmptyStepsError, match="3 steps in a row") as err:
        trainer.train(progress=False)
    assert "data.reference_key" in str(err.value) and "iprime data check" in str(err.value)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["empty"] for m in lines] == ["every reward was 0"] * 3


def _iprime(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "iprime", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_refuses_a_100mb_line_quickly(tiny_model_dir, tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("w") as fh:
        fh.write(json.dumps({"prompt": "Compute 1 + 1.", "answer": "2"}) + "\n")
        fh.write('{"prompt": "')
        chunk = "x" * (1 << 20)
        for _ in range(100):
            fh.write(chunk)
        fh.write('", "answer": "2"}\n')
    from iprime.data.sources import DataError, read_records

    start = time.monotonic()  # refused at the size limit: the line is neither parsed nor tokenized
    with pytest.raises(DataError, match="huge.jsonl line 2"):
        read_records(path)
    assert time.monotonic() - start < 10
    proc = _iprime(
        "train", f"model.policy={tiny_model_dir}", f"data.train_path={path}", f"train.out_dir={tmp_path / 'run'}"
    )
    assert proc.returncode == 2 and "max_row_bytes" in proc.stdout, proc.stdout + proc.stderr


def test_cli_reports_non_utf8_bytes_with_file_and_line(tiny_model_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "Compute 1 + 1.", "answer": "2"}\n{"prompt": "Compute \xff + 1.", "answer": "2"}\n')
    proc = _iprime(
        "train", f"model.policy={tiny_model_dir}", f"data.train_path={path}", f"train.out_dir={tmp_path / 'run'}"
    )
    assert proc.returncode == 2 and "bad.jsonl line 2" in proc.stdout, proc.stdout + proc.stderr


def test_prompts_longer_than_the_context_are_dropped_or_refused(tiny_model_dir, tmp_path):
    from iprime.data.sources import DataError

    rows = [{"prompt": f"Compute {i} + 1.", "answer": str(i + 1)} for i in range(6)]
    rows.append({"prompt": "Compute " + " + ".join(["1"] * 400) + ".", "answer": "400"})  # > 512 tokens
    with pytest.warns(UserWarning, match="1 rows have prompts over"):
        trainer = PrimeTrainer(str(tiny_model_dir), config(tmp_path, "data.verifier=arithmetic"), rows)
    assert len(trainer.data.rows) == 6
    with pytest.raises(DataError, match="train_dataset row 6"):
        PrimeTrainer(
            str(tiny_model_dir), config(tmp_path, "data.verifier=arithmetic", "data.overlong_prompts=error"), rows
        )
