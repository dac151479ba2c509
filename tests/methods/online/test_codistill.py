"""Codistillation (Anil et al. 2018): exchange schedule, burn-in, shards, and 1 process = 2 processes."""

from __future__ import annotations

import json

import pytest
import torch

from kdcli.config import RunConfig
from kdcli.distributed import Shard, World
from kdcli.errors import KDError
from kdcli.evaluate import churn
from kdcli.methods import METHODS
from kdcli.methods.online import codistill as codistill_module
from kdcli.methods.online.codistill import Codistill, CodistillParams
from kdcli.run import train
from tests.test_distributed import assert_same_history, assert_same_weights, reference_run, torchrun

CODISTILL_ARGS = ["distill-online", "--method", "codistill", "--model", "lenet5", "--epochs", "2", "--batch-size", "32",
                  "--lr", "0.05", "--exchange-every", "4", "--burn-in", "5", "--device", "cpu", "--quiet", "--json"]


def codistill_config(out: str, **params: object) -> RunConfig:
    config = RunConfig(command="distill-online", method="codistill", model="lenet5")
    config.data.dataset = "digits"
    config.train.epochs = 2
    config.train.batch_size = 32
    config.train.device = "cpu"
    config.optim.lr = 0.05
    config.out = out
    config.method_params.update(params)
    return config


def test_registered_for_distill_online():
    entry, _ = METHODS.resolve("codistill")
    assert entry.builder is Codistill and entry.info["command"] == "distill-online"


def test_exchange_every_k_steps_after_burn_in_and_the_term_waits_for_it(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    calls = {"distill": 0}
    real_kd_loss = codistill_module.kd_loss

    def counting_kd_loss(*args, **kwargs):
        calls["distill"] += 1
        return real_kd_loss(*args, **kwargs)

    monkeypatch.setattr(codistill_module, "kd_loss", counting_kd_loss)
    trace = []

    def record(method, step):
        stale = torch.cat([p.detach().flatten() for p in method.stale.parameters()]).clone()
        trace.append((step, int(method.exchanges), calls["distill"], stale))

    burn_in, every = 7, 5
    result = train(codistill_config("run", burn_in=burn_in, exchange_every=every), quiet=True, after_step=record)
    steps = len(trace)
    expected = [s for s in range(steps) if s >= burn_in and (s - burn_in) % every == 0]
    counts = [count for _, count, _, _ in trace]
    exchanged_at = [s for s, (count, before) in enumerate(zip(counts, [0] + counts)) if count > before]
    assert exchanged_at == expected
    # the stale copies move only on exchange steps
    for (s, _, _, stale), (_, _, _, previous) in zip(trace[1:], trace):
        assert torch.equal(stale, previous) == (s not in expected), s
    # two copies: two distillation terms per step from burn-in on, none before
    distill_calls = [calls for _, _, calls, _ in trace]
    per_step = [c - b for c, b in zip(distill_calls, [0] + distill_calls)]
    assert per_step == [0] * burn_in + [2] * (steps - burn_in)
    history = result["history"]
    per_epoch = steps // len(history)
    assert sum(round(row["train_exchanged"] * per_epoch) for row in history) == len(expected)
    assert sum(round(row["train_distill_on"] * per_epoch) for row in history) == steps - burn_in
    assert set(result["roles"]) == {"peer0", "peer1"} and "ensemble" in result["metrics"]["test"]


def test_distill_weight_zero_is_independent_copies(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = train(codistill_config("run", burn_in=0, exchange_every=3, distill_weight=0.0), quiet=True)
    assert all(row["train_distill"] == 0 for row in result["history"])


def test_shards_give_each_copy_its_partition_or_the_shared_batch():
    config = codistill_config("x")
    disjoint = CodistillParams(peers=2, shard="disjoint")
    assert Codistill.data_shard(disjoint, config, World()) == Shard(64, 2, 0, 1)
    # 4 processes, 2 copies: ranks 0,1 train copy 0 on its partition, ranks 2,3 copy 1
    assert [Codistill.data_shard(disjoint, config, World(r, 4, r)) for r in range(4)] == [
        Shard(64, 2, r, 4) for r in range(4)]
    shared = CodistillParams(peers=2, shard="shared")
    assert [Codistill.data_shard(shared, config, World(r, 4, r)) for r in range(4)] == [
        Shard(32, 1, 0, 2), Shard(32, 1, 1, 2), Shard(32, 1, 0, 2), Shard(32, 1, 1, 2)]
    with pytest.raises(KDError, match="multiple of 3"):
        Codistill.data_shard(CodistillParams(peers=3), config, World(0, 4, 0))
    with pytest.raises(KDError, match="--shard"):
        Codistill.data_shard(CodistillParams(shard="halves"), config, World())


def test_two_processes_log_the_losses_of_one_process(tmp_path, monkeypatch):
    job = torchrun([*CODISTILL_ARGS, "--out", "two"], tmp_path)
    assert job.returncode == 0, job.stdout + job.stderr
    run = tmp_path / "two"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["world_size"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes
    single = reference_run(run, tmp_path / "one", monkeypatch)
    assert_same_history(info["history"], single["history"],
                        ("train_loss", "train_ce", "train_distill", "train_acc", "train_exchanged", "train_distill_on"))
    for role in ("peer0", "peer1"):  # rank 0 saved rank 1's copy too, as it was when the job ended
        assert_same_weights(run / f"{role}.safetensors", tmp_path / "one" / f"{role}.safetensors")

    rows = churn([str(run)])  # between the two copies of one run
    assert len(rows) == 1 and 0.0 <= rows[0]["churn"] <= 1.0 and rows[0]["images"] > 0
    same = churn([f"{run}:peer0", f"{tmp_path / 'one'}:peer0"])
    assert same[0]["churn"] < 0.01  # the same copy trained by 2 processes and by 1
