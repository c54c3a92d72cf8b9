"""The ``iprime`` command line."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="PRIME: process reinforcement through implicit rewards."
)
console = Console()


@app.callback()
def _root() -> None:
    """iprime: train LLM reasoning with implicit process rewards, and serve the implicit PRM."""


@app.command("algo-demo")
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
    console.print(f"group kept by the [0.2, 0.8] accuracy filter: {bool(keep.all())}; PRM CE loss: {loss.item():.4f}")


@app.command()
def quickstart(
    out: str = typer.Option("runs/quickstart", help="output directory (replaced)"),
    override: list[str] = typer.Option([], "--set", help="PRIME config override, e.g. train.steps=10"),
) -> None:
    """Tiny model -> SFT on the built-in task -> evaluate -> PRIME -> evaluate, on the CPU."""
    from iprime.quickstart import run_quickstart

    run_quickstart(out, extra_overrides=tuple(override), log=console.print)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: str = typer.Option(None, "--config", help="YAML config file"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in train.out_dir"),
) -> None:
    """Run PRIME (or a baseline): iprime train --config FILE.yaml [dotted.key=value ...]."""
    from iprime.config import ConfigError, load_config

    try:
        cfg = load_config(config, list(ctx.args))
    except ConfigError as err:
        console.print(f"[red]config error:[/red] {err}")
        raise typer.Exit(2) from None
    if not cfg.model.policy:
        console.print("[red]config error:[/red] model.policy: set the path (or hub id) of the SFT model")
        raise typer.Exit(2)
    if not cfg.data.train_path:
        console.print("[red]config error:[/red] data.train_path: set the training data (file, directory or hf:NAME)")
        raise typer.Exit(2)
    from iprime.data.sources import DataError, read_records
    from iprime.train.prime import PrimeTrainer

    try:  # every row is read and checked before the model loads
        records = read_records(cfg.data.train_path, max_row_bytes=cfg.data.max_row_bytes)
        trainer = PrimeTrainer(cfg.model.policy, cfg, records)
    except (DataError, FileNotFoundError) as err:
        console.print(f"[red]data error:[/red] {err}")
        raise typer.Exit(2) from None
    trainer.train(resume=resume)
    trainer.save_pretrained(Path(cfg.train.out_dir) / "final")


@app.command()
def sft(
    model: str = typer.Option(..., help="path of the model to fine-tune"),
    data: str = typer.Option(..., help="jsonl with prompt/response (or messages) rows"),
    out: str = typer.Option(..., help="where to save the fine-tuned model"),
    lr: float = 1e-3,
    epochs: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
) -> None:
    """Supervised fine-tuning, loss on response tokens only."""
    from iprime.models import load_model, load_tokenizer
    from iprime.train.sft import SFTConfig, load_sft_rows, run_sft

    rows = load_sft_rows(data)
    m, tok = load_model(model), load_tokenizer(model)
    result = run_sft(
        m, tok, rows, SFTConfig(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed), log=lambda r: console.print(r)
    )
    m.save_pretrained(out)
    tok.save_pretrained(out)
    console.print(f"final loss {result['final_loss']:.4f}; saved to {out}")


# Evaluation and the implicit PRM as a tool (their options live beside their code). Re-ranking
# samples with a PRM is evaluation: its command lives in iprime.eval and joins the prm group here.
from iprime.config_show import config_app  # noqa: E402
from iprime.data.commands import data_app  # noqa: E402
from iprime.eval.commands import eval_command, rerank_command  # noqa: E402
from iprime.prm.commands import prm_app  # noqa: E402

app.command("eval")(eval_command)
prm_app.command("rerank")(rerank_command)
app.add_typer(prm_app, name="prm")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
