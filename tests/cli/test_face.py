"""The CLI face: version, -h, usage errors as one line, help with effective defaults, fast listing, log-friendly progress."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcli import __version__, progress
from kdcli.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def kd(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_version_and_short_help():
    assert kd("--version").output.strip() == f"kd {__version__}"
    for args in (["-h"], ["train-teacher", "-h"], ["list", "-h"]):
        result = kd(*args)
        assert result.exit_code == 0 and "Usage" in result.output, args


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "args,pattern",
    [
        (["train-teacher", "--seed", "abc"], "Invalid value for '--seed'"),
        (["train-teacher", "--epochz", "3"], "No such option: --epochz"),
        (["evaluate"], "Missing argument"),
        (["trian-teacher"], "No such command"),
        (["distill-online", "--peers"], "requires an argument"),
    ],
)
def test_usage_errors_are_one_line_with_a_hint_and_exit_2(args, pattern, tmp_path):
    result = kd(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert pattern in lines[0] and "--help" in lines[0], lines[0]
    assert "╭" not in result.output  # no boxed usage page
    assert not (tmp_path / "runs").exists()


def test_help_shows_effective_defaults_presets_and_examples():
    teacher = kd("train-teacher", "--help").output
    assert "[default: (30)]" in teacher and "[default: (resnet20)]" in teacher  # the quick preset, not None
    assert "Examples" in teacher and "kd train-teacher --dataset fashion-mnist" in teacher
    assert "supervised --preset quick" in teacher and "without BatchNorm" in teacher
    online = kd("distill-online", "--help").output
    assert "[default: (dml)]" in online and "dml --preset paper" in online and "okddip --preset paper" in online
    assert "dml 1, cl 2, one 3, okddip 3, codistill 1" in online  # --temperature differs by method
    datafree = kd("distill-datafree", "--help").output
    assert "[default: (dafl)]" in datafree and "[default: (the teacher's)]" not in datafree  # no --dataset here
    assert "zskd --preset paper on cifar10" in datafree


def test_evaluate_json_has_one_shape(teacher_run):
    plain = json.loads(kd("evaluate", str(teacher_run), "--json", "--no-latency").output)
    assert set(plain) == {"models", "churn"} and plain["churn"] == [] and plain["models"][0]["role"] == "teacher"


def test_list_and_help_do_not_import_torch(tmp_path):
    """`kd list` and `--help` read the cached catalogue: no torch import, so they answer in well under a second."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    probe = ("import sys\nfrom kdcli.cli import app\nfrom typer.testing import CliRunner\n"
             "r = CliRunner().invoke(app, sys.argv[1:])\nassert r.exit_code == 0, r.output\n"
             "print('torch' in sys.modules)")
    run = [sys.executable, "-c", probe]
    cold = subprocess.run([*run, "list"], env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    assert cold.stdout.strip().endswith("True")  # the first call builds the catalogue (imports the registries)
    assert list((tmp_path / "kd" / "catalog").glob("catalog-*.json"))
    for args in (["list"], ["list", "methods", "dml"], ["train-teacher", "--help"], ["distill-online", "--help"]):
        warm = subprocess.run([*run, *args], env=env, capture_output=True, text=True, cwd=ROOT, check=True)
        assert warm.stdout.strip().endswith("False"), (args, warm.stdout[-500:])


def test_list_methods_name_shows_hyperparameters_and_presets():
    detail = json.loads(kd("list", "methods", "one", "--json").output)
    params = {p["name"]: p["default"] for p in detail["params"]}
    assert params["temperature"] == 3.0 and params["peers"] == 3
    assert detail["presets"]["paper"]["*"]["milestones"] == [150, 225]
    assert detail["presets"]["official"]["*"]["milestones"] == [151, 225]
    assert "26.61" in detail["preset_notes"]["paper"] and "151/225" in detail["preset_notes"]["official"]
    okddip = kd("list", "methods", "okddip").output
    assert "what okddip's presets reproduce" in okddip and "25.65" in okddip
    assert kd("list", "methods", "onee").exit_code == 2


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(monkeypatch, tmp_path):
    """A cluster job's log gets a line per step of progress (here every 5 % at once), with rate and ETA."""
    monkeypatch.setattr(progress, "MIN_GAP_S", 0.0)
    result = kd("train-teacher", "--model", "lenet5", "--epochs", "2", "--device", "cpu", "--out", "t")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("train epoch")]
    assert len(lines) >= 10, result.output
    assert "train epoch 1/2: " in lines[0] and "ETA" in lines[0] and "img/s" in result.output
    assert lines[-1].startswith("train epoch 2/2: ") and "(100%)" in lines[-1]


@pytest.mark.parametrize("args", [["--help"], ["distill", "--help"]])
def test_help_into_a_closed_pipe_is_no_traceback(args):
    """`kd --help | head -1`: the reader goes away before kd writes; kd stops quietly."""
    child = subprocess.Popen([sys.executable, "-m", "kdcli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # closed before the interpreter has even imported kd: the first write fails
    _, err = child.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert child.returncode in (0, 1), err.decode()
