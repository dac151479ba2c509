"""kd on torch.distributed, for real: 2 gloo processes on the CPU, started by torchrun or by hand.

Each multi-process test is one short job on digits; together they check that a 2-process
data-parallel run equals a 1-process run, that only rank 0 writes, that a dead or hung rank stops
the others within the collective timeout with a line naming it, that the last checkpoint survives
and resumes, and that Ctrl-C on the launcher leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kdcli import distributed
from kdcli.config import RunConfig
from kdcli.data.base import ImageSet
from kdcli.data.loader import DeviceLoader
from kdcli.distributed import World
from kdcli.run import train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")

TEACHER_ARGS = ["train-teacher", "--model", "lenet5", "--epochs", "3", "--batch-size", "32", "--lr", "0.05",
                "--device", "cpu", "--quiet", "--json"]
# Long enough that a signal sent when the first checkpoint appears lands well before the end.
LONG_ARGS = [*TEACHER_ARGS[:4], "12", *TEACHER_ARGS[5:]]


# ---------------------------------------------------------------------------------------------
# Launch helpers (also used by tests/methods/test_codistill.py)


def worker_env(timeout_s: float = 30.0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", KD_DIST_TIMEOUT=str(timeout_s), PYTHONUNBUFFERED="1")
    return env


def torchrun(args: list[str], cwd: Path, timeout_s: float = 30.0, wait: bool = True) -> Any:
    """``torchrun --standalone --nproc-per-node 2 -m kdcli ARGS`` (a free port, gloo on the CPU).

    Returns the finished process, or with ``wait=False`` the running launcher (output piped).
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "kdcli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=worker_env(timeout_s), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=cwd, env=worker_env(timeout_s), capture_output=True, text=True, timeout=240)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def by_hand(argv: list[str], cwd: Path, timeout_s: float) -> list[subprocess.Popen]:
    """Two ranks started with torchrun's variables but no torchrun: nothing cleans up after a failure
    but kd itself (the situation of a rank on another machine)."""
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**worker_env(timeout_s), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def wait_for(path: Path, procs: list[subprocess.Popen], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            outputs = [p.communicate(timeout=30)[0] if p.poll() is not None else "(running)" for p in procs]
            pytest.fail(f"{path} never appeared: {outputs}")
        time.sleep(0.02)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def reference_run(run_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The same run (config read back from ``run_dir``) in this process, with one thread."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = RunConfig.from_dict(json.loads((run_dir / "run.json").read_text())["config"])
    config.out = str(out)
    return train(config, quiet=True)


# Summing a batch as two halves rounds differently from summing it whole; over ~100 SGD steps the
# last-bit differences grow to ~1e-5 relative, so "equal" means equal to 1e-4.
def assert_same_history(a: list[dict], b: list[dict], keys: tuple[str, ...] = ("train_loss",)) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for key in keys:
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-4, abs=1e-6), (key, row_a["epoch"])


def assert_same_weights(a: Path, b: Path, atol: float = 1e-4) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], atol=atol, rtol=1e-3, msg=key)


# ---------------------------------------------------------------------------------------------
# Pieces


def test_timeout_and_backend_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_s() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7.5")
    assert distributed.timeout_s() == 7.5
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(Exception, match="KD_DIST_TIMEOUT"):
        distributed.timeout_s()
    assert distributed.backend_for("cpu") == "gloo"
    monkeypatch.delenv("RANK", raising=False)
    assert not distributed.launched() and distributed.init_from_env("cpu") == World()


def _loader(data: ImageSet, batch: int, **kw) -> DeviceLoader:
    return DeviceLoader(data, batch, mean=0.5, std=0.25, device="cpu", shuffle=True, drop_last=True,
                        augment="crop_flip", seed=3, **kw)


def test_rank_slices_put_together_are_the_single_process_batches():
    data = ImageSet(torch.randint(0, 256, (100, 1, 8, 8), dtype=torch.uint8), torch.arange(100) % 10)
    whole = list(_loader(data, 16).epoch(2))
    halves = [list(_loader(data, 16, rank=r, world_size=2).epoch(2)) for r in range(2)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 6
    for (images, labels), (i0, l0), (i1, l1) in zip(whole, *halves):
        assert torch.equal(torch.cat([i0, i1]), images) and torch.equal(torch.cat([l0, l1]), labels)
    with pytest.raises(Exception, match="divisible"):
        _loader(data, 15, rank=0, world_size=2)


def test_partitions_keep_each_slice_on_its_own_fixed_shard():
    data = ImageSet(torch.randint(0, 256, (103, 1, 8, 8), dtype=torch.uint8), torch.arange(103))
    seen: dict[int, set[int]] = {0: set(), 1: set()}
    for epoch in range(3):
        for part in range(2):
            loader = _loader(data, 20, rank=part, world_size=2, partitions=2)
            assert len(loader) == 51 // 10
            for _, labels in loader.epoch(epoch):
                seen[part] |= set(labels.tolist())
    assert not seen[0] & seen[1]
    assert len(seen[0]) <= 51 and len(seen[1]) <= 51
    one = [labels for _, labels in _loader(data, 20, partitions=2).epoch(1)]
    ranks = [_loader(data, 20, rank=r, world_size=2, partitions=2).epoch(1) for r in range(2)]
    two = [torch.cat([l0, l1]) for (_, l0), (_, l1) in zip(*ranks)]
    assert all(torch.equal(a, b) for a, b in zip(one, two))


# ---------------------------------------------------------------------------------------------
# Real jobs


@pytest.fixture(scope="module")
def ddp_job(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("ddp")
    return cwd, torchrun([*TEACHER_ARGS, "--out", "ddp"], cwd)


def test_two_process_teacher_equals_one_process_and_only_rank_0_writes(ddp_job, tmp_path, monkeypatch):
    cwd, job = ddp_job
    assert job.returncode == 0, job.stdout + job.stderr
    run = cwd / "ddp"
    assert sorted(p.name for p in cwd.iterdir()) == ["ddp"]  # no second run directory from rank 1
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["world_size"] == 2
    assert info["distributed"]["backend"] == "gloo"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # one writer, one line per epoch
    assert job.stdout.count('"status": "complete"') == 1  # one report, from rank 0

    single = reference_run(run, tmp_path / "single", monkeypatch)
    assert_same_history(info["history"], single["history"], ("train_loss", "train_acc", "val_top1/teacher"))
    assert_same_weights(run / "teacher.safetensors", tmp_path / "single" / "teacher.safetensors")


def test_a_killed_rank_stops_the_other_and_the_checkpoint_resumes(tmp_path, monkeypatch):
    procs = by_hand(["-m", "kdcli", *LONG_ARGS, "--out", "cut"], tmp_path, timeout_s=30)
    wait_for(tmp_path / "cut" / "state.safetensors", procs)
    procs[1].kill()
    killed = time.monotonic()
    output, _ = procs[0].communicate(timeout=60)
    took = time.monotonic() - killed
    assert procs[0].returncode == 3, output
    assert took < 30, f"rank 0 took {took:.0f}s to notice"
    line = output.strip().splitlines()[-1]
    assert "rank 1 stopped responding" in line and "--resume" in line, output
    procs[1].wait(timeout=30)

    cut = tmp_path / "cut"
    saved = json.loads((cut / "run.json").read_text())
    assert saved["status"] == "running"
    done = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    resumed = train(RunConfig(), resume=str(cut), quiet=True)  # one process picks up a 2-process run
    assert resumed["status"] == "complete" and len(resumed["history"]) == 12
    assert resumed["history"][: len(done)] == done  # continued from the checkpoint, not restarted
    assert resumed["history"][-1]["train_loss"] < done[0]["train_loss"]


HANG = """
import os, time, torch
from kdcli import distributed
world = distributed.init_from_env("cpu")
distributed.any_rank(False)
if world.rank == 1:
    time.sleep(120)  # hung: alive, but never joins the next collective
try:
    distributed.any_rank(False)
except distributed.RankFailure as err:
    print(err)
    raise SystemExit(3)
"""


def test_a_hung_rank_is_named_after_the_collective_timeout(tmp_path):
    procs = by_hand(["-c", HANG], tmp_path, timeout_s=2)
    try:
        output, _ = procs[0].communicate(timeout=60)
    finally:
        procs[1].kill()
        procs[1].wait()
    assert procs[0].returncode == 3, output
    line = output.strip().splitlines()[-1]
    assert line.startswith("rank 0: rank 1 stopped responding (died or hung)"), output
    assert re.search(r"after [23]s \(", line), line  # the 2 s collective timeout (+ scheduling slack)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_on_torchrun_saves_and_leaves_no_process(tmp_path, signum):
    """torchrun passes Ctrl-C or a scheduler's SIGTERM to every rank: all stop at the same step, rank 0 saves."""
    launcher = torchrun([*LONG_ARGS, "--out", "stopped"], tmp_path, wait=False)
    try:
        wait_for(tmp_path / "stopped" / "state.safetensors", [launcher])
        workers = children(launcher.pid)
        assert len(workers) == 2
        launcher.send_signal(signum)
        output, _ = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), output
    info = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert info["status"] == "interrupted", output  # a resumable checkpoint, not a half-written run
    assert "interrupted" in output
    assert f"{signal.Signals(signum).name} at epoch" in output and "Resume with: kd train-teacher --resume stopped" in output
