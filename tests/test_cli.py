"""The command line entry point."""

from typer.testing import CliRunner

from iprime.cli import app


def test_algo_demo_prints_the_worked_group():
    result = CliRunner().invoke(app, ["algo-demo", "--beta", "0.5"])
    assert result.exit_code == 0, result.output
    assert "PRIME on one group" in result.output and "PRM CE loss: 0.5180" in result.output


def test_train_reports_config_errors_by_key():
    result = CliRunner().invoke(app, ["train", "algo.estimatr=rloo"])
    assert result.exit_code == 2 and "unknown config key 'algo.estimatr'" in result.output
    result = CliRunner().invoke(app, ["train", "rollout.n=abc"])
    assert result.exit_code == 2 and "rollout.n" in result.output


def test_train_needs_a_model_and_data():
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 2 and "model.policy" in result.output
