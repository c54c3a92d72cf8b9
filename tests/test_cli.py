"""The command line entry point."""

from typer.testing import CliRunner

from iprime.cli import app


def test_algo_demo_prints_the_worked_group():
    result = CliRunner().invoke(app, ["algo-demo", "--beta", "0.5"])
    assert result.exit_code == 0, result.output
    assert "PRIME on one group" in result.output and "PRM CE loss: 0.5180" in result.output
