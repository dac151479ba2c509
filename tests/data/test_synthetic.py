"""Synthetic transfer sets on disk: round trip, shards, preview grid, atomic writes, clear errors."""

import json

import pytest
import torch
from PIL import Image

from kdcli.data.synthetic import SAMPLES_PER_CLASS, SyntheticSet, normalise, read_set, to_pixels, write_set
from kdcli.errors import KDError
from kdcli.models.generator import GENERATORS, create_generator, load_generator
from kdcli.pictures import row_label_margin


def _set(n: int = 25, classes: int = 5, size: int = 6) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    soft = torch.softmax(torch.randn(n, classes, generator=g), 1)
    return SyntheticSet(images, soft, torch.arange(n) % classes)


def test_uint8_set_round_trips_through_shards(tmp_path):
    data = _set(25)
    write_set(tmp_path / "s", data, {"method": "zskd"}, num_classes=5, shard_size=10)
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == [
        "samples.png",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
        "synthetic.json",
    ]
    loaded, info = read_set(tmp_path / "s")
    assert torch.equal(loaded.images, data.images) and loaded.images.dtype == torch.uint8
    assert torch.equal(loaded.soft_targets, data.soft_targets) and torch.equal(loaded.classes, data.classes)
    assert info["method"] == "zskd" and info["count"] == 25 and info["per_class"] == [5] * 5
    assert [s["count"] for s in info["shards"]] == [10, 10, 5]


def test_float16_set_keeps_values_outside_the_pixel_range(tmp_path):
    pixels = torch.linspace(-0.5, 1.5, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    data = SyntheticSet(pixels, torch.full((2, 3), 1 / 3), torch.tensor([0, 2]))
    write_set(tmp_path / "f", data, {}, num_classes=3, dtype="float16")
    loaded, info = read_set(tmp_path / "f")
    assert info["dtype"] == "float16" and loaded.images.dtype == torch.float16
    assert torch.allclose(loaded.pixels(), pixels, atol=2e-3)
    assert loaded.pixels().min() < 0 and loaded.pixels().max() > 1


def test_samples_png_is_a_class_by_row_grid(tmp_path):
    write_set(tmp_path / "s", _set(40, classes=5, size=6), {}, num_classes=5)
    picture = Image.open(tmp_path / "s" / "samples.png")
    picture.verify()
    picture = Image.open(tmp_path / "s" / "samples.png")
    scale = 96 // 6 if 96 // 6 <= 8 else 8
    margin = row_label_margin([str(k) for k in range(5)], row_height=7 * scale)  # rows labelled 0..4
    assert margin > 0
    assert picture.size == (margin + (SAMPLES_PER_CLASS * 7 + 1) * scale, (5 * 7 + 1) * scale)
    assert picture.mode == "L"


def test_existing_folder_is_replaced_whole_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    write_set(tmp_path / "s", _set(10), {"v": 1}, num_classes=5)
    write_set(tmp_path / "s", _set(12), {"v": 2}, num_classes=5)
    assert json.loads((tmp_path / "s" / "synthetic.json").read_text())["v"] == 2
    import kdcli.data.synthetic as synthetic

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "write_samples_png", boom)
    with pytest.raises(RuntimeError):
        write_set(tmp_path / "t", _set(10), {}, num_classes=5)
    assert not (tmp_path / "t").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folder left behind


def test_reading_something_that_is_not_a_set_is_a_one_line_error(tmp_path):
    with pytest.raises(KDError, match="not found"):
        read_set(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KDError, match="not a synthetic set"):
        read_set(tmp_path / "empty")
    write_set(tmp_path / "s", _set(10), {}, num_classes=5)
    shard = tmp_path / "s" / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(KDError, match="safetensors"):
        read_set(tmp_path / "s")


def test_pixel_normalisation_round_trip():
    pixels = torch.rand(3, 3, 4, 4)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    assert torch.allclose(to_pixels(normalise(pixels, mean, std), mean, std), pixels, atol=1e-6)


@pytest.mark.parametrize("name", [e.name for e in GENERATORS])
@pytest.mark.parametrize("shape", [(1, 8), (1, 28), (3, 32), (1, 7)])
def test_generators_make_images_and_rebuild_from_their_file(tmp_path, name, shape):
    from kdcli.checkpoint import save_model

    channels, size = shape
    torch.manual_seed(0)
    generator = create_generator(name, channels, size, 10, latent_dim=16)
    z = torch.randn(4, 16)
    images = generator(z)
    assert images.shape == (4, channels, size, size)
    save_model(tmp_path / "g.safetensors", generator, "generator", {"name": "x"})
    rebuilt, info = load_generator(tmp_path / "g.safetensors")
    generator.eval()
    assert torch.equal(rebuilt(z), generator(z))
    assert info["spec"]["kwargs"] == {"latent_dim": 16}


def test_a_classifier_file_is_not_a_generator(tmp_path, teacher_run):
    with pytest.raises(KDError, match="not a generator"):
        load_generator(teacher_run / "teacher.safetensors")
