"""--shots M: M seeded training images per class (kdcli.data.loader.few_shot_indices)."""

import pytest
import torch

from kdcli.data import get_dataset
from kdcli.data.loader import few_shot_indices, repeat_to, subset
from kdcli.errors import KDError


def test_exactly_m_per_class_the_same_for_the_same_seed():
    labels = get_dataset("digits").load("train").labels
    chosen = few_shot_indices(labels, 5, 10, seed=0)
    assert torch.equal(torch.bincount(labels[chosen], minlength=10), torch.full((10,), 5))
    assert chosen.unique().numel() == 50 and torch.equal(chosen, chosen.sort().values)
    assert torch.equal(few_shot_indices(labels, 5, 10, seed=0), chosen)
    other = few_shot_indices(labels, 5, 10, seed=1)
    assert not torch.equal(other, chosen)
    assert torch.equal(torch.bincount(labels[other], minlength=10), torch.full((10,), 5))


def test_a_class_with_too_few_images_is_a_one_line_error():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    with pytest.raises(KDError, match=r"--shots 2: class 2 has only 1 training images") as err:
        few_shot_indices(labels, 2, 3, seed=0)
    assert "\n" not in str(err.value)
    with pytest.raises(KDError, match="class 3 has only 0"):
        few_shot_indices(labels, 1, 4, seed=0)


def test_repeat_to_fills_an_epoch_with_the_same_images():
    data = get_dataset("digits").load("train")
    few = subset(data, few_shot_indices(data.labels, 1, 10, seed=0))
    filled = repeat_to(few, 95)
    assert len(filled) == 95
    assert sorted(torch.bincount(filled.labels, minlength=10).tolist()) == [9] * 5 + [10] * 5
    assert filled.images.unique(dim=0).shape[0] == 10
