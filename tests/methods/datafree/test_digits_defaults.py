"""The no-flag data-free defaults on digits, as a user gets them: ``kd train-teacher`` then ``kd distill-datafree
--method M --teacher RUN`` for every method, each at its ``quick`` preset's digits entry.

Each run finishes in seconds (the README's promise) and is scored against the noise baseline at its own
digits defaults: the margins below are what seed 0 measured on two CPU threads, less a few points of slack
(3-seed numbers in docs/results.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kdcli import api
from kdcli.presets import methods_of

SECONDS = 60  # a generous bound for CI; each default takes ~20 s on one quiet CPU thread
CHANCE = 0.1
#: points (top-1 %) a method's default must score above the noise baseline's default on seed 0
MARGIN = {"dafl": 0.0, "zskt": 0.0, "zskd": 0.0, "lopes": 10.0, "deepinversion": 0.0}


@pytest.fixture(scope="module")
def default_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``kd train-teacher`` with no flags (ResNet-20 on digits, its quick preset), on the CPU."""
    out = tmp_path_factory.mktemp("digits-defaults") / "teacher"
    api.train_teacher(out=out, device="cpu")
    return out


def run_default(teacher: Path, method: str, out: Path) -> tuple[float, float]:
    """Top-1 % of ``kd distill-datafree --method METHOD`` at its defaults (seed 0), and its wall seconds."""
    start = time.perf_counter()
    run = api.distill_datafree(teacher=teacher, method=method, out=out, device="cpu")
    seconds = time.perf_counter() - start
    assert run.info["config"]["preset"] == "quick" and run.info["dataset"]["name"] == "digits"
    return 100 * run.metrics["test"]["student"]["top1"], seconds


@pytest.fixture(scope="module")
def noise_default(default_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    top1, seconds = run_default(default_teacher, "noise", tmp_path_factory.mktemp("noise") / "run")
    assert seconds < SECONDS
    assert top1 > 100 * CHANCE + 10
    return top1


def test_every_datafree_method_is_scored_here() -> None:
    assert sorted(MARGIN) == sorted(m for m in methods_of("distill-datafree") if m != "noise")


@pytest.mark.slow
@pytest.mark.parametrize("method", list(MARGIN))
def test_digits_default_is_quick_and_beats_noise(method: str, default_teacher: Path, noise_default: float,
                                                 tmp_path: Path) -> None:
    top1, seconds = run_default(default_teacher, method, tmp_path / method)
    assert seconds < SECONDS, f"{method} took {seconds:.0f} s at its digits defaults"
    assert top1 >= noise_default + MARGIN[method], f"{method} {top1:.2f} % vs noise {noise_default:.2f} %"
