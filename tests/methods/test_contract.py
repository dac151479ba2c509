"""The method contract, for every registered method: a few steps on digits through the orchestrator,
interrupted and resumed, saved, reloaded and evaluated; synthesis for the methods that synthesise.

Parametrised over the registry: a new method is covered here by adding its file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest

from kdcli import checkpoint
from kdcli.data.synthetic import read_set
from kdcli.errors import Interrupted
from kdcli.evaluate import evaluate_runs
from kdcli.methods import METHODS
from kdcli.presets import resolve_config
from kdcli.run import synthesize, train

#: hyperparameters that set a method's cost, cut to a few steps wherever a method has them
CHEAP = {"n": 48, "iterations": 3, "student_steps": 1, "synth_batch": 48, "burn_in": 2, "exchange_every": 2}


def cheap_config(name: str, teacher: Path | None, out: Path, **flags: object):
    cls = METHODS.resolve(name)[0].builder
    fields = {f.name for f in dataclasses.fields(cls.Params)} if dataclasses.is_dataclass(cls.Params) else set()
    method_flags = {k: v for k, v in CHEAP.items() if k in fields}
    base = {"epochs": 2, "batch_size": 16, "device": "cpu", "out": str(out), "seed": 1}
    if teacher is not None:
        base["teacher"] = str(teacher)
    if cls.needs_data and not cls.needs_teacher:
        base["dataset"] = "digits"
    return resolve_config(METHODS.resolve(name)[0].info["command"], name, flags={**base, **flags},
                          method_flags=method_flags)


def teacher_for(name: str, bn_teacher: Path) -> Path | None:
    """A ResNet-20 teacher run (BatchNorm and the statistics every data-free method may ask for), if needed."""
    return bn_teacher if METHODS.resolve(name)[0].builder.needs_teacher else None


@pytest.mark.parametrize("name", [entry.name for entry in METHODS])
def test_every_method_trains_resumes_saves_and_evaluates(name, bn_teacher, tmp_path):
    teacher = teacher_for(name, bn_teacher)
    out = tmp_path / "run"

    def ctrl_c(method, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="--resume"):
        train(cheap_config(name, teacher, out), quiet=True, after_step=ctrl_c)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and (out / checkpoint.STATE_FILE).is_file()
    result = train(None, resume=str(out), quiet=True)
    assert result["status"] == "complete" and len(result["history"]) == 2
    assert result["method"] == name and result["config"]["preset"] == "quick"
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and not (out / checkpoint.STATE_FILE).exists()
    assert set(info["roles"]) == {p.stem for p in out.glob("*.safetensors") if p.stem in info["roles"]}
    assert info["primary"] in info["roles"]
    assert (out / "curves.png").is_file() and (out / "metrics.jsonl").read_text().count("\n") == 2
    rows = evaluate_runs([str(out)], device="cpu", measure_latency=False)
    for row in rows:  # every model rebuilds from the run alone and scores what the run recorded
        assert row["top1"] == pytest.approx(result["metrics"]["test"][row["role"]]["top1"], abs=1e-9), row["role"]
    model, meta = checkpoint.load_run_model(str(out))
    assert meta["role"] == info["primary"] and not model.training


@pytest.mark.parametrize("name", [e.name for e in METHODS if e.builder.synthesis != "none"])
def test_every_synthesising_method_writes_a_set(name, bn_teacher, tmp_path):
    config = cheap_config(name, teacher_for(name, bn_teacher), tmp_path / "unused", epochs=1)
    result = synthesize(config, 20, tmp_path / "set", quiet=True)
    data, description = read_set(tmp_path / "set")
    assert len(data) == result["count"] == 20 and description["method"] == name
    assert data.soft_targets.shape == (20, 10)


@pytest.mark.parametrize("name", [entry.name for entry in METHODS])
def test_every_numeric_hyperparameter_has_a_range(name):
    """Validation up front: each number a method takes is bounded by its ``param_ranges`` (and its defaults fit)."""
    import typing

    cls = METHODS.resolve(name)[0].builder
    if not dataclasses.is_dataclass(cls.Params):
        return
    numbers = {int, float, int | None, float | None, list[int], list[float]}
    hints = typing.get_type_hints(cls.Params)
    numeric = {f.name for f in dataclasses.fields(cls.Params) if hints[f.name] in numbers}
    assert numeric <= set(cls.param_ranges), f"{name}: no range for {sorted(numeric - set(cls.param_ranges))}"
    cls.make_params({})  # the defaults are within their ranges
