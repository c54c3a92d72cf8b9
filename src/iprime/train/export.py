"""Checkpoints as Hugging Face model directories, and pushing them to the hub.

``iprime export CHECKPOINT OUT`` turns a training checkpoint (``state.pt`` or DCP shards, see
:mod:`iprime.train.checkpoint`) into what ``iprime train`` writes to ``final/``::

    OUT/policy/   the policy: config, safetensors weights, tokenizer
    OUT/prm/      the implicit PRM: the same, plus iprime_prm.json (beta, reference, step
                  delimiter, granularity, loss), read by every command that loads a PRM

Both load with plain ``transformers.AutoModelForCausalLM.from_pretrained``: nothing of iprime
or peft is needed to read them.

How: the run's config is read from the checkpoint; each model's architecture is loaded from
where the run started (``model.policy``; ``model.prm`` or, for a LoRA PRM, the reference;
``policy_source`` / ``prm_source`` when those paths moved), then every weight is replaced by
the checkpoint's. The starting model thus supplies only the architecture and the tokenizer.

**A LoRA PRM is merged** (``prm.lora=true``: an adapter on the frozen reference). The exported
PRM is the reference with the adapter folded into its weights (peft's ``merge_and_unload``):
a full model that gives the same log-probs as the adapter did, loadable without peft, which is
what :class:`iprime.prm.scoring.ImplicitPRM` and other tools expect. It costs a full copy of the
weights on disk instead of a few MB of adapter.

The value model of estimators that train one is not exported (it is not a causal LM).

Usage::

    iprime export runs/prime out/                                     # the newest good checkpoint
    iprime export runs/prime/checkpoints/step-000020 out/ --policy-source /models/sft
    export_checkpoint("runs/prime", "out")  # -> {"policy": Path("out/policy"), "prm": Path("out/prm")}
    push_to_hub("runs/prime/final", "me/prime")  # me/prime and me/prime-prm
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from iprime.prm.metadata import run_prm_metadata, save_prm_metadata
from iprime.train.checkpoint_store import CheckpointError

if TYPE_CHECKING:  # only an export itself needs torch
    import torch

EXPORTABLE_ROLES = ("policy", "prm")


class ExportError(ValueError):
    """The export cannot be done as asked: no such role, a source model that is missing, an
    output directory already in use, a hub push without a login. The message says what to do."""


@dataclass
class ExportResult:
    """What :func:`export_run_checkpoint` wrote: ``dirs`` by role, from the checkpoint at
    ``checkpoint`` (its training ``step``); ``notes`` by role (where the architecture came from,
    whether a LoRA adapter was merged)."""

    checkpoint: Path
    step: int
    dirs: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# export
def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    policy_source: str | Path | None = None,
    prm_source: str | Path | None = None,
    roles: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a training checkpoint's models as Hugging Face directories ``out/policy``,
    ``out/prm``; returns ``{role: directory}``.

    ``checkpoint``: a run directory (its newest good checkpoint), a ``checkpoints/step-*``
    directory or a ``state.pt`` file; ``torch`` and DCP checkpoints both work, in one process.
    ``policy_source`` / ``prm_source``: where to take the architecture and tokenizer from when
    the paths in the run's config (``model.policy``; ``model.prm`` or the LoRA PRM's reference)
    moved. ``roles``: ``policy`` and/or ``prm``; ``None``: each of them the run trained.
    ``overwrite``: replace ``out/<role>`` directories that are not empty (else an error).
    See :func:`export_run_checkpoint` for the errors."""
    return export_run_checkpoint(
        checkpoint, out, policy_source=policy_source, prm_source=prm_source, roles=roles, overwrite=overwrite
    ).dirs


def export_run_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    policy_source: str | Path | None = None,
    prm_source: str | Path | None = None,
    roles: Sequence[str] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """:func:`export_checkpoint`, returning an :class:`ExportResult` (the checkpoint and step
    exported, and a note per role).

    Errors: ``FileNotFoundError`` (nothing at ``checkpoint`` is a checkpoint),
    :class:`~iprime.train.checkpoint.CheckpointError` (incomplete or corrupt),
    :class:`ExportError` (a role the run did not train, a source model that does not exist, an
    ``out/<role>`` in use). All of them are raised before anything is written."""
    from iprime.train import checkpoint as C

    directory = C.find_checkpoint(checkpoint)
    state = C.read_checkpoint(directory, verify=False)  # find_checkpoint verified it
    cfg = _saved_config(state, directory)
    chosen = _roles(cfg, roles)
    targets = {role: Path(out) / role for role in chosen}
    for target in targets.values():
        _check_target(target, overwrite)
    sources = _sources(cfg, state.get("model_source"), policy_source, prm_source)
    result = ExportResult(directory, int(state.get("step", 0)))
    models, tokenizer = _build(cfg, chosen, sources, result.notes)
    try:
        C.load_model_weights(directory, models, state if C.checkpoint_kind(directory) == "torch" else None)
    except RuntimeError as err:
        archs = ", ".join(sorted(set(sources.values())))
        raise ExportError(
            f"the weights in {directory} do not fit the architecture of {archs}: pass "
            f"--policy-source / --prm-source pointing at the models the run started from ({err})"
        ) from None
    prm_meta = run_prm_metadata(cfg, sources["policy"], Path(out))
    for role, model in models.items():
        meta = prm_meta if role == "prm" else None
        result.dirs[role] = _write_model(_plain(model, role, result.notes), tokenizer, targets[role], meta)
    return result


def _saved_config(state: dict[str, Any], directory: Path):
    """The run's :class:`~iprime.config.PrimeConfig` from the checkpoint's metadata."""
    from iprime.config import ConfigError, config_from_dict

    if not isinstance(state.get("config"), dict):
        raise ExportError(f"{directory}: the checkpoint holds no run config (written by an older iprime?)")
    try:
        return config_from_dict(state["config"])
    except ConfigError as err:
        raise ExportError(f"{directory}: the run config saved in the checkpoint is not valid here: {err}") from None


def _roles(cfg, roles: Sequence[str] | None) -> list[str]:
    """The roles to export: the ones asked for (each must be known and trained by the run)."""
    trained = ["policy"] + (["prm"] if cfg.prm.enabled else [])
    if roles is None:
        return trained
    chosen = list(dict.fromkeys(roles))
    for role in chosen:
        if role not in EXPORTABLE_ROLES:
            raise ExportError(f"cannot export role {role!r}: choose from {', '.join(EXPORTABLE_ROLES)}")
        if role not in trained:
            raise ExportError(f"the run trained no {role!r} (prm.enabled=false in its config)")
    if not chosen:
        raise ExportError("no role to export: choose policy and/or prm")
    return chosen


def _check_target(target: Path, overwrite: bool) -> None:
    """Refuse an ``out/<role>`` that is a file, or a directory in use (unless ``overwrite``)."""
    if target.is_file() or target.is_symlink():
        raise ExportError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportError(f"{target} already exists and is not empty: choose another output or pass --overwrite")


def _sources(cfg, recorded: str | None, policy_source, prm_source) -> dict[str, str]:
    """Where each model's architecture comes from: ``policy`` (also the tokenizer) and ``prm``.

    The policy's: ``policy_source``, else ``recorded`` (the path the trainer was given, saved in
    the checkpoint as ``model_source``), else ``model.policy``. The PRM's: ``prm_source``, else
    ``model.prm``, or the reference for a LoRA PRM on one, else the policy's. A source that looks
    local and does not exist is an :class:`ExportError` saying where it came from and which
    option replaces it."""
    if policy_source:
        policy, origin = str(policy_source), "given with --policy-source"
    elif recorded or cfg.model.policy:
        policy, origin = str(recorded or cfg.model.policy), "where the run started, recorded in the checkpoint"
    else:
        raise ExportError(
            "the checkpoint does not say which model the run started from (model.policy is empty: "
            "the trainer was given a model object): pass --policy-source with that model"
        )
    _must_exist(policy, origin, "--policy-source")
    if prm_source:
        prm, origin = str(prm_source), "given with --prm-source"
    elif cfg.prm.lora and cfg.model.reference != "sft":
        prm, origin = cfg.model.reference, "model.reference, the LoRA PRM's base, in the run's config"
    elif cfg.model.prm and not cfg.prm.lora:
        prm, origin = cfg.model.prm, "model.prm in the run's config"
    else:
        return {"policy": policy, "prm": policy}
    _must_exist(prm, origin, "--prm-source")
    return {"policy": policy, "prm": prm}


def _must_exist(source: str, origin: str, option: str) -> None:
    """Raise when ``source`` looks like a local path (not a hub id) and is not there."""
    looks_local = source.startswith(("/", ".", "~")) or source.count("/") > 1
    if looks_local and not Path(source).expanduser().exists():
        raise ExportError(
            f"the model {source} ({origin}) does not exist: if it moved, pass {option} with its new "
            "path (any model of the same architecture and tokenizer will do: every weight is replaced "
            "by the checkpoint's)"
        )


def _build(cfg, roles: list[str], sources: dict[str, str], notes: dict[str, str]):
    """The models of ``roles`` with the run's architecture (weights not yet the checkpoint's),
    and the tokenizer of the policy's source."""
    from iprime.models import load_model, load_tokenizer
    from iprime.train.memory import attach_lora

    def load(source: str, what):
        try:
            return what(source)
        except (OSError, ValueError) as err:  # offline and not cached, not a model, a tokenizer unfit for chat
            raise ExportError(f"cannot load {source} ({err}): pass --policy-source / --prm-source") from None

    models: dict[str, torch.nn.Module] = {}
    tokenizer = load(sources["policy"], load_tokenizer)
    if "policy" in roles:
        models["policy"] = load(sources["policy"], lambda s: load_model(s, dtype=cfg.model.dtype))
        notes["policy"] = f"architecture of {sources['policy']}"
    if "prm" in roles:
        prm = load(sources["prm"], lambda s: load_model(s, dtype=cfg.model.dtype))
        p = cfg.prm
        if p.lora:
            with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                prm = attach_lora(prm, p.lora_r, p.lora_alpha, p.lora_dropout)
        models["prm"] = prm
        notes["prm"] = f"architecture of {sources['prm']}, beta {p.beta:g}"
    return models, tokenizer


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as a plain transformers model to ``save_pretrained``: a peft model's adapter
    merged into a deep copy of it (the model itself keeps its adapter and can train on), any
    other model itself. For saving a live LoRA PRM the way an export does (one process only:
    an FSDP-sharded model cannot be copied so)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


def _plain(model: torch.nn.Module, role: str, notes: dict[str, str]) -> torch.nn.Module:
    """A transformers model: a peft model has its adapter merged into the base weights."""
    if not hasattr(model, "merge_and_unload"):
        return model
    notes[role] += ", LoRA adapter merged"
    return model.merge_and_unload()


def _write_model(model: torch.nn.Module, tokenizer, target: Path, prm_meta=None) -> Path:
    """``save_pretrained`` of the model and the tokenizer (and ``iprime_prm.json`` from
    ``prm_meta``) into ``target``: written into a temporary directory beside it, which then
    replaces ``target`` (a failed export leaves ``target`` as it was)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if prm_meta is not None:
            save_prm_metadata(tmp, prm_meta)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# the hub
def push_to_hub(final_dir: str | Path, repo_id: str, *, private: bool = True, token: str | None = None) -> list[str]:
    """Push ``final_dir/policy`` to the hub repo ``repo_id`` and ``final_dir/prm`` (when there is
    one) to ``<repo_id>-prm``; returns the repos' URLs, policy first.

    Each repo is created if needed (``private`` applies to new repos only), then the folder is
    uploaded as one commit. Needs ``huggingface_hub`` and a token: ``token``, else the one of
    ``huggingface-cli login`` / ``HF_TOKEN``; without one an :class:`ExportError` says how to
    log in, before anything is sent."""
    folders = _hub_folders(Path(final_dir), repo_id)
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise ExportError("pushing to the hub needs huggingface_hub: pip install huggingface_hub") from None
    token = token or huggingface_hub.get_token()
    if not token:
        raise ExportError(
            "not logged in to the Hugging Face hub: run `huggingface-cli login` (or set HF_TOKEN), then push again"
        )
    api = huggingface_hub.HfApi(token=token)
    urls = []
    for repo, folder in folders.items():
        try:
            url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo, folder_path=str(folder), repo_type="model", commit_message=f"iprime: {folder.name}"
            )
        except HfHubHTTPError as err:
            raise ExportError(
                f"pushing {folder} to {repo} failed (does your token have write access?): {err}"
            ) from None
        urls.append(str(url))
    return urls


def _hub_folders(final_dir: Path, repo_id: str) -> dict[str, Path]:
    """``{repo id: folder}`` to push; a bad repo id or a missing policy folder is an error."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ExportError(f"a hub repo id looks like user/name, got {repo_id!r}")
    policy, prm = final_dir / "policy", final_dir / "prm"
    if not (policy / "config.json").is_file():
        raise ExportError(f"nothing to push: {policy} is not a Hugging Face model directory (no config.json)")
    folders = {repo_id: policy}
    if prm.is_dir() and any(prm.iterdir()):  # a full model, or a peft adapter directory
        folders[f"{repo_id}-prm"] = prm
    return folders


# ---------------------------------------------------------------------------------------------
# the command
def export_command(
    checkpoint: str = typer.Argument(
        ...,
        metavar="CHECKPOINT",
        help="a run directory (its newest good checkpoint), a checkpoints/step-NNNNNN directory, or a state.pt",
    ),
    out: str = typer.Argument(..., metavar="OUT", help="output directory: policy/ and prm/ are written inside"),
    policy_source: str = typer.Option(
        None,
        "--policy-source",
        metavar="MODEL",
        help="the model the run started from, if model.policy in its config moved",
    ),
    prm_source: str = typer.Option(
        None,
        "--prm-source",
        metavar="MODEL",
        help="the PRM's starting model, if model.prm (or a LoRA PRM's reference) moved",
    ),
    role: list[str] = typer.Option(
        [], "--role", metavar="ROLE", help="policy or prm (repeatable); default: both the run trained"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT/policy and OUT/prm if they exist"),
    hub: str = typer.Option(
        None,
        "--push-to-hub",
        metavar="USER/NAME",
        help="then push the policy to this repo (user/name), the PRM to -prm",
    ),
    public: bool = typer.Option(False, "--public", help="with --push-to-hub: create public repos (default: private)"),
) -> None:
    """Export a training checkpoint as Hugging Face model directories (policy/, prm/ with iprime_prm.json).

    Examples:

        iprime export runs/prime out/

        iprime export runs/prime/checkpoints/step-000020 out/ --policy-source /models/sft

        iprime export runs/prime out/ --role policy --push-to-hub me/prime-7b
    """
    console = Console()
    try:
        result = export_run_checkpoint(
            checkpoint, out, policy_source=policy_source, prm_source=prm_source, roles=role or None, overwrite=overwrite
        )
        urls = push_to_hub(out, hub, private=not public) if hub else []
    except (ExportError, CheckpointError, FileNotFoundError) as err:
        Console(stderr=True).print(f"[red]export error:[/red] {err}", highlight=False)
        raise typer.Exit(2) from None
    console.print(_table(result, urls))


def _table(result: ExportResult, urls: list[str]):
    """A rich table: one row per exported model (role, directory, where its parts came from)."""
    table = Table(title=f"exported step {result.step} from {result.checkpoint}")
    for col in ("model", "directory", "notes"):
        table.add_column(col)
    for role, directory in result.dirs.items():
        table.add_row(role, str(directory), result.notes.get(role, ""))
    for url in urls:
        table.add_row("hub", url, "pushed")
    return table
