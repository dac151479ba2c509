"""CPU threads: the cgroup quota a container sets, the overrides, and the automatic choice from the work per step."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcli.device import WORK_PER_THREAD_MMAC, busy_cpus, cgroup_cpu_limit, choose_threads
from kdcli.run import train
from tests.conftest import digits_config


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_cpu_max_is_read_from_the_process_cgroup_and_its_ancestors(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "0::/kd.slice/job\n")
    _write(tmp_path / "fs/kd.slice/job/cpu.max", "max 100000\n")
    _write(tmp_path / "fs/kd.slice/cpu.max", "150000 100000\n")  # the parent's quota binds the child
    assert cgroup_cpu_limit(tmp_path / "fs", proc) == pytest.approx(1.5)
    _write(tmp_path / "fs/kd.slice/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", proc) is None


def test_cgroup_v1_cfs_quota_and_no_quota(tmp_path):
    proc = tmp_path / "cgroup"
    _write(proc, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    _write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", proc) == pytest.approx(0.5)
    _write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path / "fs", proc) is None
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "missing") is None


def test_threads_follow_the_flag_then_omp_num_threads_then_the_work():
    assert choose_threads(3, 1.0, cpus=2, environ={"OMP_NUM_THREADS": "2"}).threads == 3
    omp = choose_threads(0, 1e6, cpus=8, environ={"OMP_NUM_THREADS": "1"})
    assert (omp.threads, omp.source) == (1, "OMP_NUM_THREADS")
    small = choose_threads(0, 100.0, cpus=2, environ={})  # LeNet-5 on 8×8 digits is ~13 M per step
    assert (small.threads, small.source) == (1, "auto")
    big = choose_threads(0, 10 * WORK_PER_THREAD_MMAC, cpus=2, environ={})
    assert big.threads == 2  # never more than the usable CPUs
    assert choose_threads(0, 10 * WORK_PER_THREAD_MMAC, cpus=0.5, environ={}).threads == 1  # a half-CPU quota
    assert choose_threads(0, 3 * WORK_PER_THREAD_MMAC, cpus=16, environ={}).threads == 3


def test_threads_leave_the_cores_other_jobs_hold(tmp_path):
    work = 10 * WORK_PER_THREAD_MMAC
    assert choose_threads(0, work, cpus=2, busy=0, environ={}).threads == 2
    shared = choose_threads(0, work, cpus=2, busy=1, environ={})  # one other job: one thread, not a collapse
    assert shared.threads == 1 and "1 other runnable thread left 1 free" in shared.reason
    assert choose_threads(0, work, cpus=2, busy=7, environ={}).threads == 1
    assert choose_threads(2, work, cpus=2, busy=7, environ={}).threads == 2  # --threads is obeyed
    # before the work is known (a data-free method's synthesis) the busy cores count as well
    assert choose_threads(0, None, cpus=2, busy=0, environ={}).threads == 2
    early = choose_threads(0, None, cpus=2, busy=3, environ={})
    assert early.threads == 1 and "left 1 free" in early.reason
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.10 2.00 1.50 3/412 12345\n")  # 3 runnable, this process among them
    assert busy_cpus(samples=2, interval_s=0.0, loadavg=loadavg) == 2
    assert busy_cpus(loadavg=tmp_path / "missing") is None


def test_the_choice_is_recorded_in_run_json(tmp_path):
    config = digits_config(epochs=1)
    config.out = str(tmp_path / "run")
    threads = train(config, quiet=True)["threads"]
    assert threads["source"] in ("auto", "OMP_NUM_THREADS") and threads["threads"] >= 1
    assert threads["work_mmac"] == pytest.approx(3 * 64 * 66_600 / 1e6)  # LeNet-5 on 8×8: 66,600 per image
    config.train.threads = 2
    config.out = str(tmp_path / "two")
    assert train(config, quiet=True)["threads"]["threads"] == 2
