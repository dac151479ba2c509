"""Models kd did not define: a user's factory by import path and torchvision's classifiers by name, through
every kind of command; what methods need from a model; and which code a run may make kd import."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from kdcli import checkpoint
from kdcli.cli import app
from kdcli.data import get_dataset
from kdcli.engine import predict, score
from kdcli.errors import KDError
from kdcli.evaluate import evaluate_runs
from kdcli.models import StagedNet, create_model, external, model_provides
from kdcli.presets import resolve_config
from kdcli.run import train

STAGED = "tests.models.user_nets:make_staged"
PLAIN = "tests.models.user_nets:make_convnet"
runner = CliRunner()


def kd(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def run_config(command: str, method: str, out: Path, method_flags: dict | None = None, **flags: object):
    base = {"epochs": 2, "batch_size": 32, "device": "cpu", "out": str(out), "seed": 0}
    return resolve_config(command, method, flags={**base, **flags}, method_flags=method_flags)


@pytest.fixture
def user_module():
    """The test's own module of user models is allowed, as a user allows theirs by naming it."""
    with external.only_allowing(["tests.models.user_nets"]):
        yield


@pytest.fixture(scope="module")
def staged_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's StagedNet factory trained as a teacher on digits (a --model-arg recorded with it)."""
    out = tmp_path_factory.mktemp("user") / "teacher"
    train(run_config("train-teacher", "supervised", out, dataset="digits", model=STAGED, model_args={"width": 12},
                     epochs=4, lr=0.05), quiet=True)
    return out


# ---------------------------------------------------------------------------------------------
# Building


def test_a_factory_gets_the_geometry_it_asks_for_and_its_spec_rebuilds_it(user_module):
    model = create_model(PLAIN, 3, 16, 7, width=4)
    assert type(model).__name__ == "ConvNet" and model.fc.out_features == 7 and model.body[0].in_channels == 3
    assert model.spec.to_dict() == {"arch": PLAIN, "in_channels": 3, "image_size": 16, "num_classes": 7,
                                    "kwargs": {"width": 4}}
    staged = create_model(STAGED, 1, 8, 10)
    assert isinstance(staged, StagedNet) and {"stages", "groups", "features", "batchnorm"} <= model_provides(staged)
    assert model_provides(model) == {"logits", "batchnorm", "classifier"}


@pytest.mark.parametrize(
    "name,options,pattern",
    [
        ("tests.models.user_nets:make_ten_classes", {}, r"returns \[2, 10\].*logits \[batch, 5\]"),
        (PLAIN, {"depth": 3}, "unexpected keyword argument 'depth'"),
        (PLAIN, {"in_chans": 3}, "set by the dataset"),
        ("tests.models.user_nets:nothing", {}, "has no 'nothing'"),
        ("tests.models.no_such_module:make", {}, "cannot import module"),
        ("tests.models.user_nets:make-it", {}, "neither a kd model nor an import path"),
        ("tv:resnet19", {}, "Did you mean resnet18"),
    ],
)
def test_a_bad_external_model_is_one_clear_error(name, options, pattern):
    external.allow_models([name.replace("-", "_")])
    with pytest.raises(KDError, match=pattern):
        create_model(name, 1, 8, 5, **options)


def test_torchvision_models_adapt_to_channels_and_classes():
    model = create_model("tv:resnet18", 1, 8, 4).eval()
    assert model.conv1.in_channels == 1 and model.fc.out_features == 4
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    assert model_provides(model) == {"logits", "batchnorm", "classifier"}


# ---------------------------------------------------------------------------------------------
# Through the commands


def test_a_factory_model_trains_and_reloads_from_its_run(staged_teacher):
    info = json.loads((staged_teacher / "run.json").read_text())
    assert info["roles"]["teacher"]["spec"] == {"arch": STAGED, "in_channels": 1, "image_size": 8, "num_classes": 10,
                                                "kwargs": {"width": 12}}
    assert info["config"]["model_args"] == {"width": 12}
    assert info["metrics"]["test"]["teacher"]["top1"] > 0.5
    assert "metadata" in info  # a StagedNet teacher gets the data-free statistics like a kd model
    model, _ = checkpoint.load_run_model(str(staged_teacher))
    data = get_dataset("digits")
    test = data.load("test")
    assert score(predict(model, test, data.info, torch.device("cpu")), test.labels)["top1"] == pytest.approx(
        info["metrics"]["test"]["teacher"]["top1"], abs=1e-9)


def test_a_factory_model_is_a_teacher_and_a_student(staged_teacher, tmp_path):
    as_teacher = train(run_config("distill", "kd", tmp_path / "s1", teacher=str(staged_teacher), model="lenet5-half",
                                  epochs=3, lr=0.02), quiet=True)
    assert as_teacher["teacher"]["spec"]["arch"] == STAGED
    assert as_teacher["metrics"]["agreement"]["student"] > 0.3
    as_student = train(run_config("distill", "kd", tmp_path / "s2", teacher=str(staged_teacher), model=PLAIN,
                                  model_args={"width": 6}, epochs=3), quiet=True)
    assert as_student["roles"]["student"]["spec"]["kwargs"] == {"width": 6}
    assert as_student["metrics"]["agreement"]["student"] > 0.3
    rows = evaluate_runs([str(tmp_path / "s2")], device="cpu", measure_latency=False)
    assert rows[0]["model"] == PLAIN
    assert rows[0]["top1"] == pytest.approx(as_student["metrics"]["test"]["student"]["top1"], abs=1e-9)


def test_dml_with_two_factory_peers(tmp_path):
    result = train(run_config("distill-online", "dml", tmp_path / "dml", dataset="digits", models=[PLAIN, PLAIN],
                              model_args={"width": 6}, epochs=3), quiet=True)
    assert set(result["roles"]) == {"peer0", "peer1"}
    assert {result["roles"][r]["arch"] for r in result["roles"]} == {PLAIN}
    rows = {r["role"]: r for r in evaluate_runs([str(tmp_path / "dml")], device="cpu", measure_latency=False)}
    assert set(rows) == {"peer0", "peer1", "ensemble"}
    for role in ("peer0", "peer1", "ensemble"):
        assert rows[role]["top1"] == pytest.approx(result["metrics"]["test"][role]["top1"], abs=1e-9)
    assert result["metrics"]["test"]["ensemble"]["top1"] > 0.3


def test_a_staged_factory_model_splits_for_the_branched_methods(tmp_path):
    result = train(run_config("distill-online", "okddip", tmp_path / "ok", dataset="digits", model=STAGED,
                              model_args={"width": 6}, method_flags={"split_at": "stage3"}, epochs=1), quiet=True)
    assert result["roles"]["leader"]["spec"] == {"arch": STAGED, "in_channels": 1, "image_size": 8, "num_classes": 10,
                                                 "kwargs": {"width": 6}}
    model, _ = checkpoint.load_run_model(str(tmp_path / "ok"))
    assert isinstance(model, StagedNet)


def test_a_torchvision_model_by_name_on_fake_data(tmp_path):
    result = kd("train-teacher", "--model", "tv:resnet18", "--dataset", "fake", "--epochs", "2", "--batch-size", "60",
                "--lr", "0.02", "--val-fraction", "0", "--device", "cpu", "--out", "tv", "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.output[result.output.index("{"):])
    assert run["roles"]["teacher"]["arch"] == "tv:resnet18" and run["roles"]["teacher"]["params"] > 10_000_000
    model, _ = checkpoint.load_run_model("tv")
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    rows = evaluate_runs(["tv"], device="cpu", measure_latency=False)
    assert rows[0]["top1"] == pytest.approx(run["metrics"]["test"]["teacher"]["top1"], abs=1e-9)


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["distill-online", "--method", "okddip", "--model", PLAIN],
         "okddip needs a model split into stages (a kdcli.models.StagedNet"),
        (["distill-online", "--method", "one", "--model", PLAIN], "one needs a model split into stages"),
        (["distill-datafree", "--method", "zskt", "--student", PLAIN, "--teacher", "{t}"],
         "zskt needs attention-map groups"),
    ],
)
def test_what_a_method_needs_and_a_model_lacks_is_one_line(args, pattern, staged_teacher, tmp_path):
    result = kd(*[a.replace("{t}", str(staged_teacher)) for a in args], "--out", "x")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and pattern in lines[0], result.output
    assert not (tmp_path / "x").exists()


def test_a_plain_teacher_is_refused_by_the_methods_that_need_its_insides(tmp_path):
    teacher = tmp_path / "plain"
    train(run_config("train-teacher", "supervised", teacher, dataset="digits", model=PLAIN, epochs=1), quiet=True)
    assert "metadata" not in json.loads((teacher / "run.json").read_text())  # Lopes' statistics need stages
    for method, pattern in [("dafl", "dafl needs penultimate features"), ("zskt", "zskt needs attention-map groups"),
                            ("lopes", "lopes needs a model split into stages")]:
        with pytest.raises(KDError, match=pattern):
            train(run_config("distill-datafree", method, tmp_path / method, teacher=str(teacher)), quiet=True)
        assert not (tmp_path / method).exists()
    # ZSKD reads the final linear layer wherever it is (ConvNet calls it fc), DeepInversion its BatchNorms
    for method in ("zskd", "deepinversion"):
        config = run_config("distill-datafree", method, tmp_path / method, teacher=str(teacher), epochs=1,
                            method_flags={"n": 20, "iterations": 2, "synth_batch": 20})
        assert train(config, quiet=True)["status"] == "complete"


# ---------------------------------------------------------------------------------------------
# Which code a run may make kd import


def _run_naming(source: Path, target: Path, arch: str, kwargs: dict) -> Path:
    """A copy of a run whose model claims to be ``arch`` (as a run from elsewhere could)."""
    target.mkdir()
    weights = source / "teacher.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    spec = {**json.loads(metadata["spec"]), "arch": arch, "kwargs": kwargs}
    save_file(load_file(str(weights)), str(target / "teacher.safetensors"),
              metadata={**metadata, "spec": json.dumps(spec), "arch": arch})
    info = json.loads((source / "run.json").read_text())
    info["roles"]["teacher"].update(arch=arch, spec=spec)
    (target / "run.json").write_text(json.dumps(info))
    return target


def test_a_run_naming_os_system_is_refused_and_nothing_runs(teacher_run, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append((a, k)) or 0)
    monkeypatch.delenv(external.ALLOW_ENV, raising=False)
    evil = _run_naming(teacher_run, tmp_path / "evil", "os:system", {"command": "touch pwned"})
    with external.only_allowing():
        for args in (["evaluate", str(evil)], ["distill", "--teacher", str(evil), "--out", "x"],
                     ["record-metadata", "--teacher", str(evil)]):
            result = kd(*args)
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code == 2 and len(lines) == 1, result.output
            assert "'os:system' would import module 'os'" in lines[0] and "--allow-module os" in lines[0]
    assert calls == [] and not (tmp_path / "pwned").exists() and not (tmp_path / "x").exists()


def test_a_run_never_allows_its_own_module_but_the_user_can(staged_teacher, tmp_path, monkeypatch):
    monkeypatch.delenv(external.ALLOW_ENV, raising=False)
    copy = _run_naming(staged_teacher, tmp_path / "other", "tests.models.unimported_nets:make", {})
    with external.only_allowing():
        with pytest.raises(KDError, match="would import module 'tests.models.unimported_nets'"):
            checkpoint.load_run_model(str(copy))
        assert "tests.models.unimported_nets" not in sys.modules
        with pytest.raises(KDError, match="would import module 'tests.models.user_nets'"):
            evaluate_runs([str(staged_teacher)], device="cpu", measure_latency=False)
        result = kd("evaluate", str(staged_teacher), "--no-latency", "--json", "--allow-module", "tests.models")
        assert result.exit_code == 0, result.output
    with external.only_allowing():
        monkeypatch.setenv(external.ALLOW_ENV, "tests.models.user_nets")
        assert evaluate_runs([str(staged_teacher)], device="cpu", measure_latency=False)[0]["model"] == STAGED
    with external.only_allowing():
        monkeypatch.delenv(external.ALLOW_ENV)
        result = kd("distill", "--teacher", str(staged_teacher), "--teacher-model", PLAIN, "--out", "x")
        assert result.exit_code == 2 and "does not match the teacher run" in result.output
        result = kd("distill", "--teacher", str(staged_teacher), "--teacher-model", STAGED, "--epochs", "1",
                    "--out", "x", "--quiet")
        assert result.exit_code == 0, result.output


def test_a_config_file_the_user_passes_names_modules_as_flags_do(tmp_path, monkeypatch):
    monkeypatch.delenv(external.ALLOW_ENV, raising=False)
    (tmp_path / "c.toml").write_text(f'model = "{PLAIN}"\nepochs = 1\n[model_args]\nwidth = 4\n')
    with external.only_allowing():
        result = kd("train-teacher", "--config", "c.toml", "--device", "cpu", "--out", "t", "--quiet")
        assert result.exit_code == 0, result.output
    spec = json.loads((tmp_path / "t" / "run.json").read_text())["roles"]["teacher"]["spec"]
    assert spec["arch"] == PLAIN and spec["kwargs"] == {"width": 4}
