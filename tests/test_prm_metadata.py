"""PRM metadata: the beta / reference / step delimiter saved beside a PRM, and the commands that
read them (prm score, prm rerank, eval --prm) without flags."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from iprime.cli import app
from iprime.prm.metadata import (
    DEFAULT_BETA,
    DEFAULT_STEP_DELIMITER,
    METADATA_FILE,
    PRMMetadata,
    load_prm_metadata,
    resolve_prm_settings,
    save_prm_metadata,
)


def test_defaults_are_the_configs_defaults():
    from iprime.config import PRMConfig
    from iprime.eval.runner import EvalConfig
    from iprime.prm.offline import OfflinePRMConfig

    assert DEFAULT_BETA == 0.05 and DEFAULT_STEP_DELIMITER == "\n"
    assert PRMConfig().beta == OfflinePRMConfig().beta == DEFAULT_BETA
    assert PRMConfig().step_delimiter == DEFAULT_STEP_DELIMITER
    assert EvalConfig(model="m", benchmarks=["x"], out="o").beta == DEFAULT_BETA


def test_save_load_round_trip(tmp_path):
    assert load_prm_metadata(tmp_path) is None  # no file: nothing saved
    meta = PRMMetadata(beta=0.5, reference="/models/sft", step_delimiter="\n\n", loss="dpo")
    path = save_prm_metadata(tmp_path / "prm", meta)
    assert path == tmp_path / "prm" / METADATA_FILE
    assert json.loads(path.read_text()) == {
        "beta": 0.5,
        "reference": "/models/sft",
        "step_delimiter": "\n\n",
        "granularity": "token",
        "loss": "dpo",
    }
    assert load_prm_metadata(tmp_path / "prm") == meta
    assert sorted(p.name for p in (tmp_path / "prm").iterdir()) == [METADATA_FILE]  # no temporary file left
    with pytest.raises(ValueError, match="beta"):
        save_prm_metadata(tmp_path, PRMMetadata(beta=-1.0, reference=None, step_delimiter="\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"beta": 0.5, "reference": null, "step_delimiter": "\\n", "temperature": 1}', "unknown key 'temperature'"),
        ('{"beta": 0.5, "reference": null}', "missing key 'step_delimiter'"),
        ('{"beta": "0.5", "reference": null, "step_delimiter": "\\n"}', "'beta' must be a number > 0"),
        ('{"beta": true, "reference": null, "step_delimiter": "\\n"}', "'beta' must be a number > 0"),
        ('{"beta": 0.5, "reference": 3, "step_delimiter": "\\n"}', "'reference' must be a string or null"),
        ('{"beta": 0.5, "reference": null, "step_delimiter": null}', "'step_delimiter' must be a string"),
        ('{"beta": 0.5, "reference": null, "step_delimiter": "\\n", "loss": "mse"}', "'loss' must be one of"),
    ],
)
def test_malformed_metadata_is_a_clear_error(tmp_path, text, message):
    (tmp_path / METADATA_FILE).write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_prm_metadata(tmp_path)
    assert str(tmp_path / METADATA_FILE) in str(err.value)


def test_explicit_values_win_then_saved_then_defaults(tmp_path):
    assert resolve_prm_settings(tmp_path) == PRMMetadata(DEFAULT_BETA, None, DEFAULT_STEP_DELIMITER)
    assert resolve_prm_settings("org/hub-model", beta=0.3).beta == 0.3  # not a directory: defaults
    save_prm_metadata(tmp_path, PRMMetadata(beta=0.5, reference="ref", step_delimiter="\n\n", granularity="step"))
    assert resolve_prm_settings(tmp_path) == PRMMetadata(0.5, "ref", "\n\n", "step")
    got = resolve_prm_settings(tmp_path, beta=1.0, reference="other", step_delimiter="")
    assert got == PRMMetadata(1.0, "other", "", "step")


# ------------------------------------------------------------------- the commands


def _labelled_rows() -> list[dict]:
    rows = []
    for a, b in [(17, 25), (38, 44), (29, 53)]:
        for value, label in ((a + b, 1), (a + b - 10, 0)):
            rows.append(
                {
                    "prompt_id": f"{a}+{b}",
                    "prompt": f"Compute {a} + {b}.",
                    "response": f"{a} + {b} = {value}\nThe answer is \\boxed{{{value}}}",
                    "label": label,
                }
            )
    return rows


@pytest.fixture(scope="module")
def trained_prm(tmp_path_factory, tiny_model_dir):
    """A PRM trained by ``iprime prm train`` (beta 0.5, one CE step): ``(prm_dir, rows_path)``."""
    tmp = tmp_path_factory.mktemp("prm_meta")
    data = tmp / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _labelled_rows()))
    out = tmp / "prm"
    result = CliRunner().invoke(
        app,
        [
            "prm",
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--beta",
            "0.5",
            "--lr",
            "1e-2",
            "--epochs",
            "1",
            "--batch-size",
            "6",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, data


def test_prm_train_writes_its_metadata(trained_prm, tiny_model_dir):
    prm_dir, _ = trained_prm
    meta = load_prm_metadata(prm_dir)
    assert meta == PRMMetadata(
        beta=0.5, reference=str(tiny_model_dir.resolve()), step_delimiter="\n", granularity="token", loss="ce"
    )


def _score(args, out) -> list[dict]:
    result = CliRunner().invoke(app, ["prm", "score", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "scores.json").read_text())


def test_prm_score_reads_the_metadata(trained_prm, tiny_model_dir, tmp_path):
    prm_dir, data = trained_prm
    base = ["--prm", str(prm_dir), "--data", str(data)]
    implicit = _score(base, tmp_path / "a")
    explicit = _score(base + ["--ref", str(tiny_model_dir), "--beta", "0.5", "--step-delimiter", "\\n"], tmp_path / "b")
    assert implicit == explicit
    assert all(s["beta"] == 0.5 and len(s["step_rewards"]) == 2 for s in implicit)  # "\n" ends the first line
    assert any(abs(s["seq_reward"]) > 1e-4 for s in implicit)  # the PRM moved away from its reference

    # a flag overrides the saved value
    doubled = _score(base + ["--beta", "1.0"], tmp_path / "c")
    assert all(s["beta"] == 1.0 for s in doubled)
    for a, b in zip(implicit, doubled):
        assert b["seq_reward"] == pytest.approx(2 * a["seq_reward"], rel=1e-5, abs=1e-7)
    one_step = _score(base + ["--step-delimiter", ""], tmp_path / "d")
    assert all(len(s["step_rewards"]) == 1 for s in one_step)


def test_prm_score_errors(trained_prm, tiny_model_dir, tmp_path):
    prm_dir, data = trained_prm
    # no metadata and no --ref: nothing names the reference
    result = CliRunner().invoke(
        app, ["prm", "score", "--prm", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "no reference model" in result.output.replace("\n", "")

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(prm_dir, broken)
    (broken / METADATA_FILE).write_text('{"beta": 0.5, "reference": null, "step_delimiter": "\\n", "temp": 1}')
    result = CliRunner().invoke(
        app,
        [
            "prm",
            "score",
            "--prm",
            str(broken),
            "--data",
            str(data),
            "--ref",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "y"),
        ],
    )
    output = result.output.replace("\n", "")
    assert result.exit_code == 2 and METADATA_FILE in output and "unknown key 'temp'" in output


def test_rerank_and_eval_read_the_metadata(trained_prm, tiny_model_dir, tmp_path):
    from iprime.eval.runner import EvalConfig

    prm_dir, data = trained_prm
    picks = []
    for extra, out in (([], tmp_path / "a"), (["--ref", str(tiny_model_dir), "--beta", "0.5"], tmp_path / "b")):
        result = CliRunner().invoke(
            app, ["prm", "rerank", "--prm", str(prm_dir), "--data", str(data), "--out", str(out), *extra]
        )
        assert result.exit_code == 0, result.output
        picks.append((out / "picks.jsonl").read_text())
    assert picks[0] == picks[1]

    cfg = EvalConfig(model="m", benchmarks=["arithmetic"], out="o", prm=str(prm_dir))
    assert (cfg.ref, cfg.beta) == (str(tiny_model_dir.resolve()), 0.5)
    assert EvalConfig(model="m", benchmarks=["arithmetic"], out="o", prm=str(prm_dir), beta=2.0).beta == 2.0
    with pytest.raises(ValueError, match="both prm and ref"):
        EvalConfig(model="m", benchmarks=["arithmetic"], out="o", prm=str(tiny_model_dir))  # no metadata


def test_a_runs_prm_metadata_comes_from_its_config(tmp_path):
    """run_prm_metadata: the one builder of a PRIME run's iprime_prm.json (the trainer's final/
    and iprime export both call it): the PRM settings of the config, the reference by model.reference."""
    from iprime.config import load_config
    from iprime.prm.metadata import run_prm_metadata

    sft = tmp_path / "sft"
    sft.mkdir()
    cfg = load_config(None, ["prm.beta=0.5", "prm.granularity=step", "prm.loss=dpo"])
    meta = run_prm_metadata(cfg, str(sft), tmp_path / "final")
    assert meta == PRMMetadata(0.5, str(sft.resolve()), DEFAULT_STEP_DELIMITER, "step", "dpo")
    assert run_prm_metadata(cfg, "org/sft", tmp_path).reference == "org/sft"  # a hub id is kept
    assert run_prm_metadata(cfg, None, tmp_path).reference is None  # the start is unknown
    on_policy = load_config(None, ["model.reference=policy"])
    assert run_prm_metadata(on_policy, str(sft), "final").reference == "../policy"  # beside the PRM: relative
    assert run_prm_metadata(load_config(None, ["model.reference=/models/ref"]), None, "x").reference == "/models/ref"
