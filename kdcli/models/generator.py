"""Image generators of the data-free methods: DAFL's (Chen et al., ICCV 2019) and ZSKT's (Micaelli & Storkey,
NeurIPS 2019).

A generator is not a classifier, so it lives in its own registry, ``GENERATORS``, rather than in
``MODELS`` (whose every entry is a :class:`StagedNet` that ``kd evaluate`` scores and the model
tests parametrise over). It carries a :class:`ModelSpec` like every kd model, is saved with the same
safetensors metadata, and :func:`load_generator` rebuilds it from that file alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdcli.checkpoint import FORMAT_VERSION, load_tensors
from kdcli.errors import KDError
from kdcli.models.base import ModelSpec
from kdcli.registry import Registry


class Generator(nn.Module):
    """``z → FC(128·s₀²) → BN → [×2, conv3×3·128, BN, LReLU 0.2] → [×2, conv3×3·64, BN, LReLU 0.2] → conv3×3·C → head``.

    ``s₀ = ⌈image_size / 4⌉`` (8 for 32 px, as both official codes have it); ``×2`` is nearest-neighbour
    upsampling; the output is cropped to ``image_size`` when it is not a multiple of 4. The two papers'
    official codes share this DCGAN-style body and differ in the details, which each builder sets:

    * DAFL (huawei-noah DAFL, ``DAFL-train.py``): the hidden BatchNorms after the convolutions use
      ``eps=0.8`` (``nn.BatchNorm2d(n, 0.8)``: the second positional argument is eps, not momentum);
      the head is ``tanh → BN(affine=False)``.
    * ZSKT (polo5/ZeroShotKnowledgeTransfer, ``models/generator.py`` as last changed, Aug 2019): every
      BatchNorm is torch's default (``eps=1e-5``, affine), the head BN included; no tanh. (The repository's
      first commit started from 10×10 upsampled ×1.6 and had an affine-free head BN; the code was then
      changed to this.)

    The first BatchNorm (after the FC) is torch's default in both. The output is in the teacher's
    *normalised* input space (the final BN makes it about zero-mean, unit-variance per channel, like a
    normalised real batch).
    """

    spec: ModelSpec

    def __init__(self, channels: int, image_size: int, latent_dim: int, tanh: bool, hidden_eps: float = 1e-5,
                 head_affine: bool = True) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image_size = image_size
        self.init_size = max(1, -(-image_size // 4))
        self.project = nn.Linear(latent_dim, 128 * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(128)
        self.block1 = nn.Sequential(nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128, hidden_eps), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64, hidden_eps), nn.LeakyReLU(0.2))
        head: list[nn.Module] = [nn.Conv2d(64, channels, 3, 1, 1)]
        if tanh:
            head.append(nn.Tanh())
        head.append(nn.BatchNorm2d(channels, affine=head_affine))
        self.head = nn.Sequential(*head)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.bn0(self.project(z).view(z.shape[0], 128, self.init_size, self.init_size))
        h = self.block1(nn.functional.interpolate(h, scale_factor=2))
        h = self.block2(nn.functional.interpolate(h, scale_factor=2))
        out = self.head(h)
        return out[:, :, : self.image_size, : self.image_size]

    def sample_latent(self, n: int, device: torch.device | str) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=device)


GeneratorBuilder = Callable[..., Generator]
GENERATORS: Registry[GeneratorBuilder] = Registry("generator")
GENERATORS.add(
    "generator-dafl",
    lambda channels, image_size, latent_dim: Generator(channels, image_size, latent_dim, tanh=True, hidden_eps=0.8,
                                                       head_affine=False),
    help="DAFL (Chen et al. 2019), as its official code: DCGAN body with BN eps 0.8, tanh + BN(affine=False) head",
)
GENERATORS.add(
    "generator-zskt",
    lambda channels, image_size, latent_dim: Generator(channels, image_size, latent_dim, tanh=False, hidden_eps=1e-5,
                                                       head_affine=True),
    help="ZSKT (Micaelli & Storkey 2019), as its official code: DCGAN body with default (eps 1e-5, affine) BNs, "
         "affine BN head",
)


def create_generator(name: str, channels: int, image_size: int, num_classes: int, latent_dim: int = 100) -> Generator:
    """Build generator ``name`` for ``channels × image_size²`` images of a ``num_classes`` teacher."""
    if latent_dim < 1:
        raise KDError(f"generator latent_dim must be positive, got {latent_dim}")
    entry, _ = GENERATORS.resolve(name)
    generator = entry.builder(channels=channels, image_size=image_size, latent_dim=latent_dim)
    generator.spec = ModelSpec(name, channels, image_size, num_classes, {"latent_dim": latent_dim})
    return generator


def load_generator(path: Path, device: torch.device | str = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Rebuild a saved generator from its safetensors file alone (eval mode)."""
    tensors, metadata = load_tensors(path)
    if metadata.get("kd_format") != FORMAT_VERSION or "spec" not in metadata:
        raise KDError(f"{path} is not a kd checkpoint (no kd metadata)")
    spec = json.loads(metadata["spec"])
    if spec["arch"] not in GENERATORS:
        raise KDError(f"{path} holds a {spec['arch']!r}, not a generator")
    generator = create_generator(
        spec["arch"], spec["in_channels"], spec["image_size"], spec["num_classes"], **spec["kwargs"]
    )
    try:
        generator.load_state_dict(tensors)
    except RuntimeError as err:
        raise KDError(f"{path} does not match {spec['arch']!r}: {str(err).splitlines()[0]}") from None
    return generator.to(device).eval(), {"spec": spec, "dataset": json.loads(metadata.get("dataset", "{}"))}
