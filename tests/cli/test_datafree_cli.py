"""`kd synthesize`, `kd distill-datafree` and `kd record-metadata` through Typer's CliRunner."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.pictures import row_label_margin

runner = CliRunner()


def kd(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def _assert_clean_error(result, pattern: str, tmp: Path, *written: str):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output
    for name in ("runs", *written):
        assert not (tmp / name).exists(), name


@pytest.fixture()
def teacher(teacher_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "t"
    shutil.copytree(teacher_run, copy)
    return copy


def test_help_lists_the_datafree_commands():
    result = kd("--help")
    for command in ("synthesize", "distill-datafree", "record-metadata"):
        assert command in result.output


def test_synthesize_then_distill_from_the_set(teacher, tmp_path):
    made = kd(
        "synthesize",
        "--teacher",
        str(teacher),
        "--method",
        "zskd",
        "-n",
        "40",
        "--iterations",
        "5",
        "--device",
        "cpu",
        "--out",
        "set",
        "--json",
    )
    assert made.exit_code == 0, made.output
    result = json.loads(made.output)
    assert result["count"] == 40 and result["params"]["n"] == 40 and result["samples_per_s"] > 0
    info = json.loads((tmp_path / "set" / "synthetic.json").read_text())
    assert info["method"] == "zskd" and info["teacher"]["run"] == str(teacher.resolve())
    picture = Image.open(tmp_path / "set" / "samples.png")
    margin = row_label_margin([str(k) for k in range(10)], row_height=9 * 8)  # rows labelled 0..9
    assert picture.size == (margin + (8 * 9 + 1) * 8, (10 * 9 + 1) * 8)  # 10 class rows × 8 digits of 8×8 px, ×8
    student = kd(
        "distill-datafree",
        "--teacher",
        str(teacher),
        "--method",
        "zskd",
        "--synthetic",
        "set",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out",
        "s",
        "--json",
    )
    assert student.exit_code == 0, student.output
    run = json.loads(student.output)
    assert run["config"]["method_params"]["synthetic"] == "set"
    assert run["artifacts"]["synthetic"] == str((tmp_path / "set").resolve())
    assert len(run["history"]) == 2 and run["history"][0]["epoch"] == 1
    again = kd(
        "synthesize", "--teacher", str(teacher), "--method", "zskd", "-n", "8", "--device", "cpu", "--out", "set"
    )
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_synthesize_with_a_generator_saves_it(teacher, tmp_path):
    made = kd(
        "synthesize",
        "--teacher",
        str(teacher),
        "--method",
        "dafl",
        "-n",
        "30",
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out",
        "g",
        "--json",
    )
    assert made.exit_code == 0, made.output
    info = json.loads((tmp_path / "g" / "synthetic.json").read_text())
    assert info["files"] == {"generator": "generator.safetensors"} and info["dtype"] == "float16"
    assert info["class_source"] == "teacher argmax" and info["count"] == 30
    from kdcli.models.generator import load_generator

    generator, _ = load_generator(tmp_path / "g" / "generator.safetensors")
    assert generator.spec.arch == "generator-dafl"


def test_record_metadata_then_lopes(teacher, tmp_path):
    (teacher / "metadata.safetensors").unlink()  # an older teacher run: trained before kd recorded statistics
    missing = kd("distill-datafree", "--teacher", str(teacher), "--method", "lopes", "--device", "cpu", "--out", "x")
    _assert_clean_error(missing, f"kd record-metadata --teacher {teacher}", tmp_path, "x")
    recorded = kd("record-metadata", "--teacher", str(teacher), "--device", "cpu", "--json")
    assert recorded.exit_code == 0, recorded.output
    assert json.loads(recorded.output)["layers"][-1] == 10
    assert "metadata" in json.loads((teacher / "run.json").read_text())
    run = kd(
        "distill-datafree",
        "--teacher",
        str(teacher),
        "--method",
        "lopes",
        "--objective",
        "spectral_layer_pairs",
        "-n",
        "32",
        "--iterations",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out",
        "l",
        "--json",
    )
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["params"]["objective"] == "spectral_layer_pairs"
    bad = kd(
        "distill-datafree",
        "--teacher",
        str(teacher),
        "--method",
        "lopes",
        "--objective",
        "top_layers",
        "--device",
        "cpu",
        "--out",
        "y",
    )
    _assert_clean_error(bad, "Did you mean top_layer", tmp_path, "y")


def test_help_labels_the_spectral_objectives_as_kds_own_and_names_the_statistics_variants():
    text = " ".join(kd("distill-datafree", "--help").output.split())
    assert "the spectral two are kd's own construction" in text and "--statistics" in text
    assert "kd's own" in kd("list", "methods").output


def test_record_metadata_full_statistics_then_lopes(teacher, tmp_path):
    missing = kd("distill-datafree", "--teacher", str(teacher), "--method", "lopes", "--statistics", "full",
                 "--device", "cpu", "--out", "x")
    _assert_clean_error(missing, f"kd record-metadata --teacher {teacher} --statistics full", tmp_path, "x")
    bad = kd("record-metadata", "--teacher", str(teacher), "--statistics", "covariance", "--device", "cpu")
    _assert_clean_error(bad, "unknown statistics variant 'covariance'", tmp_path)
    recorded = kd("record-metadata", "--teacher", str(teacher), "--statistics", "full", "--device", "cpu", "--json")
    assert recorded.exit_code == 0, recorded.output
    listing = json.loads(recorded.output)
    assert listing["statistics"] == "full" and listing["layers"] == [384, 256, 120, 84, 10]
    info = json.loads((teacher / "run.json").read_text())
    assert info["metadata"]["file"] == "metadata.safetensors"  # the pooled statistics are kept
    assert info["metadata_full"]["file"] == "metadata-full.safetensors"
    run = kd("distill-datafree", "--teacher", str(teacher), "--method", "lopes", "--statistics", "full", "-n", "32",
             "--iterations", "3", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--out", "l", "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["params"]["statistics"] == "full"


def test_train_teacher_records_metadata(tmp_path):
    result = kd("train-teacher", "--epochs", "1", "--model", "lenet5", "--device", "cpu", "--out", "t1", "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t1" / "metadata.safetensors").is_file()
    assert json.loads((tmp_path / "t1" / "run.json").read_text())["metadata"]["train_samples"] == 1438


def test_training_split_is_never_read(teacher, tmp_path, monkeypatch):
    from kdcli.data.base import Dataset

    original = Dataset.load

    def guarded(self, split):
        if split == "train":
            raise AssertionError("the training split was read")
        return original(self, split)

    monkeypatch.setattr(Dataset, "load", guarded)
    made = kd(
        "synthesize",
        "--teacher",
        str(teacher),
        "--method",
        "zskt",
        "-n",
        "16",
        "--epochs",
        "1",
        "--iterations",
        "1",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--out",
        "z",
    )
    assert made.exit_code == 0, made.output
    run = kd(
        "distill-datafree",
        "--teacher",
        str(teacher),
        "--method",
        "noise",
        "--epochs",
        "1",
        "--iterations",
        "2",
        "--device",
        "cpu",
        "--out",
        "n",
    )
    assert run.exit_code == 0, run.output


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "args,pattern",
    [
        (["synthesize", "--teacher", "nowhere", "--method", "zskd"], "not found"),
        (["distill-datafree", "--teacher", "nowhere", "--method", "zskd"], "not found"),
        (["synthesize", "--method", "zskd"], "--teacher"),
        (["synthesize", "--teacher", "{t}", "--method", "zskd", "-n", "0"], "-n must be positive"),
        (["distill-datafree", "--teacher", "{t}", "--method", "zskd", "-n", "0"], "n must be positive"),
        (["synthesize", "--teacher", "{t}", "--method", "deepinversion"], "no BatchNorm"),
        (["distill-datafree", "--teacher", "{t}", "--method", "deepinversion"], "no BatchNorm"),
        (["distill-datafree", "--teacher", "{t}", "--method", "zskdd"], "Did you mean zskd"),
        (["synthesize", "--teacher", "{t}", "--method", "noise"], "Valid: zskd"),
        (["distill-datafree", "--teacher", "{t}", "--method", "dafl", "--objective", "top_layer"], "no parameter"),
        (["distill-datafree", "--teacher", "{t}", "--method", "zskd", "--synthetic", "nowhere"], "not found"),
        (["distill-datafree", "--teacher", "{t}", "--method", "zskd", "--preset", "fast"], "--preset"),
        (
            ["synthesize", "--teacher", "{t}", "--method", "zskd", "--dtype", "int4", "-n", "4", "--iterations", "1"],
            "--dtype",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(teacher, tmp_path, args, pattern):
    args = [a.replace("{t}", str(teacher)) for a in args]
    _assert_clean_error(kd(*args, "--device", "cpu", "--out", "x"), pattern, tmp_path, "x")
