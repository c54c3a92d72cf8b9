"""What a run prints and logs (issue 15): plain progress lines when there is no terminal, true
numbers on buffer-served steps, SFT lines in the same style, TensorBoard without duplicated
steps after a resume, wandb settings, and sample rows in TensorBoard."""

from __future__ import annotations

import io
import json
import re
import sys
import types

import pytest

from iprime.config import TrainConfig
from iprime.progress import format_metrics, format_step_line, progress_bar, resolve_mode
from iprime.train.logging import MetricsLogger, samples_markdown

# Metrics of real PRIME steps (a tiny run, trimmed to the keys a progress line could show): a step
# that generated its rollouts, and the next one, served entirely from the buffer, which has no
# rollout/* accuracy or length because it generated nothing.
GENERATED_STEP = {
    "step": 1,
    "time/generate": 0.0518000120009674,
    "generated_tokens": 126,
    "rollout/rounds": 1,
    "rollout/acc_before_filter": 0.625,
    "rollout/kept_group_frac": 1.0,
    "rollout/response_length": 7.875,
    "rollout/truncated_frac": 0.9375,
    "rollout/buffer_groups": 2,
    "rollout/acc_after_filter": 0.75,
    "lr": 0.001,
    "batch/size": 8,
    "batch/acc": 0.75,
    "batch/response_length": 8.0,
    "prm/pairwise_acc": 0.6666666666666666,
    "prm/loss": 0.6931471228599548,
    "prm/skipped": 0.0,
    "policy/kl_ref": 1.0658141036401503e-14,
    "policy/pg_loss": -5.3085386753082275e-08,
    "policy/skipped_updates": 0,
    "time/step": 0.16317180499936512,
    "tokens_per_s": 772.1922301496281,
}
BUFFER_STEP = {
    "step": 2,
    "time/generate": 0.0,
    "generated_tokens": 0,
    "rollout/rounds": 0,
    "rollout/buffer_groups": 0,
    "rollout/acc_after_filter": 0.75,
    "lr": 0.001,
    "batch/size": 8,
    "batch/acc": 0.75,
    "batch/response_length": 37.25,
    "prm/pairwise_acc": 1.0,
    "prm/loss": 0.6233474612236023,
    "prm/skipped": 0.0,
    "policy/kl_ref": 0.019789122510701418,
    "policy/pg_loss": -0.00840854924172163,
    "policy/skipped_updates": 0,
    "time/step": 0.10813852800129098,
    "tokens_per_s": 0.0,
}
EMPTY_STEP = {
    "step": 3,
    "rollout/rounds": 3,
    "rollout/acc_before_filter": 0.0,
    "rollout/kept_group_frac": 0.0,
    "rollout/response_length": 8.0,
    "lr": 0.001,
    "skipped": "no group passed the filter",
    "empty": "every reward was 0",
    "time/step": 0.1635520939998969,
}
SFT_RECORD = {"step": 20, "loss": 1.234567890123, "lr": 1e-5, "tokens_per_s": 812.3456, "elapsed_s": 6.7}
LONG_FLOAT = re.compile(r"\d\.\d{5,}")


# --------------------------------------------------------------------------- the line itself
def test_a_generated_step_line_has_fixed_decimals():
    line = format_step_line(1, 10, GENERATED_STEP, 6.4)
    assert line == (
        "step 1/10  acc 0.62  kept 1.00  len 8  prm_acc 0.67  pg_loss 0.0000  prm_loss 0.6931  kl 0.0000"
        "  lr 1.0e-03  0.2s/step  772 tok/s  elapsed 0:00:06"
    )
    assert not LONG_FLOAT.search(line)


def test_a_buffer_served_step_shows_the_batch_numbers_not_zeros():
    line = format_step_line(2, 10, BUFFER_STEP, 3725.0)
    assert line.startswith("step 2/10  acc 0.75 (buffer)  len 37  prm_acc 1.00  pg_loss -0.0084")
    assert "kept" not in line and "tok/s" not in line  # nothing was sampled or filtered: no made-up 0
    assert "acc 0.00" not in line and "len 0 " not in line
    assert line.endswith("elapsed 1:02:05")


def test_empty_skipped_and_rejected_steps_say_why():
    line = format_step_line(3, 10, EMPTY_STEP, 0.0)
    assert "acc 0.00  kept 0.00" in line  # a real 0 is shown
    assert "[EMPTY STEP: every reward was 0]" in line
    assert "[skipped: no group passed the filter]" in line
    same_reason = {**EMPTY_STEP, "empty": "no group passed the filter"}
    assert format_step_line(3, 10, same_reason, 0.0).count("no group passed the filter") == 1
    rejected = {**BUFFER_STEP, "guard/rejected": "policy/grad_norm 812 is 40x its median", "prm/skipped": 1.0}
    text = format_metrics(rejected)
    assert "[guard rejected: policy/grad_norm 812 is 40x its median]" in text
    assert "[PRM update skipped: non-finite]" in text


def test_eval_results_and_non_finite_values():
    m = {**GENERATED_STEP, "prm/pairwise_acc": float("nan"), "eval/math500/acc": 0.31234, "eval/aime/pass@4": 0.1}
    m["eval/accuracy"] = 0.5  # what PrimeTrainer(eval_fn=...) returning {"accuracy": 0.5} logs
    m["eval/math500/time_s"] = 12.345678  # not a headline number
    m["prm/loss"] = float("inf")
    text = format_metrics(m)
    # no (correct, wrong) pair: no pairwise accuracy to show; a non-finite loss is shown
    assert "prm_acc" not in text and "prm_loss inf" in text
    assert "math500/acc 0.312" in text and "aime/pass@4 0.100" in text
    assert "  accuracy 0.500" in text
    assert "time_s" not in text


def test_an_sft_record_reads_like_a_training_line():
    assert format_step_line(20, 100, SFT_RECORD, 6.7) == (
        "step 20/100  loss 1.2346  lr 1.0e-05  812 tok/s  elapsed 0:00:06"
    )


# --------------------------------------------------------------------------- modes
class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_lines_without_a_terminal_and_the_bar_on_one(monkeypatch):
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_mode("auto", io.StringIO()) == "lines"
    assert resolve_mode("auto", FakeTerminal()) == "bar"
    assert resolve_mode(True, io.StringIO()) == "lines" and resolve_mode(False) == "none"
    assert resolve_mode("bar", io.StringIO()) == "bar"
    with pytest.raises(ValueError, match="progress must be one of"):
        resolve_mode("fancy")


def test_lines_mode_prints_one_plain_line_per_step():
    out = io.StringIO()
    steps = [GENERATED_STEP, BUFFER_STEP, EMPTY_STEP]
    with progress_bar("lines", 3, 0, stream=out) as advance:
        for step, m in enumerate(steps, 1):
            advance(step, m)
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["PRIME step 1/3", "PRIME step 2/3", "PRIME step 3/3"]
    assert "\x1b" not in out.getvalue()
    assert "acc 0.75 (buffer)" in lines[1] and "[EMPTY STEP: every reward was 0]" in lines[2]


def test_lines_mode_throttles_but_keeps_flagged_and_last_steps():
    out = io.StringIO()
    with progress_bar("lines", 6, 0, every_s=3600, stream=out) as advance:
        for step in range(1, 7):
            advance(step, EMPTY_STEP if step == 4 else GENERATED_STEP)
    printed = [int(re.match(r"PRIME step (\d+)/6", line).group(1)) for line in out.getvalue().splitlines()]
    assert printed == [1, 4, 6]


def test_lines_default_to_stdout_and_none_prints_nothing(capsys):
    with progress_bar("lines", 1, 0, label="SFT") as advance:
        advance(1, SFT_RECORD)
    with progress_bar("none", 1, 0) as advance:
        advance(1, SFT_RECORD)
    with progress_bar(False, 1, 0) as advance:
        advance(1, SFT_RECORD)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"SFT {format_step_line(1, 1, SFT_RECORD, 0.0)}"]
    assert captured.err == ""


def test_the_bar_keeps_bracketed_reasons_literal():
    out = io.StringIO()
    with progress_bar("bar", 3, 0, stream=out) as advance:
        advance(3, EMPTY_STEP)
    bar_line, *info = out.getvalue().splitlines()
    assert bar_line.startswith("PRIME ") and " 3/3 " in bar_line
    # the metrics go below the bar, wrapped at the console's width, brackets kept (not rich markup)
    assert " ".join(info).replace("  ", " ") == format_metrics(EMPTY_STEP).replace("  ", " ")


# --------------------------------------------------------------------------- SFT
@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from iprime.models import load_model, load_tokenizer

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def test_run_sft_prints_lines_and_still_calls_log(tiny, capsys):
    import torch

    from iprime.train.sft import SFTConfig, run_sft

    torch.set_num_threads(1)
    model, tok = tiny
    rows = [{"prompt": f"Compute {i} + 1.", "response": f"\\boxed{{{i + 1}}}"} for i in range(8)]
    records = []
    cfg = SFTConfig(lr=1e-3, max_steps=4, batch_size=4, log_every=2, warmup_steps=1)
    run_sft(model, tok, rows, cfg, log=records.append, progress="lines")
    lines = capsys.readouterr().out.splitlines()
    assert [r["step"] for r in records] == [2, 4]
    assert len(lines) == 2
    for line, record in zip(lines, records):
        assert re.fullmatch(
            rf"SFT step {record['step']}/4  loss {record['loss']:.4f}  lr \d\.\de-\d\d  \d+ tok/s"
            r"  elapsed \d:\d\d:\d\d",
            line,
        ), line
    run_sft(model, tok, rows, cfg)  # progress defaults to "none"
    assert capsys.readouterr().out == ""


def test_sft_max_length_truncates_and_counts_and_refuses_a_prompt_that_fills_it(tiny):
    from iprime.data.chat import render_prompt
    from iprime.train.sft import SFTConfig, encode_sft_example, run_sft

    model, tok = tiny
    row = {"prompt": "Compute 3 + 4.", "response": "3 + 4 = 7. " * 20}
    full, _, cut = encode_sft_example(tok, row, max_length=10_000)
    assert not cut
    prompt_len = len(tok(render_prompt(tok, row["prompt"]), add_special_tokens=False)["input_ids"])
    limit = prompt_len + 5
    ids, labels, cut = encode_sft_example(tok, row, max_length=limit)
    assert cut and len(ids) == len(labels) == limit and ids == full[:limit]
    result = run_sft(model, tok, [row, {"prompt": "Hi.", "response": "7"}], SFTConfig(max_steps=1, max_length=limit))
    assert result["truncated"] == 1
    with pytest.raises(ValueError, match=r"row 0: prompt alone is \d+ tokens, >= max_length"):
        run_sft(model, tok, [row], SFTConfig(max_steps=1, max_length=prompt_len))


def test_sft_default_lr_is_a_fine_tuning_rate():
    from iprime.train.sft import SFTConfig

    assert SFTConfig().lr == 1e-5


# --------------------------------------------------------------------------- metrics sinks
def _scalar_steps(tb_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _write(logger: MetricsLogger, steps) -> None:
    for s in steps:
        logger.log({"step": s, "loss": float(s), "acc": s / 10})
    logger.close()


def test_a_resumed_run_has_each_step_once_in_tensorboard_and_metrics(tmp_path):
    """Steps 1..6 logged, a checkpoint at 4, the resumed run logs 5..8 again (other values)."""
    out = tmp_path
    cfg = TrainConfig(out_dir=str(out))
    _write(MetricsLogger.from_config(out, cfg, {}), range(1, 7))
    logger = MetricsLogger.from_config(out, cfg, {}, start_step=4)
    for s in range(5, 9):
        logger.log({"step": s, "loss": 10.0 * s, "acc": s / 10})
    logger.close()
    for tag in ("loss", "acc"):
        assert [step for step, _ in _scalar_steps(out / "tensorboard", tag)] == list(range(1, 9))
    assert _scalar_steps(out / "tensorboard", "loss")[4:] == [(5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0)]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))


def test_without_a_start_step_tensorboard_would_show_steps_twice(tmp_path):
    """The control for the test above: appending without purging duplicates steps 5 and 6."""
    _write(MetricsLogger(tmp_path), range(1, 7))
    _write(MetricsLogger(tmp_path), range(5, 9))
    assert [step for step, _ in _scalar_steps(tmp_path / "tensorboard", "loss")] == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]


def test_a_fresh_run_into_a_used_folder_starts_its_files_over(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path))
    _write(MetricsLogger.from_config(tmp_path, cfg, {}), range(1, 7))
    _write(MetricsLogger.from_config(tmp_path, cfg, {}), range(1, 3))
    assert [step for step, _ in _scalar_steps(tmp_path / "tensorboard", "loss")] == [1, 2]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


class FakeWandb:
    """Stands in for the ``wandb`` module: records ``init``'s arguments and logged steps."""

    def __init__(self) -> None:
        self.inits: list[dict] = []
        self.logged: list[int] = []
        self.finished = 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, data, step):
                fake.logged.append(step)

            def finish(self):
                fake.finished += 1

        return Run()


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    module = types.ModuleType("wandb")
    module.init = fake.init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return fake


def test_wandb_settings_come_from_the_config_and_a_resume_continues_the_run(tmp_path, fake_wandb):
    out = tmp_path / "my-run"
    cfg = TrainConfig(
        out_dir=str(out),
        tensorboard=False,
        wandb=True,
        wandb_project="proj",
        wandb_entity="team",
        wandb_tags=["a", "b"],
    )
    _write(MetricsLogger.from_config(out, cfg, {"train": {"steps": 8}}), [1, 2])
    _write(MetricsLogger.from_config(out, cfg, {"train": {"steps": 8}}, start_step=2), [3])
    first, resumed = fake_wandb.inits
    assert first["project"] == "proj" and first["entity"] == "team" and first["tags"] == ["a", "b"]
    assert first["name"] == "my-run"  # the out_dir's last part by default
    assert first["config"] == {"train": {"steps": 8}} and first["resume"] == "allow"
    assert first["id"] == (out / "wandb_run_id").read_text().strip() == resumed["id"]
    assert fake_wandb.logged == [1, 2, 3] and fake_wandb.finished == 2

    named = TrainConfig(out_dir=str(out), tensorboard=False, wandb=True, wandb_run_name="baseline")
    _write(MetricsLogger.from_config(out, named, {}), [1])  # a fresh run: a new wandb run
    assert fake_wandb.inits[2]["name"] == "baseline" and fake_wandb.inits[2]["id"] != first["id"]


# --------------------------------------------------------------------------- samples
SAMPLES = [
    {
        "group": 0,
        "prompt": "Compute 3 + 4.",
        "reference": "7",
        "response": "3 + 4 = 8\nThe answer is \\boxed{8}",
        "score": 0.0,
        "reason": "expected 7, got 8",
        "token_rewards": [["3", 0.01], [" +", 0.02], [" 4", -0.01], [" =", 0.0], [" 8", -0.42]],
    },
    {"group": 0, "response": "```python\nprint(7)\n```", "score": 1.0, "lowest_tokens": [[4, " 7", -0.1]]},
]


def test_samples_rows_stay_one_json_object_each_and_show_in_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path)
    logger.log_samples(10, SAMPLES)
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 10]
    assert rows[0] == {"step": 10, **SAMPLES[0]} and list(rows[0])[0] == "step"
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("samples/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    for part in ("Compute 3 + 4.", "reference:", "7", "score 0.0", "expected 7, got 8", "score 1.0"):
        assert part in text, part
    assert "most negative PRM tokens: `' 8'` @4 -0.420, `' 4'` @2 -0.010\n" in text  # no positive rewards
    assert "most negative PRM tokens: `' 7'` @4 -0.100" in text
    assert "````\n```python" in text  # a response with a fence inside keeps its own fence


def test_samples_markdown_tolerates_missing_keys():
    text = samples_markdown([{}, {"response": "x", "token_rewards": [["a", None]]}])
    assert "group ? · sample 0 · score ?" in text and "response:" in text
    assert "most negative" not in text


def test_resume_cuts_samples_back_to_the_checkpoint(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), tensorboard=False)
    logger = MetricsLogger.from_config(tmp_path, cfg, {})
    for step in (2, 4, 6):
        logger.log_samples(step, SAMPLES[1:])
    logger.close()
    MetricsLogger.from_config(tmp_path, cfg, {}, start_step=4).close()
    assert [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()] == [2, 4]
