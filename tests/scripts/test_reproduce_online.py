"""scripts/reproduce_online.py's plan (no training): every method beside a baseline under exactly its budget."""

import importlib.util
import sys
from pathlib import Path

import pytest
import typer

from kdcli import api
from kdcli.budget import budget_of, differences
from kdcli.cli import app
from kdcli.cli.options import OPTIONS, Options

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_online.py"
spec = importlib.util.spec_from_file_location("reproduce_online", SCRIPT)
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce_online"] = reproduce  # dataclasses look their module up while the script loads
spec.loader.exec_module(reproduce)

METHODS = ["dml", "cl", "one", "okddip", "codistill", "one:official", "okddip:detached", "cl:cl-paper-loss"]


@pytest.fixture(scope="module")
def pairs():
    return reproduce.plan(METHODS, dataset="fashion-mnist", model="lenet5", epochs=20, split_at="stage3", device="cpu")


def parsed(argv: list[str]):
    """The config `kd` itself makes of a printed command (parsed by the real CLI, nothing run)."""
    online = typer.main.get_command(app).commands[argv[1]]
    values = online.make_context(argv[1], list(argv[2:])).params
    options = Options({name: values[name] for name in values if name in OPTIONS})
    kwargs = {k: v for k, v in options.api_kwargs().items() if k not in ("resume", "overwrite", "quiet")}
    return api.config("distill-online", values["method"], **kwargs)


def test_each_method_runs_its_own_scaled_paper_protocol(pairs):
    configs = {pair.name: pair.method.config for pair in pairs}
    assert configs["dml"].optim.milestones == [6, 12, 18] and configs["dml"].train.batch_size == 64
    assert configs["one"].optim.milestones == [10, 15] and configs["one:official"].optim.milestones == [10.066667, 15]
    assert configs["okddip"].method_params["ramp_epochs"] == pytest.approx(80 * 20 / 300, abs=1e-6)
    assert configs["okddip:detached"].method_params["detach_targets"] is True
    for config in configs.values():
        assert config.train.epochs == 20 and config.data.val_fraction == 0 and config.train.precision == "fp32"


def test_the_matched_baseline_has_every_budget_field_of_its_method(pairs):
    for pair in pairs:
        ours, base = pair.method, pair.baseline
        assert ours.budget == base.budget, pair.name
        for key in ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones",
                    "gamma", "warmup_epochs", "val_fraction", "augment", "precision", "members", "model"):
            assert key in ours.budget, key
        if pair.name == "codistill":  # disjoint shards: its own baseline, with the distillation off
            assert base.method == "codistill" and base.config.method_params["distill_weight"] == 0
            assert ours.budget["data_per_member"] == "1/2 (disjoint shards)"
        else:
            assert base.method == "independent" and base.config.method_params["peers"] == ours.budget["members"]
    members = {pair.name: pair.baseline.budget["members"] for pair in pairs}
    assert (members["dml"], members["cl"], members["one"], members["okddip"]) == (2, 4, 3, 4)


def test_the_printed_commands_reproduce_the_planned_budgets(pairs):
    """What a reader copies from the docs gets the budget the plan checked (floats printed in full)."""
    for pair in pairs:
        for planned in (pair.method, pair.baseline):
            assert differences(budget_of(parsed(planned.argv())), planned.budget) == [], planned.argv()


def test_a_pair_whose_budgets_differ_is_refused(monkeypatch):
    real = reproduce.budget_flags

    def dropping_nesterov(config):  # a baseline that would fall back to kd's default (Nesterov) for ONE
        flags = real(config)
        del flags["nesterov"]
        return flags

    monkeypatch.setattr(reproduce, "budget_flags", dropping_nesterov)
    with pytest.raises(ValueError, match=r"refusing to pair one \(paper\) with independent ×3: budgets differ \(nesterov False vs True\)"):
        reproduce.plan(["one"], dataset="digits", model="lenet5", epochs=10, device="cpu")


def test_settings_reach_the_method_and_therefore_the_baseline():
    (pair,) = reproduce.plan(["okddip"], dataset="digits", model="lenet5", epochs=10, device="cpu",
                             settings=reproduce.parse_settings(["batch_size=32", "lr=0.05"]))
    assert pair.baseline.config.train.batch_size == 32 and pair.baseline.config.optim.lr == 0.05
    assert "lr" not in pair.method.config.adjusted  # a rate the user set is not capped for LeNet-5
