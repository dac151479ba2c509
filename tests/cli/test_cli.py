"""The `kd` command through Typer's CliRunner: real runs on digits, and every bad input."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcli.cli import app

runner = CliRunner()


def kd(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_help_lists_every_command():
    result = kd("--help")
    assert result.exit_code == 0
    for command in ("train-teacher", "distill", "evaluate", "list"):
        assert command in result.output


def test_train_distill_evaluate_end_to_end(tmp_path):
    t = kd("train-teacher", "--epochs", "5", "--model", "resnet20", "--device", "cpu", "--out", "t", "--quiet")
    assert t.exit_code == 0, t.output
    assert "test top-1" in t.output
    s = kd("distill", "--teacher", "t", "--epochs", "15", "--device", "cpu", "--out", "s", "--json")
    assert s.exit_code == 0, s.output
    result = json.loads(s.output)
    assert result["metrics"]["test"]["student"]["top1"] > 0.7
    e = kd("evaluate", "t", "s", "--json", "--no-latency")
    assert e.exit_code == 0, e.output
    rows = json.loads(e.output)["models"]
    assert [(r["run"], r["role"]) for r in rows] == [("t", "teacher"), ("s", "student")]
    assert rows[1]["agreement"] == pytest.approx(result["metrics"]["agreement"]["student"])
    assert rows[1]["top1"] == pytest.approx(result["metrics"]["test"]["student"]["top1"])
    assert rows[0]["params"] > rows[1]["params"] and rows[0]["size_bytes"] > 0
    table = kd("evaluate", "t", "s")
    assert table.exit_code == 0 and "CPU ms/img" in table.output


def test_list_shows_models_datasets_methods():
    result = kd("list", "--json")
    assert result.exit_code == 0
    listing = json.loads(result.output)
    assert {"resnet32", "lenet5"} <= {m["name"] for m in listing["models"]}
    assert {"digits", "mnist", "cifar10"} <= {d["name"] for d in listing["datasets"]}
    assert {"supervised", "kd"} <= {m["name"] for m in listing["methods"]}
    assert kd("list", "modles").exit_code == 2


def _assert_clean_error(result, pattern: str, tmp: Path):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not (tmp / "runs").exists() and not (tmp / "x").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "args,pattern",
    [
        (["train-teacher", "--dataset", "mnits"], "Did you mean mnist"),
        (["train-teacher", "--model", "resnet23"], "Did you mean"),
        (["train-teacher", "--epochs", "0"], "--epochs must be positive"),
        (["train-teacher", "--batch-size", "-4"], "--batch-size must be positive"),
        (["train-teacher", "--lr", "0"], "--lr must be positive"),
        (["distill", "--teacher", "nowhere"], "not found"),
        (["evaluate", "nowhere"], "not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, pattern):
    _assert_clean_error(kd(*args, *(["--out", "x"] if args[0] != "evaluate" else [])), pattern, tmp_path)


@pytest.mark.bad_input
def test_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_clean_error(kd("evaluate", "empty"), "not a kd run directory", tmp_path)
    _assert_clean_error(kd("distill", "--teacher", "empty", "--out", "x"), "not a kd run directory", tmp_path)


@pytest.mark.bad_input
def test_corrupt_checkpoint_in_a_run(tmp_path, teacher_run):
    import shutil

    shutil.copytree(teacher_run, tmp_path / "broken")
    weights = tmp_path / "broken" / "teacher.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    _assert_clean_error(kd("evaluate", "broken"), "safetensors", tmp_path)
    _assert_clean_error(kd("distill", "--teacher", "broken", "--out", "x"), "safetensors", tmp_path)


@pytest.mark.bad_input
def test_teacher_dataset_mismatch(tmp_path, teacher_run):
    _assert_clean_error(
        kd("distill", "--teacher", str(teacher_run), "--dataset", "fake-1-8-5", "--out", "x"), "does not fit", tmp_path
    )
    _assert_clean_error(kd("evaluate", str(teacher_run), "--dataset", "fake-1-8-5"), "cannot evaluate", tmp_path)


@pytest.mark.bad_input
def test_existing_out_needs_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    result = kd("train-teacher", "--out", "x", "--epochs", "1")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "x" / "keep").read_text() == "mine"


def test_debug_env_shows_traceback(monkeypatch):
    monkeypatch.setenv("KD_DEBUG", "1")
    result = kd("train-teacher", "--dataset", "mnits")
    assert result.exit_code != 0 and result.exception is not None
