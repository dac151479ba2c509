"""ZSKD against its paper and official code: β handling, warm start, the paper preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdcli.errors import KDError
from kdcli.methods.base import MethodContext
from kdcli.methods.datafree import transfer, zskd
from kdcli.methods.datafree.transfer import optimise_pixels
from kdcli.methods.losses import class_similarity, dirichlet_concentration, sample_dirichlet_targets
from kdcli.presets import resolve_config
from kdcli.run import train
from tests.methods.datafree.test_datafree_methods import datafree_config

# three classes in two dimensions: cosines 0, 1/√2, 1/√2 off the diagonal
WEIGHT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
R = 1 / math.sqrt(2)


def test_class_similarity_of_the_tiny_weight_matrix_by_hand():
    # rows min-max normalised: row 2 (cosines 1/√2, 1/√2, 1) becomes (0, 0, 1)
    expected = torch.tensor([[1.0, 0.0, R], [0.0, 1.0, R], [0.0, 0.0, 1.0]])
    assert torch.allclose(class_similarity(WEIGHT), expected, atol=1e-6)


def test_beta_mode_paper_scales_the_concentration_and_official_cancels_beta():
    similarity = class_similarity(WEIGHT).double()
    classes = torch.tensor([0, 0, 2])
    betas = torch.tensor([1.0, 0.1, 0.1], dtype=torch.float64)
    paper = dirichlet_concentration(similarity, classes, betas, mode="paper")
    official = dirichlet_concentration(similarity, classes, betas, mode="official")
    assert torch.allclose(paper, torch.tensor([[1.0001, 0.0001, R + 1e-4],
                                               [0.1001, 0.0001, 0.1 * R + 1e-4],
                                               [0.0001, 0.0001, 0.1001]], dtype=torch.float64), atol=1e-12)
    # the official code: (β·C_c − min)/(max − min) + 1e-4, the same for β = 1 and β = 0.1
    assert torch.allclose(official, torch.tensor([[1.0001, 0.0001, R + 1e-4],
                                                  [1.0001, 0.0001, R + 1e-4],
                                                  [0.0001, 0.0001, 1.0001]], dtype=torch.float64), atol=1e-12)
    with pytest.raises(KDError, match="beta_mode"):
        dirichlet_concentration(similarity, classes, betas, mode="both")


def test_the_impression_loss_follows_the_beta_mode_exactly():
    """The impression objective CE(y, σ(t(x)/T)) on the expected target E[y] = α/Σα of each mode, by hand."""
    similarity = class_similarity(WEIGHT).double()
    classes, betas = torch.tensor([0]), torch.tensor([0.1], dtype=torch.float64)
    log_p = torch.log_softmax(torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64) / 20, dim=1)
    for mode, alpha in (("paper", [0.1001, 0.0001, 0.1 * R + 1e-4]), ("official", [1.0001, 0.0001, R + 1e-4])):
        concentration = dirichlet_concentration(similarity, classes, betas, mode=mode)
        mean = concentration / concentration.sum(dim=1, keepdim=True)
        by_hand = -sum(a / sum(alpha) * lp for a, lp in zip(alpha, log_p[0].tolist()))
        assert -(mean * log_p).sum().item() == pytest.approx(by_hand, rel=1e-9)


def test_sampled_targets_follow_each_modes_concentration():
    similarity = class_similarity(WEIGHT)
    classes = torch.zeros(20000, dtype=torch.long)
    betas = torch.full((20000,), 0.1)
    torch.manual_seed(0)
    paper = sample_dirichlet_targets(similarity, classes, betas, "paper")
    official = sample_dirichlet_targets(similarity, classes, betas, "official")
    for targets, alpha in ((paper, [0.1001, 0.0001, 0.1 * R + 1e-4]), (official, [1.0001, 0.0001, R + 1e-4])):
        assert torch.allclose(targets.mean(0), torch.tensor(alpha) / sum(alpha), atol=0.01)
    # β = 0.1 as the paper writes it gives near one-hot targets; the official code's are spread
    assert paper.max(1).values.mean() > 0.9 > official.max(1).values.mean()


def test_warm_start_sources_chain_each_class_and_beta_through_the_chunks():
    classes = torch.arange(40) % 10
    beta_index = (torch.arange(40) // 10) % 2
    keys = classes * 2 + beta_index
    # chunks of 20 hold every (class, β) once: each impression starts from the one 20 before it
    assert zskd.warm_start_sources(keys, 20).tolist() == [-1] * 20 + list(range(20))
    # chunks of 10 hold one β each: a chunk continues the chunk two before it
    assert zskd.warm_start_sources(keys, 10).tolist() == [-1] * 20 + list(range(20))
    # chunks of 40: nothing earlier
    assert zskd.warm_start_sources(keys, 40).tolist() == [-1] * 40


def _context(teacher_run: Path) -> MethodContext:
    config = resolve_config("distill-datafree", "zskd", flags={"device": "cpu", "teacher": str(teacher_run)})
    from kdcli.data import get_dataset
    return MethodContext(config, get_dataset("digits").info, torch.device("cpu"), 0)


def test_optimise_pixels_warm_start_reuses_the_previous_result(teacher_run):
    """With a loss whose gradient is −1 on every pixel, Adam moves each pixel by lr per step, so a warm-started
    impression ends where its source ended plus the same distance again."""
    ctx = _context(teacher_run)
    init = torch.zeros(4, 1, 2, 2)

    def run(warm_from):
        return optimise_pixels(ctx, init, lambda x, rows: -x.flatten(1).sum(1), iterations=3, lr=0.01, chunk=2,
                               project=lambda x: x, description="test", warm_from=warm_from)

    fresh = run(None)
    warm = run(torch.tensor([-1, -1, 1, 0]))
    assert torch.allclose(fresh, torch.full_like(fresh, 0.03), atol=1e-6)
    assert torch.allclose(warm[:2], fresh[:2]) and torch.allclose(warm[2:], torch.full_like(warm[2:], 0.06), atol=1e-6)
    with pytest.raises(ValueError, match="earlier chunk"):
        run(torch.tensor([-1, 2, -1, -1]))


def test_zskd_warm_start_hands_the_chain_to_the_optimiser(teacher_run, monkeypatch, tmp_path):
    seen = {}
    original = transfer.optimise_pixels

    def spy(*args, **kwargs):
        seen["warm_from"] = kwargs["warm_from"]
        return original(*args, **kwargs)

    monkeypatch.setattr(zskd, "optimise_pixels", spy)
    config = datafree_config(teacher_run, "zskd", tmp_path / "run", 32, n=80, iterations=2, synth_batch=40,
                             warm_start=True)
    config.train.epochs = 1
    train(config, quiet=True)
    assert seen["warm_from"].tolist() == [-1] * 40 + list(range(40))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["params"]["warm_start"] is True and info["params"]["beta_mode"] == "paper"


def test_a_bad_beta_mode_fails_before_anything_is_written(teacher_run, tmp_path):
    with pytest.raises(KDError, match="beta_mode must be one of paper, official"):
        train(datafree_config(teacher_run, "zskd", tmp_path / "out", n=32, iterations=1, beta_mode="papr"), quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dataset, augment, n", [("mnist", "crop", 24000), ("cifar10", "crop_flip", 40000)])
def test_paper_preset_is_the_official_schedule(dataset, augment, n, teacher_run):
    config = resolve_config("distill-datafree", "zskd", preset="paper",
                            flags={"device": "cpu", "teacher": str(teacher_run), "dataset": dataset})
    assert (config.train.epochs, config.train.batch_size) == (500, 64)
    assert (config.optim.optimizer, config.optim.lr, config.optim.schedule) == ("adam", 1e-3, "constant")
    assert config.data.augment == augment
    params = config.method_params
    assert (params["n"], params["iterations"], params["lr_input"]) == (n, 1500, 0.001)
    assert params["beta_mode"] == "official" and params["warm_start"] is True
    assert "98.77" in zskd.ZSKD.preset_notes["paper"]
