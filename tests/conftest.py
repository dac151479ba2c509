"""Shared fixtures: tiny, fast configs on the embedded digits data, run in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kdcli.config import RunConfig

# The suite pins its thread count (kd's automatic choice, tested in tests/test_device.py, would give small
# digits runs one thread): a BatchNorm network's numbers depend on how float sums are split across threads,
# and the short runs' thresholds were set at two.
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, os.cpu_count() or 1))))
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, so default `runs/` never lands in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """kd's cache ($XDG_CACHE_HOME/kd: folder datasets, the catalogue) goes to a temp folder, not the user's home."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def digits_config(command: str = "train-teacher", method: str = "supervised", **train: object) -> RunConfig:
    config = RunConfig(command=command, method=method, model="lenet5")
    config.data.dataset = "digits"
    config.train.epochs = 3
    config.train.batch_size = 64
    config.train.device = "cpu"
    config.optim.lr = 0.05
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small digits teacher shared by the tests that need a trained run."""
    from kdcli.run import train

    out = tmp_path_factory.mktemp("teacher") / "run"
    config = digits_config(epochs=8)
    config.out = str(out)
    train(config, quiet=True)
    return out


@pytest.fixture(scope="session")
def bn_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-20 on digits (BatchNorm, for DeepInversion): 3 epochs."""
    from kdcli.run import train

    out = tmp_path_factory.mktemp("bn") / "teacher"
    config = digits_config(epochs=3)
    config.model = "resnet20"
    config.out = str(out)
    train(config, quiet=True)
    return out
