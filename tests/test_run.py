"""End-to-end runs of the engine on the embedded digits data."""

import json
import os
import signal

import pytest
import torch

from kdcli import checkpoint
from kdcli.errors import Interrupted, KDError
from kdcli.run import train
from tests.conftest import digits_config


def test_teacher_run_writes_a_self_describing_directory(teacher_run):
    files = {p.name for p in teacher_run.iterdir()}
    assert {"run.json", "teacher.safetensors", "metrics.jsonl", "curves.png"} <= files
    assert "state.safetensors" not in files  # removed once the run completes
    info = json.loads((teacher_run / "run.json").read_text())
    assert info["status"] == "complete" and info["primary"] == "teacher"
    assert info["config"]["train"]["seed"] == 0 and info["versions"]["torch"] == torch.__version__
    assert len(info["history"]) == 8
    assert info["metrics"]["test"]["teacher"]["top1"] > 0.9
    lines = (teacher_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert last["train_loss"] < first["train_loss"]


def test_saved_teacher_reproduces_the_recorded_test_accuracy(teacher_run):
    from kdcli.data import get_dataset
    from kdcli.engine import predict, score

    model, meta = checkpoint.load_run_model(str(teacher_run))
    data = get_dataset("digits")
    test = data.load("test")
    result = score(predict(model, test, data.info, torch.device("cpu")), test.labels)
    recorded = json.loads((teacher_run / "run.json").read_text())["metrics"]["test"]["teacher"]["top1"]
    assert result["top1"] == pytest.approx(recorded, abs=1e-9)


def test_same_seed_same_numbers_on_cpu(tmp_path):
    results = []
    for i in range(2):
        config = digits_config(epochs=2)
        config.out = str(tmp_path / f"r{i}")
        results.append(train(config, quiet=True))
    assert results[0]["history"][-1]["train_loss"] == results[1]["history"][-1]["train_loss"]
    assert results[0]["metrics"]["test"] == results[1]["metrics"]["test"]


def test_resume_after_ctrl_c_ends_where_an_uninterrupted_run_ends(tmp_path):
    reference_cfg = digits_config(epochs=3)
    reference_cfg.out = str(tmp_path / "full")
    reference = train(reference_cfg, quiet=True)

    def ctrl_c_at(step_to_stop: int):
        def hook(method, step):
            if step == step_to_stop:
                os.kill(os.getpid(), signal.SIGINT)
        return hook

    config = digits_config(epochs=3)
    config.out = str(tmp_path / "cut")
    steps_per_epoch = len(reference["history"]) and None
    with pytest.raises(Interrupted, match="resume"):
        train(config, quiet=True, after_step=ctrl_c_at(30))  # mid second epoch (20 steps per epoch)
    assert (tmp_path / "cut" / "state.safetensors").exists()
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    resumed = train(digits_config(), resume=str(tmp_path / "cut"), quiet=True)
    assert resumed["metrics"]["test"] == reference["metrics"]["test"]
    assert [round(r["train_loss"], 6) for r in resumed["history"]] == [round(r["train_loss"], 6) for r in reference["history"]]
    full, _ = checkpoint.load_run_model(str(tmp_path / "full"))
    cut, _ = checkpoint.load_run_model(str(tmp_path / "cut"))
    for (name, a), (_, b) in zip(full.state_dict().items(), cut.state_dict().items()):
        assert torch.equal(a, b), name
    del steps_per_epoch


def test_distill_beats_chance_and_records_agreement(teacher_run, tmp_path):
    config = digits_config(command="distill", method="kd", epochs=15)
    config.model = "lenet5-half"
    config.optim.lr = 0.01
    config.teacher = str(teacher_run)
    config.out = str(tmp_path / "student")
    result = train(config, quiet=True)
    assert result["metrics"]["test"]["student"]["top1"] > 0.8
    assert result["metrics"]["agreement"]["student"] > 0.8
    assert result["teacher"]["role"] == "teacher"
    assert (tmp_path / "student" / "student.safetensors").exists()


def test_teacher_with_other_classes_is_refused_and_nothing_is_written(teacher_run, tmp_path):
    config = digits_config(command="distill", method="kd")
    config.teacher = str(teacher_run)
    config.data.dataset = "fake-1-8-5"
    config.out = str(tmp_path / "bad")
    with pytest.raises(KDError, match="does not fit"):
        train(config, quiet=True)
    assert not (tmp_path / "bad").exists()


def test_distill_without_teacher_is_refused():
    config = digits_config(command="distill", method="kd")
    with pytest.raises(KDError, match="--teacher"):
        train(config, quiet=True)


def test_divergence_stops_the_run_and_its_last_finite_checkpoint_resumes(tmp_path):
    """A loss that stops being finite: exit code 3, status `diverged`, JSON without NaN, epoch 1's checkpoint kept;
    resumed, the run ends where an uninterrupted one ends (the NaN here was injected, so it does not recur)."""
    from kdcli.errors import Diverged

    reference_cfg = digits_config(epochs=2)
    reference_cfg.out = str(tmp_path / "full")
    reference = train(reference_cfg, quiet=True)

    def poison(method, step):
        if step == 25:  # in epoch 2 (20 steps per epoch)
            with torch.no_grad():
                next(method.parameters()).fill_(float("nan"))

    config = digits_config(epochs=2)
    config.out = str(tmp_path / "cut")
    with pytest.raises(Diverged, match=r"diverged at epoch 2 step 20: loss.* not finite\. The last finite checkpoint "
                                       r"\(epoch 1 step 0\) is kept: resume it") as caught:
        train(config, quiet=True, after_step=poison)
    assert caught.value.exit_code == 3
    cut = tmp_path / "cut"
    info = json.loads((cut / "run.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in run.json"))
    assert info["status"] == "diverged" and "epoch 2" in info["diverged"]
    assert checkpoint.load_state(cut / "state.safetensors")["epoch"] == 1
    assert len((cut / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = train(None, resume=str(cut), quiet=True)
    assert resumed["metrics"]["test"] == reference["metrics"]["test"]
    full, _ = checkpoint.load_run_model(str(tmp_path / "full"))
    again, _ = checkpoint.load_run_model(str(cut))
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), again.state_dict().values()))
    assert resumed["resumes"][0]["epoch"] == 1


def test_resume_may_extend_epochs_and_lower_the_rate_and_records_it(tmp_path):
    from kdcli.config import ResumeChanges

    def ctrl_c(method, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    config = digits_config(epochs=1)
    config.out = str(tmp_path / "run")
    with pytest.raises(Interrupted, match=r"SIGINT at epoch 1 step 6: saved\. Resume with: kd train-teacher --resume"):
        train(config, quiet=True, after_step=ctrl_c)
    changes = ResumeChanges("train-teacher", flags={"epochs": 2, "lr": 0.01, "seed": 0, "device": "cpu"})
    result = train(None, resume=str(tmp_path / "run"), changes=changes, quiet=True)
    assert result["config"]["train"]["epochs"] == 2 and result["config"]["optim"]["lr"] == 0.01
    assert len(result["history"]) == 2 and result["history"][-1]["lr"] < 0.01
    assert result["resumes"] == [{"at": result["resumes"][0]["at"], "epoch": 0, "step": 6,
                                  "changed": {"epochs": [1, 2], "lr": [0.05, 0.01]}}]
