"""Training budgets: what must match for a baseline to be compared with a method."""

import dataclasses

import pytest

from kdcli.budget import budget_of, differences, run_budget
from kdcli.presets import method_class, resolve_config


@pytest.mark.parametrize(("method", "members"), [("dml", 2), ("cl", 4), ("one", 3), ("okddip", 4), ("codistill", 2),
                                                 ("independent", 2)])
def test_members_are_every_classifier_trained_side_by_side(method, members):
    config = resolve_config("distill-online", method, flags={"device": "cpu"})
    assert budget_of(config)["members"] == members


def test_heterogeneous_peers_count_and_codistill_shards_are_part_of_the_budget():
    dml = resolve_config("distill-online", "dml", flags={"device": "cpu", "models": ["lenet5", "lenet5-half", "mlp-16"]})
    assert budget_of(dml)["members"] == 3 and budget_of(dml)["model"] == "lenet5+lenet5-half+mlp-16"
    codistill = budget_of(resolve_config("distill-online", "codistill", preset="paper", flags={"device": "cpu"}))
    independent = budget_of(resolve_config("distill-online", "independent", flags={"device": "cpu"}))
    assert codistill["data_per_member"] == "1/2 (disjoint shards)" and "data_per_member" not in independent
    shared = resolve_config("distill-online", "codistill", flags={"device": "cpu"}, method_flags={"shard": "shared"})
    assert "data_per_member" not in budget_of(shared)


def test_differences_name_each_field_and_ignore_float_noise():
    a = {"epochs": 20, "lr": 0.1, "milestones": [10, 15], "members": 2}
    b = {"epochs": 200, "lr": 0.1 + 1e-15, "milestones": [10, 15.0], "members": 2, "data_per_member": "1/2"}
    assert differences(a, b) == ["epochs 20 vs 200", "data_per_member — vs 1/2"]
    assert differences(a, dict(a)) == []


def test_precision_is_what_the_device_makes_of_it():
    config = resolve_config("distill-online", "dml", flags={"device": "cpu"})
    assert config.train.precision == "auto"
    assert budget_of(config, device_type="cpu")["precision"] == "fp32"
    assert budget_of(config, device_type="cuda")["precision"] == "bf16"


def test_a_run_budget_is_read_back_from_run_json_with_its_resolved_params():
    config = resolve_config("distill-online", "dml", flags={"device": "cpu"})
    params = method_class("dml").make_params({"peers": 3})
    info = {"config": config.to_dict(), "params": dataclasses.asdict(params), "device": "cpu"}
    assert run_budget(info) == {**budget_of(config), "members": 3}
