"""Options users reached for: --nesterov/--no-nesterov, --model-arg, and the start-of-run line that says
what was resolved (in a terminal and in a log file alike)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.cli.options import parse_model_args
from kdcli.errors import KDError

runner = CliRunner()


def kd(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_model_args_are_python_values():
    assert parse_model_args(["width=16", "dropout=0.1", "pretrained=false", "name=small", "sizes=[1, 2]",
                             "extra=none"]) == {"width": 16, "dropout": 0.1, "pretrained": False, "name": "small",
                                                "sizes": [1, 2], "extra": None}
    for bad in ("width", "=3", "my-width=3"):
        with pytest.raises(KDError, match="--model-arg takes KEY=VALUE"):
            parse_model_args([bad])


@pytest.mark.parametrize("flag,expected", [("--nesterov", True), ("--no-nesterov", False)])
def test_nesterov_can_be_switched_either_way(flag, expected, tmp_path):
    result = kd("train-teacher", "--model", "lenet5", "--epochs", "1", "--device", "cpu", flag, "--out", "t",
                "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t" / "run.json").read_text())["config"]["optim"]["nesterov"] is expected


def test_the_start_line_states_what_was_resolved_and_what_changed(tmp_path):
    """stderr is not a terminal here (as in a log file): the line is printed all the same."""
    result = kd("train-teacher", "--model", "lenet5", "--epochs", "1", "--device", "cpu", "--val-fraction", "0",
                "--no-nesterov", "--out", "t")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "train-teacher supervised (preset quick): lenet5 on digits · 1 epochs × 22 steps, batch 64" in text
    assert "sgd lr 0.02 (momentum 0.9, weight decay 0.0005), cosine schedule, 1-epoch warm-up" in text
    assert "no validation split (--val-fraction 0): 1438 train images" in text
    assert "adjusted: lr 0.1 → 0.02: lenet5 has no BatchNorm; warmup_epochs 0 → 1: lenet5 has no BatchNorm" in text
    given = kd("train-teacher", "--model", "resnet20", "--epochs", "1", "--device", "cpu", "--lr", "0.05",
               "--schedule", "step", "--milestones", "1", "--out", "r")
    text = " ".join(given.output.split())
    assert "sgd lr 0.05 (Nesterov momentum 0.9" in text and "×0.1 at epochs 1, no warm-up" in text
    assert "validation 0.1 of train (143 images, 1295 left to train)" in text and "adjusted" not in text
