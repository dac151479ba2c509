"""Preset resolution: the paper presets are the papers' protocols end to end, and scale with --epochs."""

import pytest

from kdcli.presets import method_class, methods_of, resolve_config

PAPER = {  # method: (epochs, batch, milestones, weight decay, nesterov, method hyperparameters)
    "dml": (200, 64, [60, 120, 180], 5e-4, True, {"update": "alternating"}),
    "cl": (300, 128, [150, 225], 5e-4, True, {"peers": 4, "temperature": 3.0, "hard_weight": 1.0, "soft_weight": 1.0,
                                              "ramp_epochs": 80.0, "detach_consensus": False, "ilr": True}),
    "one": (300, 128, [150, 225], 1e-4, False, {"peers": 3, "temperature": 3.0, "ramp_epochs": 80.0}),
    "okddip": (300, 128, [150, 225], 5e-4, True, {"peers": 3, "temperature": 3.0, "ramp_epochs": 80.0,
                                                  "detach_targets": False}),
    "codistill": (300, 128, [150, 225], 5e-4, True, {"peers": 2, "shard": "disjoint", "temperature": 1.0,
                                                     "distill_weight": 1.0, "burn_in": 2000}),
}


@pytest.mark.parametrize("method", sorted(PAPER))
def test_paper_preset_is_the_whole_protocol(method):
    config = resolve_config("distill-online", method, preset="paper")
    epochs, batch, milestones, wd, nesterov, params = PAPER[method]
    assert config.data.val_fraction == 0.0 and config.train.precision == "fp32"  # all training images, fp32
    assert (config.train.epochs, config.train.batch_size, config.optim.milestones) == (epochs, batch, milestones)
    assert (config.optim.optimizer, config.optim.lr, config.optim.momentum, config.optim.gamma) == ("sgd", 0.1, 0.9, 0.1)
    assert (config.optim.weight_decay, config.optim.nesterov, config.optim.schedule) == (wd, nesterov, "step")
    assert config.optim.warmup_epochs == 0.0 and config.model == "resnet32"
    assert {k: config.method_params[k] for k in params} == params
    assert config.adjusted == {}  # nothing scaled or capped at the paper's own length on a BatchNorm model


def test_every_online_method_but_the_baseline_has_a_paper_preset_and_says_what_it_reproduces():
    for name in methods_of("distill-online"):
        cls = method_class(name)
        if name == "independent":  # the baseline takes the protocol of the method it is compared with
            assert "paper" not in cls.presets
            continue
        assert "paper" in cls.presets and set(cls.preset_notes) == set(cls.presets) - {"quick"}


def test_named_variants_are_presets_not_hidden_params():
    assert resolve_config("distill-online", "okddip", preset="detached").method_params["detach_targets"] is True
    assert resolve_config("distill-online", "one", preset="official").optim.milestones == [151, 225]
    cl = resolve_config("distill-online", "cl", preset="cl-paper-loss").method_params
    assert (cl["temperature"], cl["hard_weight"], cl["soft_weight"], cl["ramp_epochs"], cl["detach_consensus"]) == (
        2.0, 0.5, 0.5, 0.0, True)


def test_epochs_scale_milestones_and_ramp_and_are_recorded():
    config = resolve_config("distill-online", "one", preset="paper", flags={"epochs": 30})
    assert config.train.epochs == 30
    assert config.optim.milestones == [15, 22.5]  # 150·30/300, 225·30/300: the second falls mid-epoch
    assert config.method_params["ramp_epochs"] == 8.0
    assert config.adjusted["milestones"].startswith("150,225 → 15,22.5: the paper preset is 300 epochs, this run 30")
    assert config.adjusted["method.ramp_epochs"].startswith("80 → 8:")
    dml = resolve_config("distill-online", "dml", preset="paper", flags={"epochs": 20})
    assert dml.optim.milestones == [6, 12, 18] and "60,120,180 → 6,12,18" in dml.adjusted["milestones"]
    longer = resolve_config("distill-online", "okddip", preset="paper", flags={"epochs": 600})
    assert longer.optim.milestones == [300, 450] and longer.method_params["ramp_epochs"] == 160


def test_a_scaled_integer_stays_an_integer():
    config = resolve_config("distill-online", "codistill", preset="paper", flags={"epochs": 20})
    assert config.method_params["burn_in"] == 133 and isinstance(config.method_params["burn_in"], int)


def test_values_the_user_sets_are_not_scaled(tmp_path):
    config = resolve_config("distill-online", "one", preset="paper", flags={"epochs": 30, "milestones": [20]},
                            method_flags={"ramp_epochs": 3.0})
    assert config.optim.milestones == [20] and config.method_params["ramp_epochs"] == 3.0
    assert "milestones" not in config.adjusted and "method.ramp_epochs" not in config.adjusted
    toml = tmp_path / "short.toml"
    toml.write_text('preset = "paper"\nepochs = 60\n[method]\nramp_epochs = 5.0\n')
    from_file = resolve_config("distill-online", "okddip", config_file=toml)
    assert from_file.optim.milestones == [30, 45] and from_file.method_params["ramp_epochs"] == 5.0


def test_scaling_and_the_batchnorm_rule_are_both_recorded_for_lenet():
    config = resolve_config("distill-online", "okddip", preset="paper", flags={"epochs": 20, "model": "lenet5"})
    assert config.optim.lr == 0.02 and config.optim.warmup_epochs == 1.0  # lenet5 has no BatchNorm
    assert set(config.adjusted) == {"milestones", "method.ramp_epochs", "lr", "warmup_epochs"}
