"""The no-flag data-free defaults on digits, as a user gets them: ``kd train-teacher`` then ``kd distill-datafree
--method M --teacher RUN`` for every method, each at its ``quick`` preset's digits entry.

Each run finishes in seconds (the README's promise) and is scored against the noise baseline at its own
digits defaults (seed 0). The runs are pinned to one thread, the count kd's automatic choice gives their
training steps, so the numbers are the ones measured (3-seed numbers in docs/results.md) and the time
bound counts CPU seconds, which a busy machine does not stretch the way it stretches wall time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kdcli import api
from kdcli.presets import methods_of

SECONDS = 60  # CPU seconds, generous: each default takes ~20 s on one CPU thread, start-up included
CHANCE = 10.0  # top-1 % of a guess
#: points (top-1 %) a method's default must score above the noise baseline's default on seed 0 (measured
#: on seeds 0/1/2: ZSKD +36/+31/+40, Lopes +21/+30/+20, ZSKT +19/+17/+35, DeepInversion +25/+13/+24).
#: ``None``: a known gap (issue 11): DAFL's default is not clearly above noise over seeds 0-2 (+12/−2/+6),
#: so it is held to 3× chance only.
MARGIN: dict[str, float | None] = {"dafl": None, "zskt": 10.0, "zskd": 10.0, "lopes": 10.0, "deepinversion": 10.0}


@pytest.fixture(scope="module")
def default_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``kd train-teacher`` with no flags (ResNet-20 on digits, its quick preset), on the CPU."""
    out = tmp_path_factory.mktemp("digits-defaults") / "teacher"
    api.train_teacher(out=str(out), device="cpu", threads=1)
    return out


def run_default(teacher: Path, method: str, out: Path) -> tuple[float, float]:
    """Top-1 % of ``kd distill-datafree --method METHOD`` at its defaults (seed 0), and its CPU seconds."""
    start = time.process_time()
    run = api.distill_datafree(teacher=str(teacher), method=method, out=str(out), device="cpu", threads=1)
    seconds = time.process_time() - start
    assert run.info["config"]["preset"] == "quick" and run.info["dataset"]["name"] == "digits"
    return 100 * run.metrics["test"]["student"]["top1"], seconds


@pytest.fixture(scope="module")
def noise_default(default_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    top1, seconds = run_default(default_teacher, "noise", tmp_path_factory.mktemp("noise") / "run")
    assert seconds < SECONDS
    assert top1 > 3 * CHANCE
    return top1


def test_every_datafree_method_is_scored_here() -> None:
    assert sorted(MARGIN) == sorted(m for m in methods_of("distill-datafree") if m != "noise")


@pytest.mark.slow
@pytest.mark.parametrize("method", list(MARGIN))
def test_digits_default_is_quick_and_beats_noise(method: str, default_teacher: Path, noise_default: float,
                                                 tmp_path: Path) -> None:
    top1, seconds = run_default(default_teacher, method, tmp_path / method)
    assert seconds < SECONDS, f"{method} took {seconds:.0f} CPU s at its digits defaults"
    margin = MARGIN[method]
    if margin is None:
        assert top1 > 3 * CHANCE, f"{method} {top1:.2f} % (noise {noise_default:.2f} %)"
    else:
        assert top1 >= noise_default + margin, f"{method} {top1:.2f} % vs noise {noise_default:.2f} %"
