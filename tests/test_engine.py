
import pytest
import torch

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


# ---------------------------------------------------------------------------------------------
# The whole-step graph path (CUDA), exercised on the CPU with a stand-in capture that replays by
# running the captured function again: the fixed index/draw tensors, the gather inside the step,
# tensor learning rates and the fallback are the same code a CUDA graph runs.


def _replaying_capture(calls: list[int]):
    def capture(step):
        parts: dict = {}

        def replay():
            calls.append(1)
            parts.clear()
            parts.update(step())

        return replay, parts

    return capture


def _graph_config(out, method: str = "dml", **train):
    from kdcli.presets import resolve_config

    flags = {"dataset": "digits", "device": "cpu", "epochs": 2, "batch_size": 48, "augment": "crop_flip",
             "out": str(out), "seed": 2, **train}
    return resolve_config("distill-online", method, flags=flags)


def _weights(run):
    from kdcli import checkpoint

    return {role: checkpoint.load_tensors(run / f"{role}.safetensors")[0] for role in ("peer0", "peer1")}


def test_whole_step_graph_path_trains_exactly_like_eager_steps(tmp_path, monkeypatch):
    from kdcli import engine
    from kdcli.run import train

    eager = train(_graph_config(tmp_path / "eager"), quiet=True)
    calls: list[int] = []
    monkeypatch.setattr(engine, "graph_whole_step", lambda method, cfg, device: method.graphable_step())
    monkeypatch.setattr(engine, "_capture_cuda_graph", _replaying_capture(calls))
    graphed = train(_graph_config(tmp_path / "graphed"), quiet=True)
    steps = len(eager["history"]) * 26  # 1,293 digits at batch 48
    assert len(calls) == steps - engine.StepRunner.WARMUP  # every step after the warm-up was a replay
    assert [r["train_loss"] for r in graphed["history"]] == [r["train_loss"] for r in eager["history"]]
    for role, tensors in _weights(tmp_path / "eager").items():
        for key, value in tensors.items():
            assert torch.equal(value, _weights(tmp_path / "graphed")[role][key]), key


def test_a_failed_capture_falls_back_to_eager_steps_or_is_an_error_when_required(tmp_path, monkeypatch):
    from kdcli import engine
    from kdcli.errors import KDError
    from kdcli.run import train

    def broken(step):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(engine, "graph_whole_step", lambda method, cfg, device: True)
    monkeypatch.setattr(engine, "_capture_cuda_graph", broken)
    fallen_back = train(_graph_config(tmp_path / "auto", epochs=1), quiet=True)
    monkeypatch.undo()
    eager = train(_graph_config(tmp_path / "eager", epochs=1), quiet=True)
    assert fallen_back["history"][0]["train_loss"] == eager["history"][0]["train_loss"]
    monkeypatch.setattr(engine, "graph_whole_step", lambda method, cfg, device: True)
    monkeypatch.setattr(engine, "_capture_cuda_graph", broken)
    with pytest.raises(KDError, match="capture of the training step failed: operation not permitted"):
        train(_graph_config(tmp_path / "on", epochs=1, cuda_graphs="on"), quiet=True)


def test_tensor_learning_rates_are_set_in_place():
    """On CUDA the optimizers hold their rate as a tensor (a captured step reads it): set it in place."""
    from kdcli.engine import current_lr, set_lr

    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=torch.tensor(0.2), momentum=0.9, fused=True)
    rate = opt.param_groups[0]["lr"]
    set_lr([opt], 0.5)
    assert opt.param_groups[0]["lr"] is rate and current_lr(opt) == pytest.approx(0.1)
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(0.2)
    param.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(param, torch.full((3,), 0.9))  # the step used the rate set in place
    set_lr([opt], 1.0)
    assert current_lr(opt) == pytest.approx(0.2)


def test_cpu_optimizers_are_the_multi_tensor_ones_with_the_loops_numbers():
    from kdcli.methods.base import build_optimizer

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 5)) for _ in range(2)]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for cfg in (OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
                OptimConfig(optimizer="adam", lr=0.01, weight_decay=1e-4)):
        ours = build_optimizer(cfg, params)
        assert ours.defaults["foreach"] is True
        loop = torch.optim.SGD(copies, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, foreach=False) \
            if cfg.optimizer == "sgd" else torch.optim.Adam(copies, lr=0.01, weight_decay=1e-4, foreach=False)
        for _ in range(5):
            for p, q in zip(params, copies):
                p.grad = torch.sin(p.detach()) + 0.1
                q.grad = torch.sin(q.detach()) + 0.1
            ours.step()
            loop.step()
        assert all(torch.equal(p, q) for p, q in zip(params, copies))


def test_a_data_free_run_logs_a_test_curve_that_ends_at_the_reported_number(tmp_path, teacher_run):
    """No validation data: each epoch's test accuracy is a curve in metrics.jsonl (dashed in curves.png); the
    reported number is the last epoch's, not the best epoch's."""
    import json

    from kdcli.run import train
    from tests.conftest import digits_config

    config = digits_config(command="distill-datafree", method="noise", epochs=3, batch_size=64)
    config.model, config.data.dataset, config.teacher = "lenet5-half", "", str(teacher_run)
    config.out = str(tmp_path / "noise")
    config.method_params.update({"iterations": 4})
    result = train(config, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "noise" / "metrics.jsonl").read_text().splitlines()]
    curve = [row["test_top1/student"] for row in rows]
    assert len(curve) == 3 and all(0.0 <= v <= 1.0 for v in curve)
    assert not any(key.startswith("val_") for row in rows for key in row)
    assert result["metrics"]["test"]["student"]["top1"] == curve[-1]
    assert (tmp_path / "noise" / "curves.png").stat().st_size > 0


def test_a_run_with_validation_data_logs_no_test_curve(tmp_path):
    import json

    from kdcli.run import train
    from tests.conftest import digits_config

    config = digits_config(epochs=1)
    config.out = str(tmp_path / "t")
    train(config, quiet=True)
    row = json.loads((tmp_path / "t" / "metrics.jsonl").read_text().splitlines()[0])
    assert any(k.startswith("val_top1/") for k in row)
    assert not any(k.startswith("test_top1/") for k in row)
