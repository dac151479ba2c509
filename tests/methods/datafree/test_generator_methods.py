"""DAFL and ZSKT against their official codes: the feature DAFL's activation term reads, and fp32 by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdcli.budget import budget_of
from kdcli.device import resolve_precision
from kdcli.errors import KDError
from kdcli.methods.datafree import dafl
from kdcli.presets import method_class, resolve_config
from kdcli.run import train
from tests.methods.datafree.test_datafree_methods import datafree_config

CUDA = torch.device("cuda")  # only its type is read: no GPU is needed


@pytest.mark.parametrize("name", ["dafl", "zskt"])
def test_generator_methods_resolve_auto_to_fp32_even_on_cuda(name, teacher_run):
    cls = method_class(name)
    flags = {"device": "cpu", "teacher": str(teacher_run)}
    assert cls.auto_precision == "fp32"
    assert cls.precision("auto") == "fp32" and resolve_precision(cls.precision("auto"), CUDA) is None
    assert cls.precision("bf16") == "bf16" and resolve_precision(cls.precision("bf16"), CUDA) is torch.bfloat16
    assert budget_of(resolve_config("distill-datafree", name, flags=flags), device_type="cuda")["precision"] == "fp32"
    asked = resolve_config("distill-datafree", name, flags={**flags, "precision": "bf16"})
    assert budget_of(asked, device_type="cuda")["precision"] == "bf16"


@pytest.mark.parametrize("name", ["zskd", "noise", "kd"])
def test_other_methods_keep_bf16_for_auto_on_cuda(name):
    assert resolve_precision(method_class(name).precision("auto"), CUDA) is torch.bfloat16


def test_dafl_reads_the_teachers_declared_feature_and_records_fp32(teacher_run: Path, monkeypatch, tmp_path):
    """LeNet-5's declared feature is its 120-unit layer (the official code's conv3), not the 84-d embedding."""
    seen: list[tuple[int, ...]] = []
    original = dafl.dafl_generator_loss

    def spy(logits, features, *alphas):
        seen.append(tuple(features.shape))
        return original(logits, features, *alphas)

    monkeypatch.setattr(dafl, "dafl_generator_loss", spy)
    config = datafree_config(teacher_run, "dafl", tmp_path / "run", batch_size=16, iterations=2)
    config.train.epochs = 1
    train(config, quiet=True)
    assert seen == [(16, 120), (16, 120)]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["train"]["precision"] == "fp32"
    # what kd read before (the penultimate embedding), kept as a named choice to compare at one budget
    seen.clear()
    config = datafree_config(teacher_run, "dafl", tmp_path / "before", batch_size=16, iterations=2,
                             activation_layer="embedding")
    config.train.epochs = 1
    train(config, quiet=True)
    assert seen == [(16, 84), (16, 84)]
    config = datafree_config(teacher_run, "dafl", tmp_path / "bad", batch_size=16, iterations=2,
                             activation_layer="conv9")
    with pytest.raises(KDError, match="activation_layer must be one of declared, embedding"):
        train(config, quiet=True)
    assert not (tmp_path / "bad").exists()
