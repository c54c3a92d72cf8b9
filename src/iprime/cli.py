"""The ``iprime`` command line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="PRIME: process reinforcement through implicit rewards.")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
