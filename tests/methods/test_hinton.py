"""kd distill --shots M and --attention (ZSKT's few-shot KD+AT baseline), through real digits runs."""

import json

import pytest
import torch

from kdcli import api
from kdcli.data import get_dataset
from kdcli.errors import KDError
from kdcli.methods.supervised.hinton import HintonKD
from kdcli.run import build
from tests.conftest import digits_config


def _kd_config(teacher, shots: int, seed: int = 0):
    config = digits_config(command="distill", method="kd", seed=seed)
    config.model, config.teacher, config.data.dataset = "lenet5-half", str(teacher), ""
    config.data.shots, config.data.val_fraction = shots, 0.0
    return config


def test_shots_read_exactly_m_images_per_class_the_same_for_the_same_seed(teacher_run):
    full = get_dataset("digits").load("train")
    built = build(_kd_config(teacher_run, 3))
    unique, counts = built.train_set.images.unique(dim=0, return_counts=True)
    assert unique.shape[0] == 30 and built.val_set is None
    chosen = torch.tensor(built.shots["indices"])
    assert torch.equal(torch.bincount(full.labels[chosen], minlength=10), torch.full((10,), 3))
    assert torch.equal(full.images[chosen].unique(dim=0), unique)  # the recorded images are the ones trained on
    assert built.config.train.batch_size == 30 and "batch_size" in built.config.adjusted  # capped at M × classes
    assert len(built.train_set) == len(full) // 30 * 30  # an epoch shows as many images as the full split
    assert build(_kd_config(teacher_run, 3)).shots["indices"] == built.shots["indices"]
    assert build(_kd_config(teacher_run, 3, seed=1)).shots["indices"] != built.shots["indices"]


def test_shots_with_a_validation_split_or_too_many_per_class_are_refused(teacher_run):
    config = _kd_config(teacher_run, 3)
    config.data.val_fraction = 0.1
    with pytest.raises(KDError, match="--val-fraction must be 0"):
        build(config)
    with pytest.raises(KDError, match="--shots 1000: class 0 has only"):
        build(_kd_config(teacher_run, 1000))
    with pytest.raises(KDError, match="--val-fraction"):
        api.config("distill", teacher=str(teacher_run), shots=2, val_fraction=0.2)
    resolved = api.config("distill", teacher=str(teacher_run), shots=2)
    assert resolved.data.val_fraction == 0.0 and "val_fraction" in resolved.adjusted


def test_few_shot_kd_with_attention_trains_and_records_its_images(teacher_run, tmp_path):
    run = api.distill(teacher_run, "lenet5-half", shots=2, params={"attention": True}, epochs=2, device="cpu",
                      out=str(tmp_path / "s"), quiet=True)
    info = json.loads((run.path / "run.json").read_text())
    assert info["shots"]["per_class"] == 2 and len(info["shots"]["indices"]) == 20
    assert info["config"]["data"]["shots"] == 2 and info["params"]["attention"] is True
    assert info["params"]["beta"] == 250.0
    last = info["history"][-1]
    assert last["train_at"] > 0 and {"train_soft", "train_hard"} <= set(last)
    assert info["metrics"]["test"]["student"]["top1"] > 0.1


def test_attention_needs_block_groups():
    assert HintonKD.needs(HintonKD.make_params({"attention": True}))["model"] == {"groups"}
    assert HintonKD.needs(HintonKD.make_params({}))["model"] == frozenset()


def test_attention_without_attention_maps_is_refused_before_training(teacher_run, tmp_path):
    with pytest.raises(KDError, match="the student mlp-32 has none"):
        api.distill(teacher_run, "mlp-32", params={"attention": True}, epochs=1, device="cpu", out=str(tmp_path / "m"),
                    quiet=True)
    assert not (tmp_path / "m").exists()
