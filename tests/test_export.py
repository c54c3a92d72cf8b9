"""``iprime export`` (issue 15): training checkpoints (state.pt and DCP) as Hugging Face model
directories that plain transformers loads with the trained weights, a LoRA PRM merged, clear
errors on bad input, and the push to the hub (against a fake API: no network)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import typer
from test_trainer import ROWS, make_config, parity_verifier
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from iprime.models import response_logprobs
from iprime.prm.metadata import load_prm_metadata, run_prm_metadata
from iprime.train import checkpoint as C
from iprime.train.checkpoint_plain import to_plain
from iprime.train.checkpoint_store import write_manifest
from iprime.train.export import (
    ExportError,
    export_checkpoint,
    export_command,
    export_run_checkpoint,
    merged_copy,
    push_to_hub,
)

pytestmark = pytest.mark.usefixtures("one_thread")
RESPONSE_LEN = 6


# ---------------------------------------------------------------------------------------------
# tiny runs: 2 steps, a checkpoint after each
def train_run(source: Path, out: Path, *overrides: str):
    """A 2-step PRIME run from ``source`` (recorded as model.policy, as ``iprime train`` does)."""
    from iprime.train.prime import PrimeTrainer

    cfg = make_config(
        out, "train.steps=2", "train.save_every=1", "train.save_hf=false", f"model.policy={source}", *overrides
    )
    trainer = PrimeTrainer(str(source), cfg, ROWS, parity_verifier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP: "torch.distributed is disabled..."
        trainer.train(progress=False)
    assert (out / "checkpoints" / "LATEST").read_text() == "step-000002"
    return trainer


@pytest.fixture(scope="module")
def torch_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    return train_run(tiny_model_dir, out, "train.checkpoint_format=torch"), out


@pytest.fixture(scope="module")
def dcp_run(tiny_model_dir, tmp_path_factory):
    """A DCP run whose starting model was moved away after training: ``(trainer, run, new path)``."""
    root = tmp_path_factory.mktemp("export_dcp")
    sft = Path(shutil.copytree(tiny_model_dir, root / "sft"))
    trainer = train_run(sft, root / "run", "train.checkpoint_format=dcp")
    moved = sft.rename(root / "sft-moved")
    return trainer, root / "run", moved


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_lora") / "run"
    return train_run(tiny_model_dir, out, "prm.lora=true", "prm.lora_r=4", "prm.lr=1e-2"), out


def fixed_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # one left-padded row
    return ids, mask


@torch.no_grad()
def logp(model, ids=None, mask=None) -> torch.Tensor:
    """Response log-probs [3, RESPONSE_LEN] of the model on a fixed batch (eval mode)."""
    was_training = model.training
    model.eval()
    if ids is None:
        ids, mask = fixed_batch(model.config.vocab_size)
    out = response_logprobs(model, ids, mask, RESPONSE_LEN)
    model.train(was_training)
    return out


def plain_load(directory: Path):
    """What any Hugging Face tool does: nothing of iprime."""
    return AutoModelForCausalLM.from_pretrained(directory)


# ---------------------------------------------------------------------------------------------
# what an export writes
def test_a_torch_checkpoint_exports_to_models_plain_transformers_loads(torch_run, tiny_model_dir, tmp_path):
    trainer, run = torch_run
    result = export_run_checkpoint(run, tmp_path / "out")
    assert result.checkpoint == run / "checkpoints" / "step-000002" and result.step == 2
    assert result.dirs == {"policy": tmp_path / "out" / "policy", "prm": tmp_path / "out" / "prm"}

    policy = plain_load(tmp_path / "out" / "policy")
    exported, trained, start = logp(policy), logp(trainer.policy), logp(plain_load(tiny_model_dir))
    torch.testing.assert_close(exported, trained, atol=1e-6, rtol=0)
    assert (exported - start).abs().max() > 1e-4  # the export holds the trained weights, not the start's
    torch.testing.assert_close(logp(plain_load(tmp_path / "out" / "prm")), logp(trainer.prm), atol=1e-6, rtol=0)

    tok = AutoTokenizer.from_pretrained(tmp_path / "out" / "policy")
    assert tok.chat_template and tok.eos_token == trainer.tokenizer.eos_token
    meta = load_prm_metadata(tmp_path / "out" / "prm")
    assert meta.beta == 0.5 and meta.reference == str(Path(tiny_model_dir).resolve())
    assert (meta.step_delimiter, meta.granularity, meta.loss) == ("\n", "token", "ce")
    assert not (tmp_path / "out" / "policy" / "iprime_prm.json").exists()


def test_the_trainer_and_an_export_write_the_same_prm_metadata(torch_run, tmp_path):
    trainer, run = torch_run
    trainer.save_pretrained(tmp_path / "saved")
    export_run_checkpoint(run, tmp_path / "exported")
    saved = load_prm_metadata(tmp_path / "saved" / "prm")
    assert saved == load_prm_metadata(tmp_path / "exported" / "prm")
    assert saved == run_prm_metadata(trainer.cfg, trainer.model_source, tmp_path / "saved")  # the one builder


def test_every_way_of_naming_a_checkpoint_finds_it(torch_run, tmp_path):
    _, run = torch_run
    ckpts = run / "checkpoints"
    for given in (run, ckpts, ckpts / "step-000002", ckpts / "step-000002" / "state.pt"):
        assert C.find_checkpoint(given) == ckpts / "step-000002", given
    # an older step is exported as asked: its weights are the first step's, not the last's
    first = export_checkpoint(ckpts / "step-000001", tmp_path / "one", roles=["policy"])
    last = export_checkpoint(run, tmp_path / "two", roles=["policy"])
    assert set(first) == {"policy"} and not (tmp_path / "one" / "prm").exists()
    assert (logp(plain_load(first["policy"])) - logp(plain_load(last["policy"]))).abs().max() > 1e-5


def test_a_dcp_checkpoint_exports_and_a_moved_source_is_named(dcp_run, tmp_path):
    trainer, run, moved = dcp_run
    assert C.checkpoint_kind(run / "checkpoints" / "step-000002") == "dcp"
    with pytest.raises(ExportError) as err:
        export_checkpoint(run, tmp_path / "out")
    assert str(moved.parent / "sft") in str(err.value) and "--policy-source" in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written

    dirs = export_checkpoint(run, tmp_path / "out", policy_source=moved)
    torch.testing.assert_close(logp(plain_load(dirs["policy"])), logp(trainer.policy), atol=1e-6, rtol=0)
    torch.testing.assert_close(logp(plain_load(dirs["prm"])), logp(trainer.prm), atol=1e-6, rtol=0)
    assert load_prm_metadata(dirs["prm"]).reference == str(moved.resolve())  # where the reference is now


def test_a_lora_prm_is_merged_into_a_plain_model(lora_run, tiny_model_dir, tmp_path):
    trainer, run = lora_run
    assert hasattr(trainer.prm, "merge_and_unload")  # the run's PRM is a peft adapter
    result = export_run_checkpoint(run, tmp_path / "out")
    assert "LoRA adapter merged" in result.notes["prm"]
    prm_dir = result.dirs["prm"]
    assert (prm_dir / "config.json").is_file() and not (prm_dir / "adapter_config.json").exists()
    exported, trained = logp(plain_load(prm_dir)), logp(trainer.prm)
    torch.testing.assert_close(exported, trained, atol=1e-6, rtol=0)
    assert (exported - logp(plain_load(tiny_model_dir))).abs().max() > 1e-5  # the adapter is in the weights
    assert load_prm_metadata(prm_dir).reference == str(Path(tiny_model_dir).resolve())
    # a live LoRA PRM saved the same way, without touching the trainer's adapter
    copy = merged_copy(trainer.prm)
    assert not hasattr(copy, "merge_and_unload") and hasattr(trainer.prm, "merge_and_unload")
    torch.testing.assert_close(logp(copy), trained, atol=1e-6, rtol=0)
    torch.testing.assert_close(logp(trainer.prm), trained, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# bad input
def copy_checkpoint(run: Path, dest: Path, step: str = "step-000002") -> Path:
    return Path(shutil.copytree(run / "checkpoints" / step, dest / "checkpoints" / step))


def rewrite_state(step_dir: Path, change) -> None:
    """Change a ``state.pt`` checkpoint's state and re-checksum it (a checkpoint written so)."""
    state = C.load_checkpoint(step_dir)
    change(state)
    torch.save(to_plain(state), step_dir / "state.pt")
    write_manifest(step_dir, state["step"])


def test_bad_inputs_are_clear_errors_raised_before_writing(torch_run, tiny_model_dir, tmp_path):
    _, run = torch_run
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*does not exist"):
        export_checkpoint(tmp_path / "nowhere", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
        export_checkpoint(tmp_path / "empty", out)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):  # already a Hugging Face directory
        export_checkpoint(export_checkpoint(run, tmp_path / "hf", roles=["policy"])["policy"], out)

    incomplete = copy_checkpoint(run, tmp_path / "a")
    (incomplete / "manifest.json").unlink()
    with pytest.raises(C.CheckpointError, match="manifest.json: missing .*incomplete checkpoint"):
        export_checkpoint(incomplete, out)
    (tmp_path / "b" / "step-000003").mkdir(parents=True)
    with pytest.raises(C.CheckpointError, match="step-000003: an incomplete checkpoint"):
        export_checkpoint(tmp_path / "b" / "step-000003", out)
    corrupt = copy_checkpoint(run, tmp_path / "c")
    with (corrupt / "state.pt").open("r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(C.CheckpointWarning, match="skipping bad checkpoint step-000002"):
        with pytest.raises(C.CheckpointError, match="no usable checkpoint .*state.pt: checksum mismatch"):
            export_checkpoint(tmp_path / "c", out)

    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "one-layer"))  # another architecture
    config = json.loads((other / "config.json").read_text())
    config.update(num_hidden_layers=1, layer_types=config.get("layer_types", ["full_attention"])[:1])
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="do not fit the architecture of .*one-layer.*--policy-source"):
        export_checkpoint(run, out, policy_source=other)
    with pytest.raises(ExportError, match="cannot export role 'value'"):
        export_checkpoint(run, out, roles=["value"])
    no_source = copy_checkpoint(run, tmp_path / "d")  # a run started from a model object
    rewrite_state(no_source, lambda s: (s["config"]["model"].update(policy=""), s.pop("model_source", None)))
    with pytest.raises(ExportError, match="does not say which model the run started from.*--policy-source"):
        export_checkpoint(no_source, out)
    assert not out.exists()


def test_the_source_the_trainer_recorded_wins_over_model_policy(torch_run, tiny_model_dir, tmp_path):
    trainer, run = torch_run
    step = copy_checkpoint(run, tmp_path / "run")
    change = {"policy": str(tmp_path / "never-there")}
    rewrite_state(step, lambda s: (s["config"]["model"].update(change), s.update(model_source=str(tiny_model_dir))))
    dirs = export_checkpoint(step, tmp_path / "out", roles=["policy"])
    torch.testing.assert_close(logp(plain_load(dirs["policy"])), logp(trainer.policy), atol=1e-6, rtol=0)


def test_an_output_in_use_is_refused_unless_overwrite(torch_run, tmp_path):
    _, run = torch_run
    (tmp_path / "out" / "policy").mkdir(parents=True)
    (tmp_path / "out" / "policy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="policy already exists and is not empty.*--overwrite"):
        export_checkpoint(run, tmp_path / "out")
    assert (tmp_path / "out" / "policy" / "notes.txt").read_text() == "mine" and not (tmp_path / "out" / "prm").exists()
    dirs = export_checkpoint(run, tmp_path / "out", overwrite=True)
    assert not (dirs["policy"] / "notes.txt").exists() and (dirs["policy"] / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["policy", "prm"]  # no temporary left


# ---------------------------------------------------------------------------------------------
# the command
def export_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(export_command)
    return app


def invoke(*args: str):
    return CliRunner().invoke(export_app(), list(args), env={"COLUMNS": "300"})


def test_the_command_prints_what_it_wrote_and_exits_2_on_bad_input(torch_run, tmp_path):
    _, run = torch_run
    result = invoke(str(run), str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert f"exported step 2 from {run / 'checkpoints' / 'step-000002'}" in result.output
    assert str(tmp_path / "out" / "policy") in result.output and str(tmp_path / "out" / "prm") in result.output
    assert "beta 0.5" in result.output

    again = invoke(str(run), str(tmp_path / "out"))
    assert again.exit_code == 2 and "export error" in again.output and "--overwrite" in again.output
    missing = invoke(str(tmp_path / "nowhere"), str(tmp_path / "x"))
    assert missing.exit_code == 2 and "no checkpoint at" in missing.output
    bad_role = invoke(str(run), str(tmp_path / "y"), "--role", "value")
    assert bad_role.exit_code == 2 and "cannot export role 'value'" in bad_role.output

    help_text = invoke("--help").output
    assert "iprime export runs/prime out/" in help_text and "--policy-source" in help_text


# ---------------------------------------------------------------------------------------------
# the hub, against a fake API
class FakeHfApi:
    calls: list[tuple] = []

    def __init__(self, token=None) -> None:
        self.token = token

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None):
        FakeHfApi.calls.append(("create_repo", repo_id, private, exist_ok, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        FakeHfApi.calls.append(("upload_folder", repo_id, Path(folder_path).name, files))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_saved")
    return FakeHfApi.calls


def test_push_to_hub_uploads_the_policy_and_the_prm_to_two_repos(torch_run, tmp_path, fake_hub):
    _, run = torch_run
    final = tmp_path / "final"
    export_checkpoint(run, final)
    urls = push_to_hub(final, "me/prime", private=False)
    assert urls == ["https://huggingface.co/me/prime", "https://huggingface.co/me/prime-prm"]
    creates = [c for c in fake_hub if c[0] == "create_repo"]
    uploads = [c for c in fake_hub if c[0] == "upload_folder"]
    assert creates == [
        ("create_repo", "me/prime", False, True, "hf_saved"),
        ("create_repo", "me/prime-prm", False, True, "hf_saved"),
    ]
    assert [(u[1], u[2]) for u in uploads] == [("me/prime", "policy"), ("me/prime-prm", "prm")]
    assert "iprime_prm.json" in uploads[1][3] and "iprime_prm.json" not in uploads[0][3]
    assert "model.safetensors" in uploads[0][3] and "tokenizer_config.json" in uploads[0][3]

    fake_hub.clear()
    shutil.rmtree(final / "prm")
    assert push_to_hub(final, "me/solo", token="hf_given") == ["https://huggingface.co/me/solo"]
    assert fake_hub[0] == ("create_repo", "me/solo", True, True, "hf_given")  # private by default


def test_push_to_hub_errors_are_clear_and_send_nothing(tmp_path, fake_hub, monkeypatch):
    import huggingface_hub

    (tmp_path / "final" / "policy").mkdir(parents=True)
    with pytest.raises(ExportError, match="nothing to push: .*policy is not a Hugging Face model directory"):
        push_to_hub(tmp_path / "final", "me/prime")
    (tmp_path / "final" / "policy" / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="repo id looks like user/name, got 'prime'"):
        push_to_hub(tmp_path / "final", "prime")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ExportError, match="not logged in .*huggingface-cli login"):
        push_to_hub(tmp_path / "final", "me/prime")
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ExportError, match="needs huggingface_hub"):
        push_to_hub(tmp_path / "final", "me/prime", token="hf_x")
    assert fake_hub == []
