"""`kd distill-online` through Typer's CliRunner: a real run read back by `kd evaluate`, presets, and bad input."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.presets import methods_of, resolve_config

runner = CliRunner()
FAST = ["--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--device", "cpu"]


def kd(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_help_lists_the_command_and_its_methods():
    assert "distill-online" in kd("--help").output
    assert {"dml", "cl", "one", "okddip", "independent"} <= set(methods_of("distill-online"))
    result = kd("distill-online", "--help")
    assert result.exit_code == 0 and "--split-at" in result.output and "--preset" in result.output


def test_run_then_evaluate_shows_the_same_rows_and_baseline_rows(tmp_path):
    base = kd("distill-online", "--method", "independent", *FAST, "--out", "base", "--quiet")
    assert base.exit_code == 0, base.output
    assert "mean of peers" in base.output and "ensemble" in base.output
    run = kd("distill-online", "--method", "okddip", "--model", "lenet5", "--split-at", "stage3", *FAST,
             "--param", "detach_targets=false", "--baseline", "base", "--out", "ok", "--json")
    assert run.exit_code == 0, run.output
    result = json.loads(run.output)
    assert result["params"]["detach_targets"] is False and result["params"]["split_at"] == "stage3"
    assert result["primary"] == "leader"
    assert [row["role"] for row in result["baseline"]] == ["base:peer0", "base:peer1", "base:ensemble"]
    evaluated = json.loads(kd("evaluate", "base", "ok", "--json", "--no-latency").output)["models"]
    assert [(Path(r["run"]).name, r["role"]) for r in evaluated] == [
        ("base", "peer0"), ("base", "peer1"), ("base", "ensemble"),
        ("ok", "peer0"), ("ok", "peer1"), ("ok", "peer2"), ("ok", "leader"), ("ok", "ensemble"),
    ]
    for row in evaluated[3:]:
        assert row["top1"] == pytest.approx(result["metrics"]["test"][row["role"]]["top1"], abs=1e-9)


@pytest.mark.parametrize("method", ["dml", "cl", "one", "okddip", "independent"])
def test_paper_preset_is_the_papers_protocol(method):
    config = resolve_config("distill-online", method, preset="paper")
    assert config.model == "resnet32" and config.optim.lr == 0.1 and config.optim.schedule == "step"
    assert config.optim.momentum == 0.9 and config.optim.gamma == 0.1
    epochs, milestones = (200, [60, 120, 180]) if method in ("dml", "independent") else (300, [150, 225])
    assert (config.train.epochs, config.optim.milestones) == (epochs, milestones)
    if method in ("one", "okddip"):
        assert config.method_params["ramp_epochs"] == 80.0
    if method == "dml":
        assert config.method_params["update"] == "alternating"  # the paper's Algorithm 1
    assert config.optim.weight_decay == (1e-4 if method == "one" else 5e-4)
    # flags still win over the preset
    config = resolve_config("distill-online", method, preset="paper", flags={"epochs": 3})
    assert config.train.epochs == 3


def _assert_clean_error(result, pattern: str, tmp: Path):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert pattern in lines[0], lines[0]
    assert not (tmp / "runs").exists() and not (tmp / "x").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--method", "dml", "--peers", "1"], "at least 2 peers"),
        (["--method", "dmll"], "Did you mean dml"),
        (["--method", "kd"], "not an online method"),
        (["--method", "one", "--model", "lenet5", "--split-at", "stage5"], "beyond lenet5's depth"),
        (["--method", "okddip", "--model", "resnet20", "--split-at", "stage4"], "beyond resnet20's depth"),
        (["--method", "dml", "--split-at", "stage3"], "has no parameter 'split_at'"),
        (["--method", "cl", "--models", "lenet5,lenet5-half"], "--models is for dml"),
        (["--method", "dml", "--models", "lenet5,resnt20"], "Did you mean"),
        (["--method", "dml", "--update", "sometimes"], "--update must be"),
        (["--method", "one", "--preset", "fast"], "no 'fast' preset"),
        (["--method", "cl", "--param", "ilr"], "KEY=VALUE"),
        (["--method", "cl", "--param", "ilr=maybe"], "ilr must be bool"),
        (["--method", "dml", "--baseline", "nowhere"], "not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, pattern):
    _assert_clean_error(kd("distill-online", *args, "--device", "cpu", "--out", "x"), pattern, tmp_path)
