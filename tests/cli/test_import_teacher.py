"""`kd import-teacher`: weights trained outside kd become a teacher run like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.data import get_dataset
from kdcli.engine import predict, score
from kdcli.models import create_model, external

STAGED = "tests.models.user_nets:make_staged"
runner = CliRunner()


def kd(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def trained_elsewhere() -> tuple[dict[str, torch.Tensor], float]:
    """A user's model trained by a plain PyTorch loop (not kd) on digits, and its test accuracy."""
    with external.only_allowing(["tests.models.user_nets"]):
        torch.manual_seed(0)
        model = create_model(STAGED, 1, 8, 10, width=8)
    data = get_dataset("digits")
    train, test = data.load("train"), data.load("test")
    mean, std = data.info.mean[0], data.info.std[0]
    images = (train.images.float() / 255 - mean) / std
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(3):
        for batch in torch.randperm(len(train)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[batch]), train.labels[batch]).backward()
            optimizer.step()
    top1 = score(predict(model, test, data.info, torch.device("cpu")), test.labels)["top1"]
    assert top1 > 0.5
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, top1


def _import(*args: str):
    return kd("import-teacher", "--model", STAGED, "--model-arg", "width=8", "--device", "cpu", "--json", *args)


def test_a_safetensors_teacher_becomes_a_kd_run(trained_elsewhere, tmp_path):
    state, top1 = trained_elsewhere
    save_file(state, str(tmp_path / "weights.safetensors"))
    result = _import("--weights", "weights.safetensors", "--out", "imported")
    assert result.exit_code == 0, result.output
    run = json.loads(result.output[result.output.index("{"):])
    assert run["command"] == "import-teacher" and run["status"] == "complete"
    assert run["metrics"]["test"]["teacher"]["top1"] == pytest.approx(top1, abs=1e-9)
    assert run["imported"]["format"] == "safetensors" and len(run["imported"]["sha256"]) == 64
    assert run["roles"]["teacher"]["spec"]["kwargs"] == {"width": 8}
    info = json.loads((tmp_path / "imported" / "run.json").read_text())
    assert info["metadata"]["train_samples"] == 1438  # the data-free statistics, recorded like a trained teacher's
    # from then on a teacher like any other (a later command names the module again: a run never allows it)
    with external.only_allowing():
        distilled = kd("distill", "--teacher", "imported", "--teacher-model", STAGED, "--epochs", "2", "--device",
                       "cpu", "--out", "s", "--json")
        assert distilled.exit_code == 0, distilled.output
        student = json.loads(distilled.output[distilled.output.index("{"):])
        assert student["metrics"]["teacher_test"]["top1"] == pytest.approx(top1, abs=1e-9)
    with external.only_allowing():
        evaluated = kd("evaluate", "imported", "s", "--json", "--no-latency", "--allow-module", "tests.models")
        rows = json.loads(evaluated.output[evaluated.output.index("{"):])["models"]
        assert rows[0]["top1"] == pytest.approx(top1, abs=1e-9) and rows[0]["model"] == STAGED


def test_a_pickled_teacher_needs_allow_pickle(trained_elsewhere, tmp_path):
    state, top1 = trained_elsewhere
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "best.pth")
    refused = _import("--weights", "best.pth", "--out", "imported")
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and "--allow-pickle" in lines[0], refused.output
    assert not (tmp_path / "imported").exists()
    result = _import("--weights", "best.pth", "--allow-pickle", "--out", "imported")
    assert result.exit_code == 0, result.output
    run = json.loads(result.output[result.output.index("{"):])
    assert run["metrics"]["test"]["teacher"]["top1"] == pytest.approx(top1, abs=1e-9)
    assert run["imported"]["format"] == "pickle (weights_only)"
    assert any("'state_dict'" in note for note in run["imported"]["notes"])


@pytest.mark.parametrize(
    "setup,args,pattern",
    [
        (lambda state, p: save_file({k: v for k, v in state.items() if "classifier" not in k},
                                    str(p / "w.safetensors")), ["--weights", "w.safetensors"], "2 missing keys"),
        (lambda state, p: save_file(state, str(p / "w.safetensors")),
         ["--weights", "w.safetensors", "--dataset", "fake-1-8-5"], "does not fit model"),
        (lambda state, p: (p / "w.npz").write_bytes(b"x"), ["--weights", "w.npz"], "kd reads weights from"),
        (lambda state, p: None, ["--weights", "missing.safetensors"], "not found"),
    ],
)
def test_weights_that_do_not_fit_are_one_line_and_write_nothing(trained_elsewhere, tmp_path, setup, args, pattern):
    setup(trained_elsewhere[0], tmp_path)
    result = _import(*args, "--out", "imported")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and pattern in lines[0], result.output
    assert not (tmp_path / "imported").exists() and not Path("runs").exists()
