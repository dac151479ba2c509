"""Fused peers and branches (``--fuse``) train what the unfused ones train, resume bit-exactly and export plain models.

Each run goes through the real orchestrator and engine on digits; ``training_step`` is wrapped only to
read each step's loss.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from kdcli import checkpoint
from kdcli.errors import Interrupted, KDError
from kdcli.methods import METHODS
from kdcli.models.fused import FusedModels
from kdcli.presets import resolve_config
from kdcli.run import train

STEPS = 26  # digits: 1,293 training images (after the validation split) at batch 48 → 26 steps in one epoch


def online_config(method: str, out: Path, fuse: str, method_flags: dict | None = None, **flags: object):
    base = {"dataset": "digits", "model": "lenet5", "epochs": 1, "batch_size": 48, "device": "cpu", "seed": 5,
            "out": str(out), "fuse": fuse, "lr": 0.05}
    return resolve_config("distill-online", method, flags={**base, **flags}, method_flags=method_flags)


def run_recording(method: str, out: Path, fuse: str, monkeypatch: pytest.MonkeyPatch, method_flags: dict | None = None,
                  **flags: object):
    """Train; returns (run.json, the per-step losses, the trained method)."""
    cls = METHODS.resolve(method)[0].builder
    original = cls.training_step
    losses: list[float] = []
    trained = []

    def recording(self, batch, step):
        parts = original(self, batch, step)
        losses.append(float(parts["loss"].detach()))
        return parts

    monkeypatch.setattr(cls, "training_step", recording)
    result = train(online_config(method, out, fuse, method_flags, **flags), quiet=True,
                   after_step=lambda m, step: trained[:1] or trained.append(m))
    monkeypatch.setattr(cls, "training_step", original)
    return result, losses, trained[0]


def exported(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    info = checkpoint.read_run(run)
    return {role: checkpoint.load_tensors(run / entry["file"])[0] for role, entry in info["roles"].items()}


# ONE's branches from LeNet-5's second convolution on, so a branch body holds convolutions and linear layers.
# (A BatchNorm ResNet at this learning rate on 8×8 digits is chaotic: a 1e-7 relative nudge to its weights
# moves the loss by 1e-3 within five steps, fused or not, so it cannot tell fused from unfused.)
@pytest.mark.parametrize("method,params,flags", [
    ("dml", {}, {}), ("independent", {"peers": 3}, {}), ("one", {"split_at": "stage2"}, {}),
    # disjoint shards, each copy its own 24 images of a step
    ("codistill", {"burn_in": 4, "exchange_every": 5}, {"batch_size": 24}),
])
def test_fused_and_unfused_runs_of_one_seed_take_the_same_steps(method, params, flags, tmp_path, monkeypatch):
    fused, fused_losses, _ = run_recording(method, tmp_path / "fused", "on", monkeypatch, params, **flags)
    plain, plain_losses, _ = run_recording(method, tmp_path / "plain", "off", monkeypatch, params, **flags)
    assert fused["fused"] and not plain["fused"]
    assert fused["config"]["train"]["fuse"] == "on" and plain["config"]["train"]["fuse"] == "off"
    assert len(fused_losses) == len(plain_losses) == STEPS
    assert fused_losses == pytest.approx(plain_losses, rel=1e-4, abs=1e-5)
    fused_files, plain_files = exported(tmp_path / "fused"), exported(tmp_path / "plain")
    assert fused_files.keys() == plain_files.keys()
    for role in plain_files:
        assert fused_files[role].keys() == plain_files[role].keys()  # the same safetensors keys as unfused
        for key, value in plain_files[role].items():
            scale = float(value.abs().max()) + 1e-6
            torch.testing.assert_close(fused_files[role][key].float(), value.float(), rtol=1e-3, atol=1e-4 * scale,
                                       msg=f"{role}: {key}")


def test_a_fused_run_resumes_bit_exactly_and_exports_plain_models(tmp_path, monkeypatch):
    whole, _, method = run_recording("dml", tmp_path / "whole", "auto", monkeypatch, {"peers": 3}, model="resnet20")
    # on a CPU at most two models share a fused network (kdcli.device.CPU_FUSE_GROUP)
    assert whole["fused"] == {"peers": "3 × resnet20 in networks of 2, 1"} and isinstance(method.peers, FusedModels)

    def ctrl_c(_method, step):
        if step == 9:
            os.kill(os.getpid(), signal.SIGINT)

    config = online_config("dml", tmp_path / "cut", "auto", {"peers": 3}, model="resnet20")
    with pytest.raises(Interrupted):
        train(config, quiet=True, after_step=ctrl_c)
    train(None, resume=str(tmp_path / "cut"), quiet=True)
    for role, tensors in exported(tmp_path / "whole").items():
        resumed = exported(tmp_path / "cut")[role]
        for key, value in tensors.items():
            assert torch.equal(value, resumed[key]), f"{role}: {key}"

    # each exported peer is a plain resnet20 whose logits are the trained fused peer's
    images = torch.randn(16, 1, 8, 8)
    method.eval()
    with torch.no_grad():
        fused_logits = method.peers(images)
        for k in range(3):
            model, meta = checkpoint.load_model(tmp_path / "whole" / f"peer{k}.safetensors")
            assert meta["spec"]["arch"] == "resnet20" and not isinstance(model, FusedModels)
            assert torch.equal(model(images), method.peers.member(k).eval()(images))
            torch.testing.assert_close(model(images), fused_logits[k], rtol=1e-4, atol=1e-5)


def test_fuse_off_and_heterogeneous_peers_keep_separate_models(tmp_path):
    off = train(online_config("dml", tmp_path / "off", "off"), quiet=True)
    mixed = train(online_config("dml", tmp_path / "mixed", "auto", models=["lenet5", "lenet5-half"]), quiet=True)
    assert off["status"] == mixed["status"] == "complete"
    assert off["fused"] == {} and mixed["fused"] == {}
    assert {"peer0", "peer1", "ensemble"} <= set(mixed["metrics"]["test"])
    assert mixed["roles"]["peer1"]["arch"] == "lenet5-half"
    with pytest.raises(KDError, match="--fuse on: the peers cannot run as one network: --models gives peers of"):
        train(online_config("dml", tmp_path / "x", "on", models=["lenet5", "lenet5-half"]), quiet=True)
    alternating = resolve_config("distill-online", "dml", flags={"dataset": "digits", "device": "cpu", "fuse": "on",
                                                                  "out": str(tmp_path / "y")},
                                 method_flags={"update": "alternating"})
    with pytest.raises(KDError, match="alternating steps the peers one at a time"):
        train(alternating, quiet=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
