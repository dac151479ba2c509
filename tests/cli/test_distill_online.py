"""`kd distill-online` through Typer's CliRunner: a real run read back by `kd evaluate`, presets, and bad input."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.presets import methods_of

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
    base = kd("distill-online", "--method", "independent", "--peers", "4", *FAST, "--out", "base", "--quiet")
    assert base.exit_code == 0, base.output
    assert "mean of peers" in base.output and "ensemble" in base.output
    run = kd("distill-online", "--method", "okddip", "--model", "lenet5", "--split-at", "stage3", *FAST,
             "--param", "detach_targets=false", "--baseline", "base", "--out", "ok", "--json")
    assert run.exit_code == 0, run.output
    result = json.loads(run.output)
    assert result["params"]["detach_targets"] is False and result["params"]["split_at"] == "stage3"
    assert result["primary"] == "leader"
    assert [row["role"] for row in result["baseline"]] == [f"base:peer{i}" for i in range(4)] + ["base:ensemble"]
    evaluated = json.loads(kd("evaluate", "base", "ok", "--json", "--no-latency").output)["models"]
    assert [(Path(r["run"]).name, r["role"]) for r in evaluated] == [
        ("base", "peer0"), ("base", "peer1"), ("base", "peer2"), ("base", "peer3"), ("base", "ensemble"),
        ("ok", "peer0"), ("ok", "peer1"), ("ok", "peer2"), ("ok", "leader"), ("ok", "ensemble"),
    ]
    for row in evaluated[5:]:
        assert row["top1"] == pytest.approx(result["metrics"]["test"][row["role"]]["top1"], abs=1e-9)


def test_a_baseline_under_another_budget_is_refused_before_anything_runs(tmp_path):
    base = kd("distill-online", "--method", "independent", *FAST, "--out", "base", "--quiet")
    assert base.exit_code == 0, base.output
    for args, pattern in [
        (["--method", "dml", "--epochs", "2"], "epochs 2 vs 1"),  # a longer schedule
        (["--method", "one", "--split-at", "stage3"], "members 3 vs 2"),  # three branches against two peers
        (["--method", "dml", "--preset", "paper", "--model", "lenet5"], "val_fraction 0 vs 0.1"),
    ]:
        run = kd("distill-online", *FAST, *args, "--baseline", "base", "--out", "x")  # the last value given wins
        _assert_clean_error(run, pattern, tmp_path)
    same = kd("distill-online", "--method", "dml", *FAST, "--baseline", "base", "--out", "dml", "--json")
    assert same.exit_code == 0, same.output
    # kd evaluate --baseline: the same check, the baseline's rows first
    evaluated = kd("evaluate", "dml", "--baseline", "base", "--json", "--no-latency")
    assert evaluated.exit_code == 0, evaluated.output
    assert [Path(r["run"]).name for r in json.loads(evaluated.output)["models"]] == ["base"] * 3 + ["dml"] * 3
    three = kd("distill-online", "--method", "independent", "--peers", "3", *FAST, "--out", "three", "--quiet")
    assert three.exit_code == 0, three.output
    _assert_clean_error(kd("evaluate", "dml", "three", "--baseline", "base"), "three and --baseline base trained "
                        "under different budgets (members 3 vs 2)", tmp_path)


def test_a_shortened_paper_run_says_what_it_scaled_and_records_it(tmp_path):
    result = kd("distill-online", "--method", "okddip", "--preset", "paper", "--model", "lenet5", "--split-at",
                "stage3", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--out", "short")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the start line says what resolution scaled
    assert "milestones 150,225 → 0.5,0.75: the paper preset is 300 epochs, this run 1" in said
    assert "method.ramp_epochs 80 → 0.266667: the paper preset is 300 epochs" in said
    info = json.loads((tmp_path / "short" / "run.json").read_text())
    assert info["config"]["optim"]["milestones"] == [0.5, 0.75] and info["params"]["ramp_epochs"] == 0.266667
    assert set(info["config"]["adjusted"]) >= {"milestones", "method.ramp_epochs"}
    assert info["config"]["data"]["val_fraction"] == 0.0 and info["config"]["train"]["precision"] == "fp32"


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
