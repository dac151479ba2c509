"""kd train-teacher --preset paper: the data-free papers' teacher recipe (kdcli.methods.supervised.cross_entropy)."""

from kdcli import api
from kdcli.methods.supervised.cross_entropy import Supervised


def test_the_paper_teacher_on_mnist_is_the_official_dafl_recipe():
    config = api.config("train-teacher", preset="paper", dataset="mnist")
    assert config.model == "lenet5"
    assert (config.optim.optimizer, config.optim.lr, config.optim.weight_decay, config.optim.schedule) == (
        "adam", 1e-3, 0.0, "constant")
    assert (config.train.batch_size, config.train.epochs, config.train.precision) == (256, 9, "fp32")
    assert (config.data.val_fraction, config.data.image_size, config.data.augment) == (0.0, 32, "none")
    assert config.optim.warmup_epochs == 0 and not config.adjusted
    assert "98.91" in Supervised.preset_notes["paper"] and "teacher-train.py" in Supervised.preset_notes["paper"]


def test_flags_win_over_the_paper_teacher_and_other_datasets_get_its_recipe_at_their_size():
    config = api.config("train-teacher", preset="paper", dataset="mnist", image_size=28, epochs=3)
    assert (config.data.image_size, config.train.epochs) == (28, 3)
    digits = api.config("train-teacher", preset="paper")
    assert (digits.model, digits.optim.optimizer, digits.data.image_size) == ("lenet5", "adam", 0)
    cifar = api.config("train-teacher", preset="paper", dataset="cifar10")
    assert (cifar.model, cifar.optim.optimizer, cifar.train.batch_size) == ("alexnet", "adam", 64)
