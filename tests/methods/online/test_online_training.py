"""Every online method trains on digits in 2 CPU epochs and writes a run `kd evaluate` reads back row for row."""

import json

import pytest

from kdcli.evaluate import evaluate_runs
from kdcli.run import train
from tests.conftest import digits_config

# case → (method, extra method params, the rows its table must have)
ONLINE = {
    "independent": ("independent", {}, ["peer0", "peer1", "ensemble"]),
    "dml": ("dml", {}, ["peer0", "peer1", "ensemble"]),
    "dml-alternating": ("dml", {"update": "alternating"}, ["peer0", "peer1", "ensemble"]),
    "cl": ("cl", {"peers": 3}, ["branch0", "branch1", "branch2", "ensemble"]),
    "one": ("one", {}, ["branch0", "branch1", "branch2", "ensemble"]),
    "okddip": ("okddip", {}, ["peer0", "peer1", "peer2", "leader", "ensemble"]),
}
BAR = 0.6  # top-1 on the digits test split (chance is 0.1)


def online_config(method: str, out, **params):
    config = digits_config(command="distill-online", method=method, epochs=2, batch_size=16)
    config.method_params.update(params)
    config.out = str(out)
    return config


@pytest.mark.parametrize("case", list(ONLINE))
def test_trains_above_the_bar_and_evaluate_shows_the_same_rows(case, tmp_path):
    method, params, rows = ONLINE[case]
    result = train(online_config(method, tmp_path / method, **params), quiet=True)
    test = result["metrics"]["test"]
    assert list(test) == rows
    assert all(scores["top1"] > BAR for scores in test.values()), test
    info = json.loads((tmp_path / method / "run.json").read_text())
    assert info["status"] == "complete" and info["method"] == method
    saved = {p.stem for p in (tmp_path / method).glob("*.safetensors")}
    assert saved == set(info["roles"])
    assert ("ensemble" in saved) == (method == "one")  # ONE's gated network is saved whole; others are assembled
    evaluated = evaluate_runs([str(tmp_path / method)], device="cpu", measure_latency=False)
    assert [r["role"] for r in evaluated] == rows
    for row in evaluated:
        assert row["top1"] == pytest.approx(test[row["role"]]["top1"], abs=1e-9), row["role"]


def test_heterogeneous_dml_peers(tmp_path):
    config = online_config("dml", tmp_path / "het")
    config.models = ["lenet5", "mlp-64"]
    config.train.epochs = 1
    result = train(config, quiet=True)
    assert [result["roles"][r]["arch"] for r in ("peer0", "peer1")] == ["lenet5", "mlp-64"]
    assert result["params"]["peers"] == 2
    evaluated = evaluate_runs([str(tmp_path / "het")], device="cpu", measure_latency=False)
    assert [(r["role"], r["model"]) for r in evaluated][:2] == [("peer0", "lenet5"), ("peer1", "mlp-64")]
    assert evaluated[2]["role"] == "ensemble"


@pytest.mark.parametrize(("method", "params"), [("dml", {"update": "alternating"}), ("okddip", {})])
def test_resume_after_ctrl_c_ends_where_an_uninterrupted_run_ends(method, params, tmp_path):
    """One optimizer per peer (alternating DML) and training-only modules (OKDDip's q, k) resume too."""
    import os
    import signal

    from kdcli.errors import Interrupted

    def config(out):
        cfg = online_config(method, tmp_path / out, **params)
        cfg.train.batch_size = 64
        return cfg

    reference = train(config("full"), quiet=True)

    def ctrl_c(_method, step):
        if step == 30:  # mid second epoch
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        train(config("cut"), quiet=True, after_step=ctrl_c)
    resumed = train(digits_config(), resume=str(tmp_path / "cut"), quiet=True)
    assert resumed["metrics"]["test"] == reference["metrics"]["test"]
    assert [round(r["train_loss"], 6) for r in resumed["history"]] == [round(r["train_loss"], 6) for r in reference["history"]]
