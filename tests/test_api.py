"""The Python API: the CLI's vocabulary in-process, plain objects back, the CLI's numbers for the same seed."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from kdcli import api
from kdcli.cli import app
from kdcli.data import get_dataset
from kdcli.errors import KDError
from tests.models.user_nets import ConvNet

runner = CliRunner()
EPOCHS = "1"  # the demo's three steps, shortened alike on both sides


def kd(*args: str):
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def test_the_demo_in_python_gives_the_cli_numbers(tmp_path):
    cli_teacher = kd("train-teacher", "--epochs", EPOCHS, "--out", "cli/teacher", "--json")
    cli_student = kd("distill", "--teacher", "cli/teacher", "--epochs", EPOCHS, "--out", "cli/student", "--json")
    cli_alone = kd("train-teacher", "--model", "lenet5-half", "--lr", "0.01", "--epochs", EPOCHS,
                   "--out", "cli/student-alone", "--json")
    cli_rows = kd("evaluate", "cli/teacher", "cli/student", "cli/student-alone", "--json", "--no-latency")["models"]

    teacher = api.train_teacher(epochs=int(EPOCHS), out="py/teacher")
    student = api.distill(teacher=teacher, epochs=int(EPOCHS), out="py/student")
    alone = api.train_teacher(model="lenet5-half", lr=0.01, epochs=int(EPOCHS), out="py/student-alone")
    rows = api.evaluate([teacher, student, alone])

    assert isinstance(teacher, api.Run) and teacher.path == Path("py/teacher") and (teacher.path / "run.json").is_file()
    for py, cli in ((teacher, cli_teacher), (student, cli_student), (alone, cli_alone)):
        assert py.metrics["test"] == cli["metrics"]["test"]
        assert [r["train_loss"] for r in py.info["history"]] == [r["train_loss"] for r in cli["history"]]
        assert {**py.info["config"], "out": "", "teacher": ""} == {**cli["config"], "out": "", "teacher": ""}
    assert student.metrics["agreement"] == cli_student["metrics"]["agreement"]
    assert [(r["role"], r["top1"], r["agreement"]) for r in rows] == [
        (r["role"], r["top1"], r["agreement"]) for r in cli_rows]
    net = api.load(student)
    assert isinstance(net, torch.nn.Module) and not net.training and net.spec.arch == "lenet5-half"
    assert student.top1["student"] == pytest.approx(rows[1]["top1"], abs=1e-9)


def _digits_as_torch() -> tuple[TensorDataset, TensorDataset]:
    """digits as a user holds data in PyTorch: float images in [0, 1], integer labels."""
    data = get_dataset("digits")
    train, test = data.load("train"), data.load("test")
    return (TensorDataset(train.images.float() / 255, train.labels),
            TensorDataset(test.images.float() / 255, test.labels))


def test_python_objects_where_the_cli_takes_names(tmp_path, capsys):
    pair = _digits_as_torch()
    start = ConvNet(10, in_channels=1, width=6)
    with pytest.raises(KDError, match="pass the model_args that rebuild it"):
        api.train_teacher(dataset=pair, model=start, epochs=1, out="wrong")  # the class alone builds width 8
    assert not Path("wrong").exists()
    run = api.train_teacher(dataset=pair, model=start, model_args={"width": 6}, epochs=1, lr=1e-9,
                            val_fraction=0, out="objects")
    assert capsys.readouterr().err == ""  # no terminal here: no progress bar, no log, as in a notebook
    assert run.info["dataset"]["name"].startswith("python:TensorDataset-")
    assert run.info["roles"]["teacher"]["arch"] == "tests.models.user_nets:ConvNet"
    trained = api.load(run)
    assert isinstance(trained, ConvNet)
    for name, param in trained.named_parameters():  # the instance's weights were the start (lr ~ 0 kept them)
        assert torch.allclose(param, start.state_dict()[name], atol=1e-6), name
    rows = api.evaluate(run, dataset=pair)
    assert rows[0]["top1"] == pytest.approx(run.top1["teacher"], abs=1e-9)
    whole = api.train_teacher(dataset=pair[0], model=ConvNet, model_args={"width": 6}, epochs=2, out="split")
    assert whole.info["dataset"]["name"] != run.info["dataset"]["name"]  # one set: kd holds out its own test split


def test_api_errors_are_kd_errors(tmp_path):
    with pytest.raises(KDError, match="has no option 'epoch'.*Did you mean epochs"):
        api.train_teacher(epoch=3)
    with pytest.raises(KDError, match="drop Normalize"):
        api.train_teacher(dataset=TensorDataset(torch.randn(10, 1, 8, 8), torch.zeros(10, dtype=torch.long)))
    with pytest.raises(KDError, match="defined inside a function"):
        class Local(torch.nn.Module):
            pass

        api.train_teacher(model=Local())
    with pytest.raises(KDError, match="--allow-module takes a module name"):
        api.evaluate([], allow_modules=["not a module"])
    assert not Path("runs").exists()


def test_the_readme_example_names_what_the_api_has():
    """The README's Python example calls only functions and options the API has (it runs in the demo test above)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None
    tree = ast.parse(block[1])
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "api"]
    assert {c.func.attr for c in calls} >= {"train_teacher", "distill", "evaluate", "load"}
    for call in calls:
        function = getattr(api, call.func.attr)
        for keyword in call.keywords:
            assert keyword.arg in api.CONFIG_KEYS or keyword.arg in function.__code__.co_varnames, keyword.arg


def test_two_instances_of_one_class_are_refused(tmp_path):
    with pytest.raises(KDError, match="two nn.Module instances of one class"):
        api.distill_online("dml", models=[ConvNet(10, 1), ConvNet(10, 1)])
    assert not Path("runs").exists()


def test_paths_may_be_path_objects(tmp_path):
    """`out=Path(...)`, `data_dir=Path(...)`: the config holds the same strings the CLI would give it."""
    config = api.config("train-teacher", "supervised", out=tmp_path / "run", data_dir=tmp_path)
    assert config.out == str(tmp_path / "run") and config.data.data_dir == str(tmp_path)
