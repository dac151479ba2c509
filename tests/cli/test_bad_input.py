"""Every bad input a user can give, through the `kd` command: one line on stderr, exit code 2, nothing written.

Each case is one test (marked ``bad_input``; ``docs/robustness.md`` says how many there are and how to
count them). The cases fail before any training, so the whole catalogue runs in seconds.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from kdcli import checkpoint
from kdcli.cli import app
from tests.data.test_data import write_fake_mnist, write_png_folder

pytestmark = pytest.mark.bad_input
runner = CliRunner()
TEACHER = "{teacher}"  # replaced by the session's teacher run


def kd(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def assert_one_line(result, pattern: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def toml(text: str) -> Callable[[Path, Path], list[str]]:
    def setup(tmp: Path, teacher: Path) -> list[str]:
        (tmp / "c.toml").write_text(text)
        return ["--config", "c.toml"]
    return setup


TRAIN = ["train-teacher", "--out", "x", "--device", "cpu"]
DISTILL = ["distill", "--teacher", TEACHER, "--out", "x", "--device", "cpu"]

#: (id, argv, setup returning extra argv, expected text in the one line)
CASES: list[tuple[str, list[str], Callable[[Path, Path], list[str]] | None, str]] = [
    # numbers out of range, flags
    ("lr-inf", [*TRAIN, "--lr", "inf"], None, "--lr must be a finite number"),
    ("lr-nan", [*TRAIN, "--lr", "nan"], None, "--lr must be a finite number"),
    ("lr-negative", [*TRAIN, "--lr", "-0.1"], None, "--lr must be positive"),
    ("weight-decay-negative", [*TRAIN, "--weight-decay", "-1"], None, "--weight-decay must be ≥ 0"),
    ("momentum-negative", [*TRAIN, "--momentum", "-1"], None, "--momentum must be in [0, 1)"),
    ("momentum-one", [*TRAIN, "--momentum", "1"], None, "--momentum must be in [0, 1)"),
    ("warmup-negative", [*TRAIN, "--warmup-epochs", "-1"], None, "--warmup-epochs must be ≥ 0"),
    ("warmup-longer-than-run", [*TRAIN, "--warmup-epochs", "9", "--epochs", "2"], None, "longer than the run"),
    ("val-fraction-one", [*TRAIN, "--val-fraction", "1"], None, "--val-fraction must be in [0, 1)"),
    ("val-fraction-negative", [*TRAIN, "--val-fraction", "-0.1"], None, "--val-fraction must be in [0, 1)"),
    ("seed-negative", [*TRAIN, "--seed", "-1"], None, "--seed must be in [0, "),
    ("epochs-zero", [*TRAIN, "--epochs", "0"], None, "--epochs must be positive"),
    ("epochs-fraction", [*TRAIN, "--epochs", "1.5"], None, "Invalid value for '--epochs'"),
    ("batch-size-negative", [*TRAIN, "--batch-size", "-4"], None, "--batch-size must be positive"),
    ("milestones-decrease", [*TRAIN, "--schedule", "step", "--milestones", "10,5"], None, "--milestones must increase"),
    ("milestones-zero", [*TRAIN, "--milestones", "0"], None, "--milestones must be positive"),
    ("milestones-text", [*TRAIN, "--milestones", "a,b"], None, "comma-separated epochs"),
    # choices, with a "did you mean"
    ("cuda-graphs-typo", [*TRAIN, "--cuda-graphs", "maybe"], None, "unknown --cuda-graphs 'maybe'"),
    ("optimizer-typo", [*TRAIN, "--optimizer", "adamw"], None, "Did you mean adam?"),
    ("schedule-typo", [*TRAIN, "--schedule", "cosin"], None, "Did you mean cosine?"),
    ("precision-unknown", [*TRAIN, "--precision", "fp16"], None, "unknown --precision 'fp16'"),
    ("augment-typo", [*TRAIN, "--augment", "flipp"], None, "Did you mean flip"),
    ("device-unknown", [*TRAIN, "--device", "gpu"], None, "unknown --device 'gpu'"),
    ("dataset-typo", [*TRAIN, "--dataset", "mnits"], None, "Did you mean mnist"),
    ("model-typo", [*TRAIN, "--model", "resnet23"], None, "Did you mean"),
    ("preset-typo", ["distill-online", "--preset", "papr", "--out", "x"], None, "Did you mean paper?"),
    ("method-typo", ["distill-online", "--method", "dmll", "--out", "x"], None, "Did you mean dml"),
    ("method-of-another-command", ["distill-online", "--method", "dafl", "--out", "x"], None, "is not an online method"),
    # TOML files: types, unknown keys, the file itself
    ("toml-epochs-text", TRAIN, toml('epochs = "abc"\n'), "c.toml: epochs must be an integer (got 'abc')"),
    ("toml-lr-text", TRAIN, toml('lr = "0.1"\n'), "c.toml: lr must be a number (got '0.1')"),
    ("toml-epochs-fraction", TRAIN, toml("epochs = 1.5\n"), "c.toml: epochs must be an integer (got 1.5)"),
    ("toml-batch-size-bool", TRAIN, toml("batch_size = true\n"), "batch_size must be an integer (got True)"),
    ("toml-nesterov-text", TRAIN, toml('nesterov = "yes"\n'), "nesterov must be true or false"),
    ("toml-milestones-text", TRAIN, toml('milestones = ["a"]\n'), "milestones must be a list of numbers"),
    ("toml-lr-nan", TRAIN, toml("lr = nan\n"), "lr must be a finite number"),
    ("toml-unknown-key", TRAIN, toml("epochz = 3\n"), "unknown setting 'epochz'. Did you mean epochs?"),
    ("toml-unknown-section-key", TRAIN, toml("[optim]\nlrr = 3\n"), "unknown setting 'lrr'. Did you mean lr?"),
    ("toml-section-not-table", TRAIN, toml("train = 3\n"), "must be a table"),
    ("toml-method-name", TRAIN, toml('method = "dml"\n'), "its hyperparameters go in a [method] table"),
    ("toml-syntax", TRAIN, toml("epochs = \n"), "is not valid TOML"),
    ("toml-range-after-merge", TRAIN, toml("momentum = 1.0\n"), "--momentum must be in [0, 1)"),
    ("toml-missing", [*TRAIN, "--config", "missing.toml"], None, "not found"),
    ("toml-is-a-folder", TRAIN, lambda tmp, teacher: ((tmp / "conf").mkdir(), ["--config", "conf"])[1], "is not a file"),
    # method hyperparameters: types and ranges, from flags, --param and TOML
    ("alpha-above-one", [*DISTILL, "--alpha", "2"], None, "alpha must be in [0, 1] (got 2.0)"),
    ("temperature-zero", [*DISTILL, "--temperature", "0"], None, "temperature must be positive"),
    ("param-not-a-number", [*DISTILL, "--param", "alpha=x"], None, "alpha must be float (got 'x')"),
    ("param-typo", [*DISTILL, "--param", "alpah=1"], None, "Did you mean alpha?"),
    ("param-not-key-value", [*DISTILL, "--param", "alpha"], None, "KEY=VALUE"),
    ("toml-method-param-text", DISTILL, toml('[method]\nalpha = "0.5"\n'), "alpha must be a number (got '0.5')"),
    ("peers-zero", ["distill-online", "--method", "dml", "--peers", "0", "--out", "x"], None, "peers must be positive"),
    ("latent-dim-zero", ["distill-datafree", "--teacher", TEACHER, "--method", "dafl", "--latent-dim", "0", "--out",
                         "x"], None, "latent_dim must be positive"),
    ("betas-negative", ["distill-datafree", "--teacher", TEACHER, "--method", "zskd", "--param", "betas=1,-1",
                        "--out", "x"], None, "betas must be positive (got -1.0)"),
    # --resume: another command's run, a changed config, contradictions
    ("resume-other-command", ["distill", "--resume", TEACHER], None, "was made by kd train-teacher, not kd distill"),
    ("resume-online-other-command", ["distill-online", "--resume", TEACHER], None, "resume it with: kd train-teacher"),
    ("resume-changed-batch-size", ["train-teacher", "--resume", TEACHER, "--batch-size", "3"], None,
     "--batch-size 3 (the run has 64)"),
    ("resume-changed-model-and-seed", ["train-teacher", "--resume", TEACHER, "--model", "resnet20", "--seed", "5"],
     None, "--model resnet20 (the run has lenet5); --seed 5 (the run has 0)"),
    ("resume-with-overwrite", ["train-teacher", "--resume", TEACHER, "--overwrite"], None, "contradict"),
    ("resume-with-out", ["train-teacher", "--resume", TEACHER, "--out", "y"], None, "drop --out"),
    ("resume-complete", ["train-teacher", "--resume", TEACHER], None, "already complete"),
    ("resume-not-a-run", ["train-teacher", "--resume", "."], None, "is not a kd run directory"),
    ("resume-missing", ["train-teacher", "--resume", "nowhere"], None, "not found"),
    ("resume-killed-before-run-json", ["train-teacher", "--resume", "k"],
     lambda tmp, teacher: ((tmp / "k").mkdir(), (tmp / "k" / checkpoint.LOCK_FILE).write_text("{}"), [])[2],
     "stopped before its first checkpoint"),
    # run directories
    ("out-is-a-file", ["train-teacher", "--out", "f"], lambda tmp, teacher: ((tmp / "f").write_text("mine"), [])[1],
     "--out f is a file"),
    ("out-under-a-file", ["train-teacher", "--out", "f/run"], lambda tmp, teacher: ((tmp / "f").write_text("mine"), [])[1],
     "f is a file, not a directory"),
    ("out-exists", ["train-teacher", "--out", "d"], lambda tmp, teacher: ((tmp / "d").mkdir(), (tmp / "d" / "a").touch(),
                                                                  [])[2], "pass --overwrite"),
    ("overwrite-user-folder", ["train-teacher", "--out", "d", "--overwrite"],
     lambda tmp, teacher: ((tmp / "d").mkdir(), (tmp / "d" / "README").write_text("mine"), [])[2], "not a kd run directory"),
    ("overwrite-current-folder", ["train-teacher", "--out", ".", "--overwrite"],
     lambda tmp, teacher: ((tmp / "README").write_text("mine"), [])[1], "current directory or one of its parents"),
    ("overwrite-parent-folder", ["train-teacher", "--out", "..", "--overwrite"], None,
     "current directory or one of its parents"),
    # data
    ("folder-one-class", ["train-teacher", "--dataset", "folder:imgs", "--out", "x"],
     lambda tmp, teacher: (write_png_folder(tmp / "imgs"), shutil.rmtree(tmp / "imgs/train/bee"),
                  shutil.rmtree(tmp / "imgs/train/cat"), shutil.rmtree(tmp / "imgs/test/bee"),
                  shutil.rmtree(tmp / "imgs/test/cat"), [])[-1], "at least 2 classes"),
    ("folder-corrupt-image", ["train-teacher", "--dataset", "folder:imgs", "--out", "x"],
     lambda tmp, teacher: (write_png_folder(tmp / "imgs"), (tmp / "imgs/train/bee/2.png").write_bytes(b"\x89PNG broken"),
                  [])[-1], "imgs/train/bee/2.png is not a readable image"),
    ("folder-truncated-image", ["train-teacher", "--dataset", "folder:imgs", "--out", "x"],
     lambda tmp, teacher: (write_png_folder(tmp / "imgs"), (tmp / "imgs/train/cat/1.png").write_bytes(
         (tmp / "imgs/train/cat/1.png").read_bytes()[:60]), [])[-1], "imgs/train/cat/1.png is not a readable image"),
    ("folder-no-test-split", ["train-teacher", "--dataset", "folder:imgs", "--out", "x"],
     lambda tmp, teacher: (write_png_folder(tmp / "imgs"), shutil.rmtree(tmp / "imgs/test"), [])[-1], "has no test split"),
    ("mnist-truncated-archive", ["train-teacher", "--dataset", "mnist", "--data-dir", "m", "--out", "x"],
     lambda tmp, teacher: (write_fake_mnist(tmp / "m"), (tmp / "m/train-images-idx3-ubyte.gz").write_bytes(
         (tmp / "m/train-images-idx3-ubyte.gz").read_bytes()[:200]), [])[-1], "train-images-idx3-ubyte.gz"),
    ("usps-truncated-archive", ["train-teacher", "--dataset", "usps", "--data-dir", "u", "--out", "x"],
     lambda tmp, teacher: ((tmp / "u").mkdir(), (tmp / "u/usps.bz2").write_bytes(bz2.compress(b"1 1:0.5\n" * 50)[:40]),
                  (tmp / "u/usps.t.bz2").write_bytes(bz2.compress(b"1 1:0.5\n")), [])[-1], "usps.bz2"),
    ("mnist-not-gzip", ["train-teacher", "--dataset", "mnist", "--data-dir", "m", "--out", "x"],
     lambda tmp, teacher: (write_fake_mnist(tmp / "m"), (tmp / "m/train-labels-idx1-ubyte.gz").write_bytes(b"not gzip"),
                  [])[-1], "train-labels-idx1-ubyte.gz"),
    ("mnist-bad-header", ["train-teacher", "--dataset", "mnist", "--data-dir", "m", "--out", "x"],
     lambda tmp, teacher: (write_fake_mnist(tmp / "m"), (tmp / "m/train-labels-idx1-ubyte.gz").write_bytes(
         gzip.compress(b"\x01\x02\x03")), [])[-1], "is not an idx file"),
    # kd evaluate
    ("evaluate-duplicate", ["evaluate", TEACHER, TEACHER], None, "is given twice"),
    ("evaluate-duplicate-role", ["evaluate", TEACHER, TEACHER + ":teacher"], None, "is given twice"),
    ("evaluate-second-run-does-not-fit", ["evaluate", TEACHER, "other", "--dataset", "digits", "--no-latency"],
     lambda tmp, teacher: (_edited_copy(teacher, tmp, "other", {"name": "fake-1-8-5", "num_classes": 5}), [])[-1],
     "cannot evaluate other (a fake-1-8-5 run) on digits"),
    ("evaluate-run-json-missing-key", ["evaluate", "damaged"], lambda tmp, teacher: (_edited_copy(teacher, tmp, "damaged", None), [])[-1],
     "lacks 'dataset'"),
    ("evaluate-run-json-not-json", ["evaluate", "broken"],
     lambda tmp, teacher: (_edited_copy(teacher, tmp, "broken", {}), (tmp / "broken/run.json").write_text("{"), [])[-1], "is corrupt"),
    ("evaluate-batch-size-zero", ["evaluate", TEACHER, "--batch-size", "0"], None, "--batch-size must be positive"),
    # kd synthesize
    ("synthesize-overwrite-user-folder", ["synthesize", "--teacher", TEACHER, "--out", "d", "--overwrite"],
     lambda tmp, teacher: ((tmp / "d").mkdir(), (tmp / "d" / "README").write_text("mine"), [])[2], "--overwrite refuses d"),
    ("synthesize-count-zero", ["synthesize", "--teacher", TEACHER, "-n", "0", "--out", "x"], None,
     "-n must be positive"),
    ("synthesize-dtype-unknown", ["synthesize", "--teacher", TEACHER, "--dtype", "float8", "--out", "x"], None,
     "--dtype must be one of"),
]

def _edited_copy(teacher: Path, tmp: Path, name: str, dataset: dict | None) -> None:
    """A copy of the teacher run whose run.json's dataset is changed (``None``: removed)."""
    shutil.copytree(teacher, tmp / name)
    info = json.loads((tmp / name / "run.json").read_text())
    if dataset is None:
        del info["dataset"]
    else:
        info["dataset"].update(dataset)
    (tmp / name / "run.json").write_text(json.dumps(info))


@pytest.mark.parametrize("args,setup,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(args, setup, pattern, tmp_path, teacher_run, monkeypatch):
    work = tmp_path / "cwd"  # a folder of its own, so `--out ..` names a folder the test owns
    work.mkdir()
    monkeypatch.chdir(work)
    extra = setup(work, teacher_run) if setup is not None else []
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    teacher_files = sorted(p.name for p in teacher_run.iterdir())
    args = [str(teacher_run) + a[len(TEACHER):] if a.startswith(TEACHER) else a for a in args]
    assert_one_line(kd(*args, *extra), pattern)
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before  # nothing written, nothing lost
    assert sorted(p.name for p in teacher_run.iterdir()) == teacher_files


def test_a_run_directory_in_use_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    lock = checkpoint.RunLock(tmp_path / "x").acquire()
    try:
        line = assert_one_line(kd(*TRAIN), f"x is in use by pid {os.getpid()} on {socket.gethostname()}")
        assert "--out" in line
    finally:
        lock.release()
    assert list((tmp_path / "x").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_out_fails_before_any_data_is_read(tmp_path, monkeypatch):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        assert_one_line(kd("train-teacher", "--out", "ro/run"), "cannot create ro/run: Permission denied")
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_out_problems_fail_before_any_data_is_read(tmp_path, monkeypatch):
    import kdcli.run

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the run directory was claimed")

    monkeypatch.setattr(kdcli.run, "get_dataset", no_data)
    (tmp_path / "f").write_text("mine")
    assert_one_line(kd("train-teacher", "--out", "f"), "is a file")
    assert_one_line(kd("train-teacher", "--out", "f/run"), "is a file, not a directory")
    assert (tmp_path / "f").read_text() == "mine"


def test_overwrite_replaces_only_a_kd_run_and_never_a_user_file(tmp_path, teacher_run):
    shutil.copytree(teacher_run, tmp_path / "run")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert_one_line(kd(*TRAIN[:1], "--out", "run", "--overwrite", "--epochs", "1"),
                    "holds files kd did not write (notes.txt)")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "run" / "teacher.safetensors").is_file()  # the run is untouched too
    (tmp_path / "run" / "notes.txt").unlink()
    result = kd("train-teacher", "--out", "run", "--overwrite", "--epochs", "1", "--model", "lenet5", "--device",
                "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    # a kd run whose new config is bad keeps the old run: nothing is removed before the new one can start
    before = (tmp_path / "run" / "teacher.safetensors").read_bytes()
    assert_one_line(kd("train-teacher", "--out", "run", "--overwrite", "--dataset", "mnits"), "Did you mean mnist")
    assert (tmp_path / "run" / "teacher.safetensors").read_bytes() == before


def test_diverging_run_exits_3_with_one_line_and_valid_json(tmp_path):
    result = kd("train-teacher", "--model", "lenet5", "--lr", "1e6", "--epochs", "2", "--device", "cpu", "--out",
                "run", "--quiet")
    assert_one_line(result, "training diverged at epoch 1", code=3)
    info = json.loads((tmp_path / "run" / "run.json").read_text(), parse_constant=_no_constants)
    assert info["status"] == "diverged" and "not finite" in info["diverged"]
    assert not (tmp_path / "run" / checkpoint.LOCK_FILE).exists()


def _no_constants(name: str) -> None:
    raise AssertionError(f"{name} in JSON")


def test_umask_is_respected(tmp_path):
    previous = os.umask(0o027)
    try:
        result = kd("train-teacher", "--model", "lenet5", "--epochs", "1", "--device", "cpu", "--out", "run", "--quiet")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o750
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {0o640}, modes


def test_json_files_never_hold_nan(tmp_path):
    checkpoint.write_json(tmp_path / "a.json", {"loss": float("nan"), "rows": [float("inf"), 1.5]})
    checkpoint.append_jsonl(tmp_path / "m.jsonl", {"loss": float("-inf")})
    assert json.loads((tmp_path / "a.json").read_text()) == {"loss": None, "rows": [None, 1.5]}
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"loss": None}


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    def full(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(checkpoint.KDError, match=r"cannot write .*a\.json: No space left on device"):
        checkpoint._atomic(tmp_path / "a.json", full)
    assert list(tmp_path.iterdir()) == []


def test_a_stale_lock_is_reclaimed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / checkpoint.LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": socket.gethostname()}))
    (run / ".run.json.abc.tmp").write_text("half")
    claim = checkpoint.claim_run_dir(str(run), "unused")
    try:
        assert not claim.created and sorted(p.name for p in run.iterdir()) == [checkpoint.LOCK_FILE]
        assert json.loads((run / checkpoint.LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        claim.release()
    assert list(run.iterdir()) == []

