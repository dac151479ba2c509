import pytest

from kdcli.config import RunConfig, apply_overrides, load_toml, validate
from kdcli.errors import KDError


def test_flags_win_over_toml_and_sections_are_understood(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('epochs = 7\nlr = 0.3\n[optim]\nschedule = "step"\nmilestones = [2, 4]\n[method]\ntemperature = 2.0\n')
    config = RunConfig()
    apply_overrides(config, load_toml(toml), str(toml))
    apply_overrides(config, {"lr": 0.01, "epochs": None}, "flags")
    assert config.train.epochs == 7
    assert config.optim.lr == 0.01
    assert config.optim.schedule == "step" and config.optim.milestones == [2, 4]
    assert config.method_params == {"temperature": 2.0}


def test_unknown_toml_key_is_an_error(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("epochz = 3\n")
    with pytest.raises(KDError, match="epochz"):
        apply_overrides(RunConfig(), load_toml(toml), str(toml))


def test_round_trip_through_dict():
    config = RunConfig(model="resnet20")
    config.optim.milestones = [3]
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("field,section,value", [("epochs", "train", 0), ("batch_size", "train", -1), ("lr", "optim", 0.0)])
def test_non_positive_numbers_are_rejected(field, section, value):
    config = RunConfig()
    setattr(getattr(config, section), field, value)
    with pytest.raises(KDError, match="must be positive"):
        validate(config)
