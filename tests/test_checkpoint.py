import json

import pytest
import torch

from kdcli import checkpoint
from kdcli.errors import KDError
from kdcli.models import create_model


def test_nested_state_round_trips_through_safetensors(tmp_path):
    model = create_model("lenet5", 1, 8, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    state = {"epoch": 3, "optimizers": [opt.state_dict()], "rng": {"cpu": torch.get_rng_state()}, "t": (1, 2.5)}
    checkpoint.save_state(tmp_path / "s.safetensors", state)
    back = checkpoint.load_state(tmp_path / "s.safetensors")
    assert back["epoch"] == 3 and back["t"] == (1, 2.5)
    assert torch.equal(back["rng"]["cpu"], state["rng"]["cpu"])
    restored = back["optimizers"][0]
    assert set(restored["state"]) == set(opt.state_dict()["state"])  # integer keys survive
    for key, value in opt.state_dict()["state"].items():
        assert torch.equal(restored["state"][key]["momentum_buffer"], value["momentum_buffer"])
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(restored)


def test_model_save_load_gives_identical_logits(tmp_path):
    model = create_model("resnet20", 3, 32, 10).eval()
    path = tmp_path / "m.safetensors"
    checkpoint.save_model(path, model, "teacher", {"name": "fake"})
    loaded, meta = checkpoint.load_model(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["spec"]["arch"] == "resnet20" and meta["role"] == "teacher"


def test_atomic_write_leaves_no_temp_files(tmp_path):
    checkpoint.write_json(tmp_path / "a.json", {"x": 1})
    checkpoint.append_jsonl(tmp_path / "m.jsonl", {"e": 1})
    checkpoint.append_jsonl(tmp_path / "m.jsonl", {"e": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "m.jsonl"]
    assert [json.loads(line)["e"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [1, 2]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    checkpoint.write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        checkpoint._atomic(path, lambda tmp: (tmp.write_text("half"), (_ for _ in ()).throw(TypeError("boom"))))
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize("content", [b"", b"garbage that is not safetensors", None])
def test_corrupt_or_truncated_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "m.safetensors"
    if content is None:  # truncated real file
        checkpoint.save_model(path, create_model("lenet5", 1, 8, 10), "teacher", {})
        content = path.read_bytes()[:-100]
    path.write_bytes(content)
    with pytest.raises(KDError, match="safetensors|kd checkpoint"):
        checkpoint.load_model(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(KDError, match="not a kd checkpoint"):
        checkpoint.load_model(path)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(KDError, match="not a kd run"):
        checkpoint.read_run(tmp_path)
    with pytest.raises(KDError, match="not found"):
        checkpoint.read_run(tmp_path / "missing")


def test_a_failed_resume_never_removes_the_run(tmp_path):
    """Cleaning up after a failure is for a new run's own files: a resumed run's directory is left alone."""
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.write_json(run / "run.json", {"roles": {}, "dataset": {}, "config": {}})
    (run / "metrics.jsonl").write_text("{}\n")
    claim = checkpoint.claim_for_resume(run)
    claim.abandon()
    claim.release()
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "run.json"]


def test_overwrite_knows_every_file_a_run_lists(tmp_path):
    info = {"roles": {"peer0": {"file": "peer0.safetensors"}}, "artifacts": {"generator": "generator.safetensors",
            "synthetic": "/elsewhere/set"}, "metadata": {"file": "metadata.safetensors"}}
    known = checkpoint.known_entries(info)
    assert {"peer0.safetensors", "generator.safetensors", "metadata.safetensors", "run.json", "metrics.jsonl",
            "state.safetensors", "curves.png"} <= known
    assert "/elsewhere/set" not in known and "set" not in known
