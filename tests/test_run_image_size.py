"""--image-size through runs (kdcli.run): a teacher trained at N px makes every run that reads it use N px."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdcli import api, checkpoint
from kdcli.cli import app
from kdcli.data import get_dataset
from kdcli.device import resolve_precision
from kdcli.engine import predict
from kdcli.evaluate import evaluate_runs
from kdcli.run import record_statistics, train
from tests.conftest import digits_config


@pytest.fixture(scope="module")
def teacher12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 on digits resized 8 → 12 px, one epoch."""
    out = tmp_path_factory.mktemp("t12") / "teacher"
    config = digits_config(epochs=1)
    config.data.image_size = 12
    config.out = str(out)
    train(config, quiet=True)
    return out


def _sizes(run: Path) -> tuple[int, int, int, int]:
    info = json.loads((run / "run.json").read_text())
    role = info["primary"]
    _, meta = checkpoint.load_model(run / info["roles"][role]["file"])
    return (info["config"]["data"]["image_size"], info["dataset"]["image_size"], info["roles"][role]["spec"]["image_size"],
            meta["dataset"]["image_size"])


def test_a_student_of_a_resized_teacher_trains_and_evaluates_at_its_size(teacher12, tmp_path):
    assert _sizes(teacher12) == (12, 12, 12, 12)
    student = api.distill(teacher12, "lenet5-half", epochs=1, device="cpu", out=str(tmp_path / "s"), quiet=True)
    assert _sizes(student.path) == (12, 12, 12, 12)  # no --image-size given: the teacher's
    assert student.info["dataset"]["resized_from"] == 8

    rows = evaluate_runs([str(teacher12), str(student.path)], device="cpu", measure_latency=False)
    assert rows[1]["top1"] == student.info["metrics"]["test"]["student"]["top1"]
    assert rows[1]["agreement"] == student.info["metrics"]["agreement"]["student"]
    # the evaluated checkpoint's logits on the resized test split are the ones the run scored
    model, _ = checkpoint.load_model(student.path / "student.safetensors")
    dataset = get_dataset("digits", image_size=12)
    test = dataset.load("test")
    cpu = torch.device("cpu")
    logits = predict(model, test, dataset.info, cpu, 1024, resolve_precision("auto", cpu))
    assert test.images.shape[-1] == 12 and logits.shape == (len(test), 10)
    assert (logits.argmax(1) == test.labels).float().mean().item() == rows[1]["top1"]
    teacher, _ = checkpoint.load_run_model(str(teacher12))  # what --teacher RUN loads: the same logits
    assert torch.equal(predict(teacher, test, dataset.info, cpu, 1024, None),
                       predict(checkpoint.load_model(teacher12 / "teacher.safetensors")[0], test, dataset.info, cpu,
                               1024, None))


def test_datafree_runs_and_record_metadata_use_the_teachers_size(teacher12, tmp_path):
    run = api.distill_datafree(teacher12, "noise", "lenet5-half", epochs=1, device="cpu", out=str(tmp_path / "n"),
                               params={"iterations": 2}, quiet=True)
    assert _sizes(run.path) == (12, 12, 12, 12)
    assert record_statistics(str(teacher12), device="cpu")  # the training split read again at 12 px
    made = api.synthesize(teacher12, "zskd", n=4, out=str(tmp_path / "syn"), params={"iterations": 1}, device="cpu",
                          quiet=True)
    assert made["dataset"]["image_size"] == 12 and made["config"]["data"]["image_size"] == 12


def test_a_conflicting_image_size_is_a_one_line_error(teacher12, tmp_path):
    result = CliRunner().invoke(app, ["distill", "--teacher", str(teacher12), "--image-size", "16", "--epochs", "1",
                                      "--device", "cpu", "--out", "x"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "--image-size 16 conflicts with the teacher run" in lines[0], result.output
    assert "12px" in lines[0] and not (tmp_path / "x").exists()
    same = api.distill(teacher12, "lenet5-half", epochs=1, device="cpu", image_size=12, out=str(tmp_path / "ok"),
                       quiet=True)
    assert _sizes(same.path)[0] == 12


def test_an_imported_teacher_takes_its_image_size(teacher12, tmp_path):
    """A teacher trained elsewhere at 32 px on 28 px MNIST (the official DAFL teacher) is imported with --image-size."""
    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    model, _ = checkpoint.load_model(teacher12 / "teacher.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    run = api.import_teacher("lenet5", weights, "digits", image_size=12, device="cpu", out=str(tmp_path / "imp"),
                             quiet=True)
    assert _sizes(run.path) == (12, 12, 12, 12)
    assert run.info["metrics"]["test"]["teacher"]["top1"] == json.loads((teacher12 / "run.json").read_text())[
        "metrics"]["test"]["teacher"]["top1"]
