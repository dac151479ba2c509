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


@pytest.mark.parametrize(
    "value,hint,expected",
    [
        (3, int, 3), (3, float, 3.0), (0.5, float, 0.5), (True, bool, True), ("sgd", str, "sgd"),
        ([1, 2], list[int], [1, 2]), (None, str | None, None), ("x", str | None, "x"),
    ],
)
def test_check_type_accepts_what_fits(value, hint, expected):
    from kdcli.config import check_type

    result = check_type(value, hint)
    assert result == expected and type(result) is type(expected)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "value,hint",
    [(True, int), (1.5, int), ("3", int), ("0.1", float), (False, float), (float("nan"), float),
     (float("inf"), float), (1, bool), ("yes", bool), (3, str), ([1.5], list[int]), ("1,2", list[int])],
)
def test_check_type_is_strict(value, hint):
    from kdcli.config import WrongType, check_type

    with pytest.raises(WrongType):
        check_type(value, hint)


def test_every_numeric_and_choice_field_has_a_rule():
    """A new config field needs a range or a list of choices (or is a name, a path or a list checked elsewhere)."""
    import dataclasses

    from kdcli.config import CHOICES, RANGES, DataConfig, OptimConfig, TrainConfig

    named = {"dataset", "data_dir", "nesterov"}
    for cls in (DataConfig, OptimConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            assert f.name in RANGES or f.name in CHOICES or f.name in named, f.name


def test_resume_lists_every_change_it_refuses_and_allows_the_documented_ones():
    from kdcli.config import ResumeChanges
    from kdcli.presets import resolve_resume

    stored = RunConfig(command="train-teacher", method="supervised", model="lenet5")
    info = {"command": "train-teacher", "config": stored.to_dict(), "params": {}}
    changes = ResumeChanges("train-teacher", flags={"batch_size": 3, "momentum": 0.5, "lr": 0.01})
    with pytest.raises(KDError, match=r"--momentum 0.5 \(the run has 0.9\); --batch-size 3 \(the run has 128\)\. "
                                      r"Only --epochs, --lr, --device, --data-dir may change"):
        resolve_resume("r", info, changes)
    config, _, changed = resolve_resume("r", info, ResumeChanges("train-teacher", flags={"lr": 0.01, "epochs": 30,
                                                                                          "batch_size": 128}))
    assert changed == {"lr": [0.05, 0.01], "epochs": [20, 30]} and config.optim.lr == 0.01
    with pytest.raises(KDError, match="made by kd train-teacher, not kd distill"):
        resolve_resume("r", info, ResumeChanges("distill"))
