"""Pictures: curves.png (epoch ticks, legend beside the plots, calm accuracy axis) and labelled image grids."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from kdcli import pictures
from kdcli.data.synthetic import write_samples_png
from kdcli.pictures import (
    CURVES_WIDTH,
    accuracy_axis_range,
    curves_size,
    epoch_ticks,
    image_grid,
    loss_axis_range,
    plot_curves,
    row_label_margin,
)


def _history(epochs: int, roles=("student",), test: bool = True) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "time_s": 1.5, "lr": 0.1 / e, "train_loss": 2.0 * math.exp(-e / 5) + 0.2,
               "train_ce": 1.2 * math.exp(-e / 5) + 0.1, "train_kl": 0.3 / e, "train_acc": 0.5 + 0.4 * e / epochs}
        for i, role in enumerate(roles):
            row[f"val_top1/{role}"] = 0.6 + 0.3 * e / epochs + 0.01 * i
            if test:
                row[f"test_top1/{role}"] = 0.59 + 0.3 * e / epochs + 0.01 * i
        rows.append(row)
    return rows


def _open(path):
    Image.open(path).verify()
    return Image.open(path).convert("RGB")


def test_epoch_ticks_are_integers_every_epoch_up_to_ten_then_a_round_step():
    assert epoch_ticks(0) == []
    assert epoch_ticks(1) == [1]
    assert epoch_ticks(10) == list(range(1, 11))
    assert epoch_ticks(12) == [2, 4, 6, 8, 10, 12]
    assert epoch_ticks(30) == [5, 10, 15, 20, 25, 30]
    assert epoch_ticks(200) == [20 * k for k in range(1, 11)]
    for n in range(11, 2000, 7):
        ticks = epoch_ticks(n)
        assert 4 <= len(ticks) <= 10 and all(isinstance(t, int) and 1 <= t <= n for t in ticks)
        assert len({b - a for a, b in zip(ticks, ticks[1:])}) == 1  # evenly spaced
    assert epoch_ticks(14, first=6) == list(range(6, 15))


def test_accuracy_axis_does_not_magnify_noise():
    lo, hi = accuracy_axis_range([97.0, 97.4, 98.0])  # 0.97 → 0.98 must not fill the panel
    assert hi == 100 and hi - lo >= 10 and lo <= 97
    assert hi - lo >= pictures.MIN_ACCURACY_SPAN
    assert accuracy_axis_range([55.0, 91.0]) == (50, 100)
    assert accuracy_axis_range([3.0, 40.0]) == (0, 100)
    assert accuracy_axis_range([]) == (0, 100)
    assert accuracy_axis_range([None, float("nan")]) == (0, 100)
    assert accuracy_axis_range([100.0]) == (80, 100)


def test_loss_axis_starts_at_zero_for_a_falling_loss_and_is_round():
    assert loss_axis_range([2.3, 1.0, 0.31]) == (0.0, 2.5, 0.5)
    lo, hi, step = loss_axis_range([0.093, 0.099])  # a flat loss keeps its own range
    assert 0 < lo <= 0.093 and 0.099 <= hi and step > 0
    assert loss_axis_range([]) == (0.0, 1.0, 0.2)
    lo, hi, step = loss_axis_range([0.5, 0.5])
    assert lo <= 0.5 < hi
    lo, hi, _ = loss_axis_range([-1.5, 2.0])
    assert lo <= -1.5 and hi >= 2.0


@pytest.mark.parametrize(
    "history",
    [
        _history(40, roles=[f"peer{i}" for i in range(8)] + ["ensemble"]),  # many series: compact legend
        _history(30),
        _history(1),
        [],
        [{"epoch": 1, "train_loss": float("nan"), "val_top1/student": None},
         {"epoch": 2, "train_loss": 0.5, "val_top1/student": 0.9, "train_w": float("inf"), "note": "text"},
         {"epoch": 3, "train_loss": None, "val_top1/student": float("nan"), "train_agree": 0.7}],
    ],
    ids=["dml-9-roles", "kd-30-epochs", "one-epoch", "empty", "nan-none"],
)
def test_curves_render_at_the_expected_size(tmp_path, history):
    plot_curves(history, tmp_path / "curves.png")
    picture = _open(tmp_path / "curves.png")
    assert picture.size == curves_size(history)
    assert picture.width == CURVES_WIDTH and 600 <= picture.height <= 1200
    colours = np.asarray(picture).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 10  # something was drawn


def test_curves_size_grows_only_for_a_legend_that_does_not_fit():
    assert curves_size(_history(5)) == curves_size([]) == curves_size(_history(5, roles=["a", "b", "c"]))
    many = [{"epoch": 1, **{f"val_top1/m{i}": 0.5 for i in range(30)}}]
    assert curves_size(many)[1] > curves_size([])[1]


def test_accuracy_legend_is_compact_with_a_style_key_when_lines_do_not_fit():
    _, rates, _ = pictures._collect(_history(3, roles=[f"peer{i}" for i in range(8)] + ["ensemble"]))
    legend = pictures._legend(rates, rows=15)
    labels = [label for label, _, _ in legend]
    assert labels[:9] == [f"peer{i}" for i in range(8)] + ["ensemble"]
    assert "train acc" in labels and labels[-2:] == ["val", "test (curve)"]
    explicit = [label for label, _, _ in pictures._legend(rates[:4], rows=15)]
    assert all(label.startswith(("val ", "test ", "train ")) for label in explicit)
    assert any(label.endswith("(curve)") for label in explicit)


def test_legend_is_beside_the_plot_not_over_it(tmp_path):
    plot_curves(_history(20), tmp_path / "curves.png")
    pixels = np.asarray(_open(tmp_path / "curves.png")).astype(int)
    # the legend column (right of the plot frame) holds coloured ink: the line samples
    legend = pixels[:, pictures._LEGEND_LEFT:]
    assert (np.abs(legend - np.array(pictures.PALETTE[0])).sum(-1) < 40).any()
    # and nothing of the plots spills into it: the band between frame and legend is blank
    gap = pixels[:, pictures._PLOT_RIGHT + 3: pictures._LEGEND_LEFT - 3]
    assert (gap > 245).all()


def test_curves_fall_back_to_the_bitmap_font(tmp_path, monkeypatch):
    bitmap = getattr(pictures.ImageFont, "load_default_imagefont", pictures.ImageFont.load_default)

    def old_pillow(size=None):  # Pillow < 10.1 (or no FreeType): no size, a fixed bitmap font
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap()

    monkeypatch.setattr(pictures.ImageFont, "load_default", old_pillow)
    plot_curves(_history(4), tmp_path / "curves.png")
    assert _open(tmp_path / "curves.png").size == curves_size(_history(4))


def test_labelled_grid_keeps_the_cells_and_writes_in_the_margin(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 5, 7), generator=g, dtype=torch.uint8)
    image_grid(images, rows=3, path=tmp_path / "plain.png", scale=4)
    labels = ["airplane", "cat", "a very long class name that will not fit in the margin"]
    image_grid(images, rows=3, path=tmp_path / "labelled.png", scale=4, row_labels=labels)
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    labelled = np.asarray(Image.open(tmp_path / "labelled.png"))
    margin = row_label_margin(labels, row_height=6 * 4)
    assert labelled.shape == (plain.shape[0], margin + plain.shape[1], 3)
    assert np.array_equal(labelled[:, margin:], plain)  # image content exact
    assert (labelled[:, :margin] < 128).any()  # text in the margin
    assert margin <= 160 + 2 * 6 + 1  # long names are shortened
    for r in range(3):  # each row has its own label, within the row's band
        band = labelled[(1 + r * 6) * 4: (1 + r * 6 + 5) * 4, :margin]
        assert (band < 128).any()
    with pytest.raises(ValueError, match="row labels"):
        image_grid(images, rows=3, path=tmp_path / "x.png", row_labels=["one"])


def test_samples_png_rows_are_labelled_with_class_names(tmp_path):
    pixels = torch.rand(30, 1, 8, 8)
    classes = torch.arange(30) % 3
    write_samples_png(tmp_path / "named.png", pixels, classes, 3, class_names=["zero", "one", "two"])
    write_samples_png(tmp_path / "index.png", pixels, classes, 3)
    named, index = Image.open(tmp_path / "named.png"), Image.open(tmp_path / "index.png")
    assert named.mode == index.mode == "L"
    scale = 96 // 8 if 96 // 8 <= 8 else 8
    cells = (8 * 9 + 1) * scale
    assert named.width == row_label_margin(["zero", "one", "two"], 9 * scale) + cells
    assert index.width == row_label_margin(["0", "1", "2"], 9 * scale) + cells
    # the image cells are the same whatever the labels
    assert np.array_equal(np.asarray(named)[:, -cells:], np.asarray(index)[:, -cells:])
