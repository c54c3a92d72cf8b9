"""iprime.optim: the one learning-rate schedule and the one supervised optimizer loop."""

from __future__ import annotations

import math

import pytest
import torch

from iprime.optim import fit, lr_factor

# ---------------------------------------------------------------- lr_factor


@pytest.mark.parametrize(
    "step, total, warmup, schedule, min_ratio, expected",
    [
        (0, 100, 10, "cosine", 0.1, 0.1),  # warm-up: (0 + 1) / 10
        (4, 100, 10, "linear", 0.0, 0.5),  # (4 + 1) / 10
        (9, 100, 10, "constant", 0.0, 1.0),  # the last warm-up step reaches 1
        (10, 100, 10, "linear", 0.1, 1.0),  # progress 0
        (55, 100, 10, "linear", 0.0, 0.5),  # progress 45 / 90 = 0.5
        (55, 100, 10, "linear", 0.1, 0.55),  # 0.1 + 0.9 * 0.5
        (55, 100, 10, "cosine", 0.0, 0.5),  # (1 + cos(pi / 2)) / 2
        (55, 100, 10, "cosine", 0.1, 0.55),
        (40, 100, 10, "cosine", 0.0, 0.75),  # progress 1/3: (1 + cos(pi / 3)) / 2 = 0.75
        (40, 100, 10, "cosine", 0.2, 0.8),  # 0.2 + 0.8 * 0.75
        (100, 100, 10, "cosine", 0.1, 0.1),  # the end: min_ratio
        (100, 100, 10, "linear", 0.0, 0.0),
        (150, 100, 10, "linear", 0.0, 0.0),  # past the end the factor stays put
        (150, 100, 10, "cosine", 0.3, 0.3),
        (500, 100, 10, "constant", 0.5, 1.0),
        (0, 4, 0, "linear", 0.0, 1.0),  # no warm-up: 1, 0.75, 0.5, 0.25
        (1, 4, 0, "linear", 0.0, 0.75),
        (3, 4, 0, "linear", 0.0, 0.25),
        (12, 5, 10, "linear", 0.2, 0.2),  # total <= warmup: decayed at once after warm-up
    ],
)
def test_lr_factor_hand_computed(step, total, warmup, schedule, min_ratio, expected):
    assert lr_factor(step, total, warmup, schedule, min_ratio) == pytest.approx(expected, abs=1e-12)


def test_lr_factor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, 0, "step")
    with pytest.raises(ValueError, match="warmup"):
        lr_factor(0, 10, -1, "constant")
    with pytest.raises(ValueError, match="min_ratio"):
        lr_factor(0, 10, 0, "cosine", 1.5)


# The two schedules lr_factor replaced, frozen here as they were: it must reproduce both exactly.
def _sft_before(step, total, warmup, schedule, lo):
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return lo + (1.0 - lo) * (1.0 - progress)
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _trainer_before(step, total, warmup, schedule):
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_factor_reproduces_the_sft_and_trainer_schedules_bitwise(schedule):
    for total in (1, 2, 7, 60, 800):
        for warmup in (0, 1, 5, 30):
            for step in range(total + 5):
                for lo in (0.0, 0.1, 0.37):
                    assert lr_factor(step, total, warmup, schedule, lo) == _sft_before(
                        step, total, warmup, schedule, lo
                    )
                assert lr_factor(step, total, warmup, schedule) == _trainer_before(step, total, warmup, schedule)


# ---------------------------------------------------------------- fit


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(12, 8, generator=g), torch.randn(12, 3, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 3)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)] * 3
    return model, batches


def _mse(model):
    return lambda b: torch.nn.functional.mse_loss(model(b[0]), b[1])


def test_fit_is_the_plain_loop_bitwise():
    """zero_grad -> backward -> clip -> step -> scheduler step, nothing else."""
    ref_model, batches = _problem()
    opt = torch.optim.AdamW(ref_model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 9, 2, "cosine", 0.1))
    ref_losses = []
    for batch in batches:
        loss = _mse(ref_model)(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(ref_model.parameters()), 0.5)
        opt.step()
        sched.step()
        ref_losses.append(loss.item())

    model, batches = _problem()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 9, 2, "cosine", 0.1))
    result = fit(list(model.parameters()), opt, iter(batches), _mse(model), 9, scheduler=sched, grad_clip=0.5)
    assert result.losses == ref_losses
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref_model.parameters()))
    assert result.last_window_loss == ref_losses[-1]  # log_every=1: the window is the last step


def test_fit_logs_window_means_at_its_cadence():
    model, batches = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    logs = []
    result = fit(list(model.parameters()), opt, batches, _mse(model), 5, log_every=2, log=logs.append)
    losses = result.losses
    assert [r["step"] for r in logs] == [2, 4, 5]
    assert [r["loss"] for r in logs] == [(losses[0] + losses[1]) / 2, (losses[2] + losses[3]) / 2, losses[4]]
    assert list(logs[0]) == ["step", "loss", "elapsed_s"]  # no scheduler, no token counts
    assert result.last_window_loss == losses[4]

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    logs = []
    fit(
        list(model.parameters()),
        opt,
        batches,
        _mse(model),
        2,
        scheduler=sched,
        log_every=2,
        log=logs.append,
        count_tokens=lambda b: b[0].shape[0],
    )
    assert list(logs[0]) == ["step", "loss", "lr", "tokens_per_s", "elapsed_s"]
    assert logs[0]["lr"] == pytest.approx(0.005) and logs[0]["tokens_per_s"] > 0


def test_fit_stops_on_a_non_finite_loss_before_updating():
    model, batches = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def loss_fn(batch):
        seen.append([p.detach().clone() for p in model.parameters()])
        loss = _mse(model)(batch)
        return loss * float("nan") if len(seen) == 3 else loss

    with pytest.raises(FloatingPointError, match="non-finite PRM loss at step 2"):
        fit(list(model.parameters()), opt, batches, loss_fn, 5, name="PRM loss")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), seen[2]))  # step 2 changed nothing


def test_fit_needs_enough_batches():
    model, batches = _problem()
    with pytest.raises(ValueError, match="ran out after 9 of 10"):
        fit(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1), batches, _mse(model), 10)


def test_fit_resumed_from_done_steps_logs_and_ends_like_one_run():
    """9 steps, records every 4: stopped after step 6 (inside the second window) and resumed with
    ``done`` = the first 6 losses, the records of steps 8 and 9 are the uninterrupted run's; a
    run with every step done takes none and still reports the last window."""
    model, batches = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    logs, seen = [], []
    whole = fit(list(model.parameters()), opt, batches, _mse(model), 9, log_every=4, log=logs.append)

    model, batches = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fit(list(model.parameters()), opt, batches[:6], _mse(model), 6, log_every=4)
    resumed_logs = []
    resumed = fit(
        list(model.parameters()),
        opt,
        batches[6:],
        _mse(model),
        9,
        log_every=4,
        log=resumed_logs.append,
        done=whole.losses[:6],
        after_step=lambda step, losses: seen.append((step, len(losses))),
    )
    assert [r["step"] for r in resumed_logs] == [8, 9]
    assert [r["loss"] for r in resumed_logs] == [r["loss"] for r in logs[1:]]  # step 8: mean of steps 5..8
    assert resumed.losses == whole.losses and resumed.last_window_loss == whole.last_window_loss == whole.losses[8]
    assert seen == [(7, 7), (8, 8), (9, 9)]
    finished = fit(list(model.parameters()), opt, [], _mse(model), 9, log_every=4, done=whole.losses)
    assert finished.losses == whole.losses and finished.last_window_loss == whole.losses[8]
    finished = fit(list(model.parameters()), opt, [], _mse(model), 8, log_every=4, done=whole.losses[:8])
    assert finished.last_window_loss == sum(whole.losses[4:8]) / 4
    with pytest.raises(ValueError, match="10 steps are done already"):
        fit(list(model.parameters()), opt, [], _mse(model), 9, done=[0.0] * 10)


def test_fit_checks_and_logs_the_global_loss():
    """Under data parallelism ``loss_fn`` gives this process's part; ``global_loss`` the value
    logged and checked (here: the part doubled, and NaN at step 1)."""
    model, batches = _problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    parts = []

    def loss_fn(batch):
        parts.append(_mse(model)(batch))
        return parts[-1]

    result = fit(list(model.parameters()), opt, batches, loss_fn, 3, global_loss=lambda x: 2 * x)
    assert result.losses == [2 * p.item() for p in parts]
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1: nan"):
        fit(
            list(model.parameters()),
            opt,
            batches,
            loss_fn,
            3,
            global_loss=lambda x: x * float("nan") if len(parts) == 5 else x,
        )
