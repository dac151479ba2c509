
import pytest

from kdcli.config import OptimConfig
from kdcli.device import select_device
from kdcli.engine import lr_factor
from kdcli.errors import KDError


def test_cosine_schedule_starts_at_one_and_ends_near_zero():
    cfg = OptimConfig(schedule="cosine")
    assert lr_factor(cfg, 0, 10, 5) == pytest.approx(1.0)
    assert lr_factor(cfg, 25, 10, 5) == pytest.approx(0.5)
    assert lr_factor(cfg, 49, 10, 5) < 0.01


def test_step_schedule_multiplies_at_milestones():
    cfg = OptimConfig(schedule="step", milestones=[2, 4], gamma=0.1)
    assert lr_factor(cfg, 19, 10, 6) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 10, 6) == pytest.approx(0.1)
    assert lr_factor(cfg, 45, 10, 6) == pytest.approx(0.01)


def test_warmup_is_linear():
    cfg = OptimConfig(schedule="constant", warmup_epochs=1)
    assert [lr_factor(cfg, s, 4, 3) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_absent_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(KDError, match="no CUDA GPU"):
        select_device("cuda")
    assert select_device("auto").type in ("cpu", "mps")
