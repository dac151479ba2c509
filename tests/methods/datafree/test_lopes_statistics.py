"""Lopes et al.'s two statistics variants: the official code's full pre-ReLU maps with correlated targets
(shapes, covariances, the sampler), the metadata format (variant, version, older files) and the
``kd record-metadata`` upgrade of an older run. Real digits teacher; each test takes seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcli import checkpoint
from kdcli.checkpoint import load_run_model
from kdcli.data import get_dataset
from kdcli.data.synthetic import normalise
from kdcli.errors import KDError
from kdcli.methods.datafree import lopes_statistics as metadata
from kdcli.methods.datafree.lopes import LopesParams
from kdcli.models import create_model
from kdcli.run import record_statistics, train
from tests.methods.datafree.test_datafree_methods import datafree_config


@pytest.fixture(scope="session")
def full_teacher(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared digits teacher (pooled statistics from training) upgraded with full statistics."""
    copy = tmp_path_factory.mktemp("lopes-full") / "teacher"
    shutil.copytree(teacher_run, copy)
    record_statistics(str(copy), device="cpu", variant="full")
    return copy


def _digits_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    data = get_dataset("digits")
    train_set = data.load("train")
    return normalise(train_set.images.float() / 255, data.info.mean, data.info.std), train_set.labels


def test_lenet5_pre_relu_maps_have_the_official_sizes():
    # the official code matches conv1 6x28x28 = 4,704 and conv2 16x10x10 = 1,600 values at 32 px
    model = create_model("lenet5", 1, 32, 10).eval()
    sizes = [t.shape[1] for t in metadata.full_layers(model, torch.zeros(2, 1, 32, 32))]
    assert sizes == [4704, 1600, 120, 84, 10]
    model = create_model("lenet5", 1, 28, 10).eval()  # kd's 28 px MNIST: valid convolutions
    assert metadata._pre_activation_shapes(model, torch.zeros(1, 1, 28, 28)) == [
        (6, 24, 24), (16, 8, 8), (120,), (84,), (10,)]


def test_full_statistics_are_the_pre_relu_maps_mean_and_covariance(full_teacher):
    stats = metadata.load(str(full_teacher), "full")
    assert stats.variant == "full" and stats.description["format"] == metadata.FORMAT
    model, _ = load_run_model(str(full_teacher))
    x, labels = _digits_inputs()
    conv1 = model.stages[0][0]
    assert isinstance(conv1, nn.Conv2d)
    with torch.no_grad():
        direct = metadata.full_layers(model, x)
        pre_relu = conv1(x).flatten(1)  # the first conv's output before its ReLU: negative values kept
    assert torch.equal(direct[0], pre_relu) and (pre_relu < 0).any()
    assert stats.description["shapes"] == [[6, 8, 8], [16, 4, 4], [120], [84], [10]]
    for layer, values in enumerate(direct):
        assert stats.mean[layer].shape == (10, values.shape[1])
        assert stats.factor[layer].shape == (10, values.shape[1], values.shape[1])
        for k in (0, 7):
            chosen = values[labels == k].double()
            assert torch.allclose(stats.mean[layer][k].double(), chosen.mean(0), atol=1e-4)
            cov = torch.cov(chosen.t(), correction=0)
            factor = stats.factor[layer][k].double()
            rebuilt = factor @ factor.t()
            jitter = stats.description["jitter_used"][layer][k] * float(cov.diagonal().mean())
            assert torch.allclose(rebuilt, cov + jitter * torch.eye(len(cov), dtype=cov.dtype),
                                  atol=2e-4 * float(cov.abs().max()) + 1e-6)


def test_correlated_samples_reproduce_a_known_covariance():
    torch.manual_seed(0)
    d = 12
    mixing = torch.randn(2, d, d, dtype=torch.float64)
    covs = mixing @ mixing.transpose(1, 2) / d + 0.1 * torch.eye(d, dtype=torch.float64)  # strongly correlated
    covs[1, :3, :3] += 4.0  # a different class covariance
    means = torch.stack([torch.linspace(-1, 1, d), torch.linspace(2, 0, d)]).double()
    factors = torch.stack([metadata.covariance_factor(c)[0] for c in covs]).float()
    classes = torch.tensor([0, 1]).repeat_interleave(40000)[torch.randperm(80000)]
    samples = metadata.sample_correlated(means.float(), factors, classes).double()
    for c in (0, 1):
        rows = samples[classes == c]
        assert torch.allclose(rows.mean(0), means[c], atol=0.05)
        empirical = torch.cov(rows.t())
        assert (empirical - covs[c]).abs().max() < 0.05 * covs[c].abs().max()
    # independent per-unit sampling (the pooled variant) would lose the off-diagonal terms
    assert covs[0].masked_select(~torch.eye(d, dtype=torch.bool)).abs().max() > 0.3


def test_covariance_factor_of_a_singular_covariance_uses_the_documented_jitter():
    direction = torch.randn(6, 1, dtype=torch.float64)
    singular = direction @ direction.t()  # rank 1, as a conv map's covariance is at most rank(pixels)
    factor, eps = metadata.covariance_factor(singular)
    assert eps >= metadata.JITTER
    scale = float(singular.diagonal().mean())
    assert torch.allclose(factor @ factor.t(), singular + eps * scale * torch.eye(6, dtype=torch.float64),
                          atol=1e-10)


def test_a_layer_too_large_for_a_covariance_is_refused_in_one_line(teacher_run, tmp_path, monkeypatch):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher_run, copy)
    monkeypatch.setattr(metadata, "MAX_FULL_UNITS", 300)  # digits LeNet-5's conv1 has 6x8x8 = 384 units
    with pytest.raises(KDError, match=r"layer 0 \(6x8x8\) has 384 units, over the limit of 300") as err:
        record_statistics(str(copy), device="cpu", variant="full")
    assert "\n" not in str(err.value)
    assert not (copy / metadata.FULL_METADATA_FILE).exists()


def test_variants_round_trip_and_an_old_file_reads_as_pooled(full_teacher, tmp_path):
    assert LopesParams().statistics == metadata.DEFAULT_VARIANT
    pooled = metadata.load(str(full_teacher))
    assert pooled.variant == "pooled" and pooled.description["statistics"] == "pooled"
    assert pooled.description["format"] == metadata.FORMAT
    assert metadata.load(str(full_teacher), "full").variant == "full"
    with pytest.raises(KDError, match="unknown statistics variant 'ful'. Did you mean full"):
        metadata.load(str(full_teacher), "ful")
    # a format-1 file (written before variants existed) has no format/statistics field: it is pooled
    copy = tmp_path / "old"
    shutil.copytree(full_teacher, copy)
    path = copy / metadata.METADATA_FILE
    tensors, raw = checkpoint.load_tensors(path)
    description = json.loads(raw["metadata"])
    del description["format"], description["statistics"]
    checkpoint.save_tensors(path, tensors, {**raw, "metadata": json.dumps(description)})
    old = metadata.load(str(copy))
    assert old.variant == "pooled" and torch.equal(old.layer_mean[0], pooled.layer_mean[0])


def test_record_metadata_upgrades_an_older_run_and_keeps_what_it_did_not_write(teacher_run, tmp_path):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher_run, copy)
    info = json.loads((copy / "run.json").read_text())
    info["notes"] = {"kept": True}
    (copy / "run.json").write_text(json.dumps(info))
    (copy / "mine.txt").write_text("a user's file")
    pooled_bytes = (copy / metadata.METADATA_FILE).read_bytes()
    with pytest.raises(KDError, match="has no full activation statistics.*--statistics full"):
        metadata.load(str(copy), "full")

    added = record_statistics(str(copy), device="cpu", variant="full")
    assert set(added) == {"metadata_full"} and added["metadata_full"]["statistics"] == "full"
    upgraded = json.loads((copy / "run.json").read_text())
    assert upgraded["metadata"] == info["metadata"] and upgraded["notes"] == {"kept": True}
    assert upgraded["metadata_full"]["file"] == metadata.FULL_METADATA_FILE
    assert (copy / metadata.METADATA_FILE).read_bytes() == pooled_bytes
    assert (copy / "mine.txt").read_text() == "a user's file"
    assert metadata.load(str(copy), "full").mean[-1].shape == (10, 10)
    # the pooled variant re-recorded replaces only its own entry
    again = record_statistics(str(copy), device="cpu", variant="pooled")
    assert set(again) == {"metadata"}
    assert "metadata_full" in json.loads((copy / "run.json").read_text())


def test_record_metadata_never_replaces_a_file_kd_did_not_write(teacher_run, tmp_path):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher_run, copy)
    (copy / metadata.FULL_METADATA_FILE).write_text("someone else's")
    with pytest.raises(KDError, match="kd did not write it"):
        record_statistics(str(copy), device="cpu", variant="full")
    assert (copy / metadata.FULL_METADATA_FILE).read_text() == "someone else's"


def test_lopes_trains_with_full_statistics_on_digits(full_teacher, tmp_path):
    config = datafree_config(full_teacher, "lopes", tmp_path / "full", n=384, iterations=30, statistics="full")
    result = train(config, quiet=True)
    assert result["params"]["statistics"] == "full"
    assert result["metrics"]["test"]["student"]["top1"] > 0.4  # chance 0.1; seed 0 gives 0.59 (pooled 0.64)
    with pytest.raises(KDError, match="kd's own construction"):
        train(datafree_config(full_teacher, "lopes", tmp_path / "spectral", n=32, iterations=1, statistics="full",
                              objective="spectral_all_layers"), quiet=True)
    assert not (tmp_path / "spectral").exists()
