"""The ``iprime`` command line.

Every command's ``--help`` ends with examples, and every command runs with the progress bars of
transformers / huggingface_hub silenced (:func:`iprime.quiet.silence_third_party_progress`), so
a job's log file holds iprime's own lines only. Help text is rich markup: a literal ``[`` that
starts a word (``[dotted.key=value ...]``) is written ``\\[`` so that rich does not take it for a
style tag.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperOption

from iprime import __version__
from iprime.data.sources import DataError, read_records
from iprime.numerics import cpu_has_avx2, unportable_reason, use_portable_kernels
from iprime.quiet import silence_third_party_progress
from iprime.tables import metrics_table
from iprime.train.checkpoint_store import CheckpointError, resume_candidates
from iprime.train.run_lock import LOCK_NAME, RunLock, RunLockedError, acquire_run_lock, lock_holder


def _flags_show_no_type() -> None:
    """Show boolean flags (``--resume``, ``--help``) without a type in ``--help``.

    typer 0.2x labels every option with its Python type, flags included (``--resume <bool>``),
    which reads as if the flag took a value. Older typer shows no type for flags; there this
    does nothing."""
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_iprime_flags", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_bool_flag", False):
            return None
        return shown(self, ctx)

    display_type_rich._iprime_flags = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()


def _iprime_warnings_plain() -> None:
    """Print iprime's own warnings (a skipped checkpoint, a config change applied on resume, a
    torn metrics line) as ``warning: <message>``: they are messages for whoever runs the
    command, not for a developer, so without the file, line and source line Python adds.
    Warnings of other categories (``UserWarning``, third-party libraries) keep Python's format."""
    shown = warnings.formatwarning
    if getattr(shown, "_iprime", False):
        return

    def formatwarning(message, category, filename, lineno, line=None):
        if category.__module__.startswith("iprime."):
            return f"warning: {message}\n"
        return shown(message, category, filename, lineno, line)

    formatwarning._iprime = True
    warnings.formatwarning = formatwarning


ROOT_EXAMPLES = """Examples:
iprime quickstart                                          (tiny model on the CPU: SFT, eval, PRIME, eval)
iprime train --config configs/eurus2_7b_prime.yaml train.steps=200
iprime config show --config run.yaml --changed
iprime eval --model runs/prime/final/policy --benchmarks math500 --out runs/eval
iprime COMMAND --help                                      (every command's options and examples)"""

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="PRIME: process reinforcement through implicit rewards.",
    epilog=ROOT_EXAMPLES,
)
console = Console()


def version_text() -> str:
    """``iprime 0.1.0 (torch 2.6.0, transformers 4.51.3, python 3.11.9)``: read from the installed
    packages' metadata, so nothing heavy is imported."""
    parts = []
    for name in ("torch", "transformers"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    parts.append(f"python {sys.version.split()[0]}")
    return f"iprime {__version__} ({', '.join(parts)})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="print iprime's version (and torch's) and exit"
    ),
) -> None:
    """iprime: train LLM reasoning with implicit process rewards, and serve the implicit PRM."""
    silence_third_party_progress()
    _iprime_warnings_plain()


@app.command("algo-demo", epilog="Examples:\niprime algo-demo\niprime algo-demo --beta 0.05 --rm-coef 5")
def algo_demo(beta: float = 0.5, rm_coef: float = 1.0, gamma: float = 1.0) -> None:
    """Walk one hand-made group of K=3 responses through PRIME's reward and advantage math."""
    import torch

    from iprime.algo import filter_groups, implicit_process_rewards, prime_rloo_advantages, prm_ce_loss

    # log-probs of 4 response tokens under the PRM and the reference; response 2 is 2 tokens long
    prm = torch.tensor([[-0.2, -0.4, -0.1, -0.3], [-1.0, -0.9, -1.2, -0.8], [-0.5, -0.7, 0.0, 0.0]])
    ref = torch.tensor([[-0.5, -0.5, -0.5, -0.5], [-0.6, -0.6, -0.6, -0.6], [-0.6, -0.6, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    outcome = torch.tensor([1.0, 0.0, 1.0])
    rewards = implicit_process_rewards(prm, ref, mask, beta)
    keep = filter_groups(outcome, torch.zeros(3, dtype=torch.bool), group_size=3)
    adv = prime_rloo_advantages(outcome, rewards, mask, group_size=3, rm_coef=rm_coef, gamma=gamma)
    loss = prm_ce_loss(prm, ref, mask, outcome, beta)
    table = Table(title=f"PRIME on one group (beta={beta}, rm_coef={rm_coef}, gamma={gamma})")
    for col in ("response", "outcome", "token rewards", "advantages"):
        table.add_column(col)
    for i in range(3):
        fmt = lambda x: " ".join(f"{v:+.3f}" for v in x[i][mask[i]].tolist())  # noqa: E731
        table.add_row(str(i), f"{outcome[i]:.0f}", fmt(rewards), fmt(adv))
    console.print(table)
    console.print(
        Text(f"group kept by the [0.2, 0.8] accuracy filter: {bool(keep.all())}; PRM CE loss: {loss.item():.4f}")
    )


@app.command(
    epilog="Examples:\niprime quickstart\niprime quickstart --seed 1\n"
    "iprime quickstart --out runs/qs --set train.steps=10 --set rollout.n=8"
)
def quickstart(
    out: str = typer.Option("runs/quickstart", help="output directory (replaced)"),
    override: list[str] = typer.Option([], "--set", help="PRIME config override, e.g. train.steps=10"),
    seed: int = typer.Option(0, help="seed of the model, the SFT data and the PRIME run (same held-out problems)"),
    native_kernels: bool = typer.Option(
        False,
        "--native-kernels",
        help="this CPU's own float kernels: the numbers then depend on the CPU (the default, portable AVX2 "
        "kernels, gives the same numbers on every CPU with AVX2 at about the same speed)",
    ),
) -> None:
    """Tiny model -> SFT on the built-in task -> evaluate -> PRIME -> evaluate, on the CPU.

    Runs on portable float kernels (iprime.numerics, level avx2), so every x86-64 CPU with AVX2
    prints the same numbers, at native speed.
    """
    if not native_kernels and unportable_reason() is None and cpu_has_avx2():
        use_portable_kernels("avx2")  # before torch loads: the kernels are chosen when it first runs
    from iprime.presets import QUICKSTART
    from iprime.quickstart import QuickstartConfig, run_quickstart

    qc = QuickstartConfig(preset=QUICKSTART.reseeded(seed))
    run_quickstart(out, qc, extra_overrides=tuple(override), log=lambda msg: console.print(msg, soft_wrap=True))


# ------------------------------------------------------------------------------------- iprime train
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")
"""What a folder written by ``iprime train`` holds (``config.yaml`` is written first)."""


class OutDirError(ValueError):
    """``train.out_dir`` cannot be used as asked (a previous run is there, or nothing to resume)."""


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a ``torchrun`` launch (read from ``RANK``, as the
    process group does not exist yet when the command starts)."""
    return int(os.environ.get("RANK", "0")) == 0


def is_iprime_run(path: Path) -> bool:
    """Whether ``path`` holds an ``iprime train`` run: a ``config.yaml`` whose top-level keys
    are all sections of :class:`~iprime.config.PrimeConfig` (every run writes it first), beside
    ``metrics.jsonl`` or ``checkpoints/`` or nothing else. A folder with only a ``checkpoints/``
    (many tools make one) is not enough."""
    from iprime.config import PrimeConfig

    config = path / "config.yaml"
    if not config.is_file():
        return False
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    sections = {f.name for f in dataclasses.fields(PrimeConfig)}
    return isinstance(data, dict) and bool(data) and set(data) <= sections


def _check_deletable(path: Path, config_file: str | None) -> None:
    """Raise :class:`OutDirError` unless ``--overwrite`` may delete ``path``: an iprime run
    folder, not the working directory or one of its parents, not the home folder, and not
    holding the ``--config`` file this command reads (other than the run's own config.yaml)."""
    resolved = path.resolve()
    if resolved == Path.home().resolve() or Path.cwd().resolve().is_relative_to(resolved):
        raise OutDirError(f"--overwrite will not delete {path}: it is the home folder, or holds the working directory")
    if not is_iprime_run(path):
        raise OutDirError(
            f"--overwrite will not delete {path}: it does not look like an iprime run (no config.yaml with iprime's "
            "sections). Choose another train.out_dir, or empty the folder yourself."
        )
    if config_file is not None:
        given = Path(config_file).resolve()
        if given.is_relative_to(resolved) and given != resolved / "config.yaml":
            raise OutDirError(f"--overwrite would delete {config_file}, the config this command reads; move it first")


def prepare_out_dir(
    path: str | Path, *, resume: bool, overwrite: bool, config_file: str | None = None, dry_run: bool = False
) -> str | None:
    """Make ``train.out_dir`` ready for a run; returns a note to print, or ``None``.

    A missing or empty folder is used as it is. A folder holding anything is refused unless
    ``resume`` (continue it: it must hold a checkpoint) or ``overwrite`` (delete it first; only a
    folder that :func:`is_iprime_run`). Raises :class:`OutDirError` with what to do instead.
    ``dry_run``: the same checks, nothing deleted (the note says what would be)."""
    path = Path(path)
    if resume and overwrite:
        raise OutDirError("--resume continues the run in train.out_dir and --overwrite deletes it: give one of them")
    if path.exists() and not path.is_dir():
        raise OutDirError(f"train.out_dir {path} is a file, not a folder")
    if dry_run and path.is_dir() and (holder := lock_holder(path)):
        what = "--overwrite will not delete it" if overwrite else "it cannot be used by a second process"
        raise OutDirError(f"train.out_dir {path} is in use by a live run: {holder}; {what}")
    if resume:
        if not resume_candidates(path):
            raise OutDirError(
                f"--resume: no checkpoint in {path / 'checkpoints'} to continue from"
                + ("" if path.exists() else f" ({path} does not exist)")
                + "; start the run without --resume"
            )
        return None
    if not path.exists() or not _run_files(path):
        return None
    if not overwrite:
        raise OutDirError(
            f"train.out_dir {path} is not empty (a previous run's files are there). Continue that run with --resume, "
            "replace it with --overwrite, or set another train.out_dir=..."
        )
    _check_deletable(path, config_file)
    if dry_run:
        return f"--overwrite would delete the previous run in {path}"
    for child in _run_files(path):  # the lock this command holds stays
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return f"--overwrite: deleted the previous run in {path}"


def _run_files(path: Path) -> list[Path]:
    """What a run folder holds besides its lock file (:mod:`iprime.train.run_lock`)."""
    return [p for p in path.iterdir() if p.name != LOCK_NAME]


def claim_out_dir(
    path: str | Path, *, resume: bool, overwrite: bool, config_file: str | None = None, command: str = "iprime train"
) -> tuple[RunLock, str | None]:
    """Take the run folder's lock (:func:`iprime.train.run_lock.acquire_run_lock`), then make
    it ready (:func:`prepare_out_dir`): ``(lock, note)``. The lock is held until
    ``lock.release()`` or the process ends. A folder a live process holds is refused with a
    :class:`~iprime.train.run_lock.RunLockedError` naming its pid, host and start time (for
    ``--overwrite`` too: nothing is deleted); the other refusals are :class:`OutDirError`."""
    path = Path(path)
    doing = (
        "--overwrite will not delete it."
        if overwrite
        else "A second process would write the same checkpoints and metrics."
    )
    prepare_out_dir(path, resume=resume, overwrite=overwrite, config_file=config_file, dry_run=True)
    try:  # the lock's file is the first write: a folder that cannot be written is found here
        lock = acquire_run_lock(path, command, doing)
    except OSError as err:
        raise not_writable(path, err) from None
    try:  # after the lock, which must see whether it made the folder (it removes one made for nothing)
        check_writable(path)  # before any model loads, not at the run's first write
        note = prepare_out_dir(path, resume=resume, overwrite=overwrite, config_file=config_file)
    except BaseException:
        lock.release()
        raise
    return lock, note


def check_writable(path: Path) -> None:
    """Make ``train.out_dir`` (and its parents) and write a file there, or raise
    :class:`OutDirError` saying why not (a read-only file system, no permission, a parent that
    is a file): found before any model loads, not at the run's first write."""
    probe = path / f".iprime-write-check-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise not_writable(path, err) from None


def not_writable(path: Path, err: OSError) -> OutDirError:
    """The refusal of a ``train.out_dir`` that could not be made or written (``err``)."""
    reason = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err)
    return OutDirError(
        f"train.out_dir {path} cannot be written ({reason}); set another train.out_dir, or make it writable"
    )


def writable_finding(path: Path) -> str | None:
    """Why ``path`` could not be made and written, judged without writing (``--dry-run``): the
    nearest existing folder on the way must be a writable folder. ``None``: looks fine."""
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be made: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be written: no permission to write in {parent} (or it is on a read-only file system)"
    return None


def say(*parts: str | tuple[str, str]) -> None:
    """Print one message as it is: never parsed as rich markup, and not wrapped at 80 columns
    when the output is a file (a log keeps each message, and each path, on one line)."""
    console.print(Text.assemble(*parts), soft_wrap=True)


def _fail(kind: str, err: object) -> NoReturn:
    """Print ``<kind>: <err>`` and exit with status 2."""
    say((f"{kind}: ", "red"), str(err))
    raise typer.Exit(2)


def final_model_lines(final_dir: Path, has_prm: bool, *, trained: bool = True) -> list[str]:
    """Where the run's final models are, and how to load them: the run's last words.
    ``trained=False`` (every step was empty) says that the policy is the starting model."""
    note = "" if trained else "  (unchanged: no step trained it)"
    lines = [f"final policy: {final_dir / 'policy'}  (transformers.AutoModelForCausalLM.from_pretrained){note}"]
    if has_prm:
        lines.append(f"final PRM:    {final_dir / 'prm'}  (with iprime_prm.json; iprime prm score --prm ...)")
    return lines


def push_final(final_dir: Path, repo_id: str, private: bool) -> list[str]:
    """Push the final models to the hub (:func:`iprime.train.export.push_to_hub`); their URLs."""
    return list(push_to_hub(final_dir, repo_id, private=private))


TRAIN_EXAMPLES = """Examples:
iprime train --config configs/eurus2_7b_prime.yaml
iprime train --model models/tiny-sft --data mine.parquet train.steps=3   (no config file: PrimeConfig's defaults)
iprime train --config run.yaml train.steps=200 rollout.n=8 train.out_dir=runs/n8
iprime train --config run.yaml --resume                 (continue from the newest checkpoint in train.out_dir)
iprime train --config run.yaml --resume optim.lr=5e-7   (a changeable key: applied, recorded in config_history.jsonl)
iprime train --config run.yaml --resume prm.beta=0.1 --allow-change prm.beta    (a fixed key, changed on purpose)
iprime train --config run.yaml --overwrite              (delete the run in train.out_dir and start again)
iprime train --config configs/eurus2_7b_prime.yaml --dry-run --world-size 8   (check everything, load nothing)
nohup iprime train --config run.yaml > train.log 2>&1 &     (no terminal: one plain line per step)
torchrun --nproc_per_node=8 -m iprime train --config run.yaml
iprime config show --config run.yaml                    (every key, its value and its documentation)"""


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    options_metavar="[OPTIONS] [KEY=VALUE]...",
    epilog=TRAIN_EXAMPLES,
)
def train(
    ctx: typer.Context,
    config: str = typer.Option(None, "--config", help="YAML config file"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in train.out_dir"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="delete the previous run in train.out_dir first (an iprime run folder only)"
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="run only the pre-flight check (GPU, bf16, vLLM, world size, memory estimate, sandbox) and the data "
        "check; load no model, write nothing. Exit 0: all is well; 2: every problem listed",
    ),
    world_size: int = typer.Option(
        None, "--world-size", min=1, help="with --dry-run: check as if torchrun started this many ranks here"
    ),
    allow_change: list[str] = typer.Option(
        [],
        "--allow-change",
        metavar="KEY",
        help="with --resume: accept a change of this fixed config key (model.policy, prm.beta, train.seed, ...) "
        "on purpose; repeat for more keys. It is recorded in config_history.jsonl. Changeable keys (optim.lr, "
        "train.steps, eval and logging settings) need no flag",
    ),
    model: str = typer.Option(
        None,
        "--model",
        help="the starting (SFT) model, path or hub id: sets model.policy; the PRM and the reference start "
        "from it too unless model.prm / model.reference say otherwise",
    ),
    data: str = typer.Option(
        None, "--data", help="the training data (file, directory or hf:NAME): sets data.train_path"
    ),
) -> None:
    """Run PRIME (or a baseline): iprime train --config FILE.yaml \\[dotted.key=value ...]

    Overrides follow the options as dotted.key=value words (rollout.n=8 train.steps=200); an
    unknown key is an error. Before anything loads, a pre-flight check (GPU, bf16, vLLM, world
    size, memory) lists every problem in one message (exit 2); --dry-run runs only that and the
    data check. A non-empty train.out_dir is refused unless --resume or --overwrite is given. On
    a terminal progress is a bar; in a log file one line per step (train.progress). The final
    models go to train.out_dir/final (policy/, prm/). SIGTERM or Ctrl-C: the step under way
    finishes, a checkpoint is written, exit 143 / 130 (train.checkpoint_on_signal). Any other
    stop is one message, the traceback in train.out_dir/error.log: exit 2 for bad input or the
    machine (config, data, disk, permissions, the run's own stops), 1 for a bug.
    """
    from iprime.config import ConfigError, load_config

    try:
        cfg = load_config(config, shortcut_overrides(list(ctx.args), model=model, data=data))
    except ConfigError as err:
        _fail("config error", err)
    if world_size is not None and not dry_run:
        _fail("error", "--world-size is for --dry-run; a run takes its world size from torchrun")
    if allow_change:
        from iprime.train.identity import check_allowed_keys

        if not resume:
            _fail("error", "--allow-change is for --resume: a new run has no saved config to change")
        try:
            check_allowed_keys(allow_change)
        except ConfigError as err:
            _fail("config error", err)
    if dry_run:  # every problem in one report, a missing model or data included
        raise typer.Exit(_dry_run(cfg, world_size, resume=resume, overwrite=overwrite, config_file=config))
    if not cfg.model.policy:
        _fail("config error", "model.policy: set the path (or hub id) of the SFT model (--model PATH)")
    if not cfg.data.train_path:
        _fail("config error", "data.train_path: set the training data (file, directory or hf:NAME; --data PATH)")
    _preflight(cfg)
    lock = None
    if is_main_process():  # rank 0 alone locks, looks at (and may delete) the folder the run writes
        try:
            lock, note = claim_out_dir(cfg.train.out_dir, resume=resume, overwrite=overwrite, config_file=config)
        except (OutDirError, RunLockedError) as err:
            _fail("error", err)
        if note:
            say(note)
    from iprime.clean_stop import clean_stop
    from iprime.train.signals import interrupt_on_signals

    try:  # from here every failure is one message and exit 2 (1: a bug), the traceback in out_dir/error.log
        with clean_stop(Path(cfg.train.out_dir), say) as state, interrupt_on_signals():
            _train_run(cfg, resume, allow_change, state)
    finally:  # the lock goes with the process anyway; a clean end also removes its file
        if lock is not None:
            lock.release()


def _train_run(cfg, resume: bool, allow_change: list[str], state) -> None:
    """``iprime train`` once the run folder is this process's: read the data, build the trainer,
    train, save and print where the final models are. ``state``: the clean stop's
    (:func:`iprime.clean_stop.clean_stop`), told when training has started."""
    from iprime.train.identity import ConfigChangeError
    from iprime.train.prime import PrimeTrainer
    from iprime.train.progress import empty_steps_summary

    out_dir = Path(cfg.train.out_dir)
    try:  # every row is read and checked before the model loads
        records = read_records(cfg.data.train_path, max_row_bytes=cfg.data.max_row_bytes)
        _preflight_sandbox(cfg, records)
        trainer = PrimeTrainer(cfg.model.policy, cfg, records, log=say)
    except (DataError, FileNotFoundError) as err:
        _fail("data error", err)
    except ValueError as err:  # e.g. train.eval_every with nothing to evaluate
        _fail("error", err)
    state.running = True
    try:
        history = trainer.train(resume=resume, progress=cfg.train.progress, allow_change=allow_change)
    except ConfigChangeError as err:  # a resume that would change the run: nothing was written
        _fail("resume refused", err)
    final = trainer.save_pretrained(out_dir / "final")
    if not trainer.dist.is_main:
        return
    # a run that trained little must not end as if all went well
    if empty := empty_steps_summary(cfg, history, out_dir):
        say(("warning: ", "yellow"), empty)
    trained = not history or any(not m.get("empty") for m in history)
    for line in final_model_lines(final, trainer.prm is not None, trained=trained):
        say(line)
    if cfg.train.push_to_hub:
        try:
            urls = push_final(final, cfg.train.push_to_hub, cfg.train.hub_private)
        except Exception as err:  # the network, a token, the hub: the run itself is saved
            say(("push to the hub failed: ", "red"), f"{err}; the models are in {final}")
            raise typer.Exit(1) from None
        for url in urls:
            say(f"pushed: {url}")


SHORTCUTS = {"model": "model.policy", "data": "data.train_path"}
"""``iprime train``'s options that stand for a config key: ``--model`` and ``--data``."""


def shortcut_overrides(overrides: list[str], **given: str | None) -> list[str]:
    """``overrides`` with ``--model`` / ``--data`` (``given``, by option name) as the dotted
    overrides they stand for (:data:`SHORTCUTS`), put last. Raises :class:`ConfigError` when an
    option and its key are both given (which of the two was meant is not for us to guess)."""
    from iprime.config import ConfigError

    extra = []
    for option, value in given.items():
        if value is None:
            continue
        key = SHORTCUTS[option]
        if any(o.split("=", 1)[0].strip() == key for o in overrides):
            raise ConfigError(f"--{option} sets {key}: give one of --{option} and {key}=")
        extra.append(f"{key}={value}")
    return [*overrides, *extra]


def is_node_main() -> bool:
    """True for the first rank on each node (torchrun's ``LOCAL_RANK`` 0, or no torchrun): it
    prints the pre-flight report of its node's machine."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def _preflight(cfg) -> None:
    """The pre-flight check of the machine (:func:`iprime.preflight.machine_report`) before
    anything is touched: every problem in one message and exit 2; warnings printed, the run goes on."""
    from iprime import preflight as pf

    machine = pf.probe_machine(cfg.model.device)
    report, _ = pf.machine_report(cfg, machine, pf.model_size(cfg.model.policy))
    if is_node_main() and (report.problems or report.warnings):
        say(report.text())
    if report.problems:
        raise typer.Exit(2)


def _preflight_sandbox(cfg, records) -> None:
    """Code rows need the code sandbox: find out before the model loads, not at the first code sample."""
    from iprime import preflight as pf

    d = cfg.data
    keys = {"reference_key": d.reference_key, "ability_key": d.ability_key, "source_key": d.source_key}
    hooks = verifier_hooks(**keys, verifier=d.verifier)
    counts = verifier_counts([r.row for r in records], hooks, d.source_key, d.ability_key)
    problems = pf.sandbox_findings(counts, pf.sandbox_reason() if counts.get(pf.CODE_VERIFIER) else None)
    if problems:
        say(pf.Report(problems=problems).text())
        raise typer.Exit(2)


def _dry_run(cfg, world_size: int | None, *, resume: bool, overwrite: bool, config_file: str | None) -> int:
    """``iprime train --dry-run``: the pre-flight check and the data check, in one report; no
    model is loaded and nothing is written. Returns the exit status (0 or 2)."""
    from iprime import preflight as pf

    machine = pf.probe_machine(cfg.model.device, world_size)
    try:
        if not cfg.data.train_path:
            raise DataError("not set: give the training data (file, directory or hf:NAME)")
        scan = scan_data(cfg)
    except (DataError, FileNotFoundError, ImportError, ValueError, TypeError, OSError) as err:
        scan = err
    needs_sandbox = not isinstance(scan, Exception) and scan.verifiers.get(pf.CODE_VERIFIER)
    out_dir = None
    try:
        note = prepare_out_dir(
            cfg.train.out_dir, resume=resume, overwrite=overwrite, config_file=config_file, dry_run=True
        )
    except OutDirError as err:
        out_dir, note = pf.Finding(f"train.out_dir={cfg.train.out_dir}", str(err)), None
    if out_dir is None and (why := writable_finding(Path(cfg.train.out_dir))):
        out_dir = pf.Finding(f"train.out_dir={cfg.train.out_dir}", why, "set another train.out_dir")
    report = pf.dry_run_report(
        cfg, machine, pf.model_size(cfg.model.policy), scan, pf.sandbox_reason() if needs_sandbox else None, out_dir
    )
    if note:
        report.summary.append(f"  {note}")
    if is_node_main():
        say(report.text("pre-flight check (iprime train --dry-run)"))
    return 0 if report.ok else 2


# -------------------------------------------------------------------------------------- iprime sft
SFT_EXAMPLES = """Examples:
iprime sft --model Qwen/Qwen2.5-Math-7B --data sft.jsonl --out runs/sft
iprime sft --model DIR --data sft.jsonl --out runs/sft --lr 2e-5 --epochs 3 --max-length 2048 --batch-size 16
iprime sft --model DIR --data sft.jsonl --out runs/sft --save-every 200          (a checkpoint every 200 steps)
iprime sft --model DIR --data sft.jsonl --out runs/sft --save-every 200 --resume (continue from the newest)
torchrun --nproc_per_node=8 -m iprime sft --model DIR --data sft.jsonl --out runs/sft --device cuda --batch-size 64"""

SFT_SUMMARY_KEYS = (
    "steps",
    "epochs",
    "examples",
    "response_tokens",
    "truncated",
    "first_loss",
    "final_loss",
    "train_time_s",
)
"""The numbers ``iprime sft`` prints at the end."""


def check_sft_out(out: Path, *, resume: bool) -> None:
    """``--out`` for ``iprime sft``: with ``--resume`` it must hold a checkpoint; without, it must
    hold none (a new run would mix its checkpoints with an earlier run's). :class:`OutDirError`."""
    found = resume_candidates(out)
    if resume and not found:
        raise OutDirError(f"--resume: no checkpoint in {out / 'checkpoints'} to continue from; start without --resume")
    if not resume and found:
        raise OutDirError(
            f"--out {out} holds the checkpoints of an earlier run ({found[0].name}): continue it with --resume, "
            "or choose another --out"
        )


@app.command(epilog=SFT_EXAMPLES)
def sft(
    model: str = typer.Option(..., help="path of the model to fine-tune"),
    data: str = typer.Option(..., help="jsonl with prompt/response (or messages) rows"),
    out: str = typer.Option(..., help="where to save the fine-tuned model (and metrics.jsonl, checkpoints/)"),
    lr: float = typer.Option(
        1e-5, help="peak learning rate, right for fine-tuning a pretrained LLM (the quickstart's tiny model uses 3e-3)"
    ),
    epochs: float = typer.Option(1.0, help="passes over the data"),
    max_steps: int = typer.Option(None, help="optimizer steps (default: from --epochs)"),
    batch_size: int = typer.Option(
        32, help="examples per optimizer step, over all ranks under torchrun (a multiple of their number)"
    ),
    max_length: int = typer.Option(
        256, help="prompt + response tokens per example; a longer response loses its tail (counted as truncated)"
    ),
    seed: int = typer.Option(0),
    log_every: int = typer.Option(25, help="a progress line and a metrics.jsonl record every this many steps"),
    save_every: int = typer.Option(0, help="a checkpoint in OUT/checkpoints every this many steps and at the end"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in --out"),
    device: str = typer.Option("cpu", help="cpu, or cuda (under torchrun each rank takes cuda:LOCAL_RANK)"),
) -> None:
    """Supervised fine-tuning, loss on response tokens only; in one process or under torchrun.

    The settings, the world size and every data row are checked before the model loads. Under
    torchrun the model is FSDP2-sharded and each rank trains on its share of every global batch:
    the same loss curve as one process. With --save-every a run can be resumed (--resume).
    """
    from iprime.train.sft import SFTConfig, check_world_size

    try:
        config = SFTConfig(
            lr=lr,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            max_length=max_length,
            seed=seed,
            log_every=log_every,
            save_every=save_every,
        )
        check_world_size(config, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as err:
        _fail("config error", err)
    lock = None
    try:
        check_sft_out(Path(out), resume=resume)
        if is_main_process():  # one writer per --out, as for iprime train (iprime.train.run_lock)
            lock = acquire_run_lock(out, "iprime sft")
    except (OutDirError, RunLockedError) as err:
        _fail("error", err)
    from iprime.clean_stop import clean_stop

    try:
        with clean_stop(Path(out), say):  # every failure: one message, exit 2 (1: a bug), out/error.log
            tokenizer, sft_data = _sft_data(model, data, config.max_length)
            run, summary = _sft_run(model, sft_data, config, out, device, resume)
            run.save_pretrained(out, tokenizer)
    finally:
        if lock is not None:
            lock.release()
    if run.dist.is_main:
        console.print(metrics_table(summary, "SFT", keys=SFT_SUMMARY_KEYS))
        say(f"saved the fine-tuned model to {out}")


def _sft_data(model: str, data: str, max_length: int):
    """The tokenizer, and every row read, encoded and checked: before any model loads."""
    from iprime.models import load_tokenizer
    from iprime.train.sft import load_sft_rows, prepare_sft_data

    try:
        rows = load_sft_rows(data)
    except (ValueError, FileNotFoundError) as err:
        _fail("data error", err)
    try:
        tokenizer = load_tokenizer(model)
    except (ValueError, OSError) as err:
        _fail("error", err)
    try:
        return tokenizer, prepare_sft_data(tokenizer, rows, max_length)
    except ValueError as err:
        _fail("data error", f"{data}: {err}")


def _sft_run(model: str, sft_data, config, out: str, device: str, resume: bool):
    """Join the process group (under torchrun), load the model on this rank's device, train:
    ``(run, summary)``."""
    from iprime.models import load_model
    from iprime.train.distributed import init_distributed
    from iprime.train.sft import SFTRun

    try:
        dist, dev = init_distributed(device)
        run = SFTRun(load_model(model, device=dev), sft_data, config, out_dir=out, dist=dist, model_source=model)
        return run, run.train(resume=resume, progress="auto")
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        _fail("error", err)


# Evaluation and the implicit PRM as a tool (their options live beside their code). Re-ranking
# samples with a PRM is evaluation: its command lives in iprime.eval and joins the prm group here.
from iprime.config_show import config_app  # noqa: E402
from iprime.data_check import data_app, scan_data, verifier_counts, verifier_hooks  # noqa: E402
from iprime.eval.commands import EVAL_EXAMPLES, RERANK_EXAMPLES, eval_command, rerank_command  # noqa: E402
from iprime.plots import plot_command  # noqa: E402
from iprime.prm.commands import prm_app  # noqa: E402
from iprime.starter import EXAMPLE_EPILOG, example_command, model_app  # noqa: E402
from iprime.train.export import export_command, push_to_hub  # noqa: E402


@functools.wraps(eval_command)
def eval_checked(**options) -> None:
    """``iprime eval`` after the pre-flight check of its device: with ``--device cuda`` a GPU
    (and bfloat16 on it for ``--dtype bfloat16``), found before the model loads."""
    device = options["device"]
    if device.startswith("cuda"):
        from iprime import preflight as pf

        bf16 = ("--dtype=bfloat16", "--dtype=float32") if options["dtype"] == "bfloat16" else None
        problems = pf.device_findings(device, pf.probe_machine(device), key="--device", bf16=bf16)
        if problems:
            say(pf.Report(problems=problems).text("pre-flight check (iprime eval)"))
            raise typer.Exit(2)
    eval_command(**options)


app.command("eval", epilog=EVAL_EXAMPLES)(eval_checked)
prm_app.command("rerank", epilog=RERANK_EXAMPLES)(rerank_command)
app.command("export")(export_command)
app.command(
    "plot",
    epilog="Examples:\niprime plot runs/prime                      (writes runs/prime/plots.png)\n"
    "iprime plot runs/prime -k prm/pairwise_acc -k rollout/acc_before_filter -o acc.png",
)(plot_command)
app.add_typer(prm_app, name="prm")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
data_app.command("example", epilog=EXAMPLE_EPILOG)(example_command)
app.add_typer(model_app, name="model")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
