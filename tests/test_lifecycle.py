"""A run's life as processes see it: one writer per run directory, SIGTERM and Ctrl-C, kill -9 at any instant.

Every `kd` here is a real process (forked from a zygote that imported kd once: see ``tests/processes.py``),
signalled and killed by pid. ``KD_TEST_PAUSE_WRITES`` makes each atomic write announce itself and pause
before its rename, so a signal or a kill can land inside a chosen write.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from kdcli import checkpoint
from tests.processes import Zygote

#: A teacher run on digits: 2 epochs of LeNet-5, a second or two of CPU.
ARGS = ["train-teacher", "--model", "lenet5", "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--seed", "3",
        "--quiet"]
PAUSE = {checkpoint.PAUSE_ENV: "0.05"}


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


@pytest.fixture(scope="module")
def reference(zygote: Zygote, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every stopped-and-resumed run must end identical to."""
    folder = tmp_path_factory.mktemp("reference")
    code, output = zygote.run([*ARGS, "--out", "run"], folder)
    assert code == 0, output
    return folder / "run"


def without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical weights and numbers, a complete run.json, one metrics row per epoch, nothing left over."""
    info, ref = json.loads((run / "run.json").read_text()), json.loads((reference / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["metrics"]["test"] == ref["metrics"]["test"]
    assert without_times(info["history"]) == without_times(ref["history"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert without_times(rows) == without_times(ref["history"])  # never a duplicated or missing row
    ours, _ = checkpoint.load_tensors(run / "teacher.safetensors")
    theirs, _ = checkpoint.load_tensors(reference / "teacher.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    left = sorted(p.name for p in run.iterdir())
    assert left == sorted(p.name for p in reference.iterdir()), left  # no state, lock or temp file


def test_two_writers_of_one_run_directory(zygote: Zygote, tmp_path: Path) -> None:
    first = zygote.start([*ARGS, "--out", "run"], tmp_path, PAUSE)
    assert first.wait_for_marker("run.json")  # it holds the directory now
    code, output = zygote.run([*ARGS, "--out", "run"], tmp_path)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and f"in use by pid {first.pid} on {socket.gethostname()}" in lines[0], output
    code, output = zygote.run([*ARGS, "--out", "run", "--overwrite"], tmp_path)  # not even to replace it
    assert code == 2 and "in use by pid" in output, output
    assert first.wait() == 0, first.output()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "run" / checkpoint.LOCK_FILE).exists()


def test_sigterm_mid_epoch_saves_and_resume_reaches_the_uninterrupted_numbers(zygote, reference, tmp_path):
    child = zygote.start([*ARGS, "--out", "run"], tmp_path, PAUSE)
    # the run.json written with epoch 1's checkpoint: the signal lands inside that write, so the run stops
    # after the first step of epoch 2
    assert child.wait_for_marker("run.json", occurrence=2)
    child.signal(signal.SIGTERM)
    code = child.wait()
    lines = child.output().strip().splitlines()
    assert code == 143, child.output()
    assert lines[-1] == "error: SIGTERM at epoch 2 step 1: saved. Resume with: kd train-teacher --resume run"
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["status"], info["epoch"], info["step"]) == ("interrupted", 1, 1)
    code, output = zygote.run([*ARGS[:1], "--resume", "run"], tmp_path)
    assert code == 0, output
    assert_same_run(tmp_path / "run", reference)


def test_a_second_signal_aborts_and_says_where_the_last_state_is(zygote, reference, tmp_path):
    child = zygote.start([*ARGS, "--out", "run"], tmp_path, {checkpoint.PAUSE_ENV: "1"})
    assert child.wait_for_marker("run.json", occurrence=2)  # epoch 1's checkpoint is on disk; run.json being written
    child.signal(signal.SIGINT)
    time.sleep(0.05)  # two signals at once are one signal
    child.signal(signal.SIGINT)  # still inside the same write: abort now
    code = child.wait()
    assert code == 130, child.output()
    last = child.output().strip().splitlines()[-1]
    assert last == ("error: aborted by SIGINT; the last saved state (epoch 1 step 0) is in run. Resume with: "
                    "kd train-teacher --resume run"), last
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"
    code, output = zygote.run([*ARGS[:1], "--resume", "run"], tmp_path)
    assert code == 0, output
    assert_same_run(tmp_path / "run", reference)


#: Inside each file a teacher run writes (the n-th write of it by one process), then two random instants.
WRITES = [("run.json", 1), ("metrics.jsonl", 1), ("state.safetensors", 1), ("run.json", 2), ("state.safetensors", 2),
          ("teacher.safetensors", 1), ("curves.png", 1), ("metadata.safetensors", 1), ("run.json", 4)]


def test_kill_9_at_any_instant_then_resume_ends_bit_identical(zygote, reference, tmp_path):
    """Ten kill -9: inside each kind of write, and at random instants; every run then resumed (or, when
    refused with its clear message, started again) ends bit-identical to the uninterrupted one."""
    rng = random.Random(9)
    instants = [(name, n, 0.0) for name, n in WRITES]
    # and mid-training: a moment after a write early in the run (its pause is 0.05 s)
    instants += [(*rng.choice(WRITES[:5]), rng.uniform(0.06, 0.2)) for _ in range(10 - len(instants))]
    run, started, kills, finished = tmp_path / "run", False, 0, 0
    fresh = [*ARGS, "--out", "run", "--overwrite"]
    resume = [*ARGS[:1], "--resume", "run"]
    history: list[str] = []
    for name, occurrence, delay in instants:
        for _ in range(4):  # a process may finish (or be refused) before it reaches the instant: go on
            child = zygote.start(resume if started else fresh, tmp_path, PAUSE)
            if child.wait_for_marker(name, occurrence):
                time.sleep(delay)  # 0: inside the write (it pauses before its rename); else a little later
                child.signal(signal.SIGKILL)
                code = child.wait()
                if code == -signal.SIGKILL:
                    history.append(f"killed in {name} #{occurrence} +{delay:.2f}s after {child.markers()}")
                    started, kills = True, kills + 1
                    break
            else:
                code = child.wait()
            output = child.output()
            history.append(f"exit {code} after {child.markers()}: {output.strip().splitlines()[-1:]}")
            if code == 0:
                assert_same_run(run, reference)
                finished += 1
            else:  # refused: a run killed before its first checkpoint says so, and is started again
                assert code == 2 and "before its first checkpoint" in output, output
            started = False
        else:
            pytest.fail(f"never reached {name} #{occurrence}: " + "\n".join(history))
    code, output = zygote.run(resume, tmp_path)
    if code != 0:  # killed before its first checkpoint: refused with a clear message, so started again
        assert code == 2 and "before its first checkpoint" in output, output
        code, output = zygote.run(fresh, tmp_path)
    assert code == 0, output
    assert_same_run(run, reference)
    assert kills == 10
