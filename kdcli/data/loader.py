"""Device-resident batches: uint8 images live on the device, batches are augmented and normalised there.

The hot loop does no per-sample Python: a batch is one index-select, one batched window
selection (crop and flip together), one cast and one fused multiply-add.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from kdcli.data.base import ImageSet
from kdcli.errors import KDError

AUGMENTS = ("none", "crop", "flip", "crop_flip")
CROP_PADDING = 4


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of parts; (seed, epoch) pairs never collide the way seed + epoch does."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator: random draws are made on the CPU so an order is the same on every device."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def stratified_split_indices(
    labels: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into (kept, held_out), holding out ``round(fraction * n_c)`` of each class.

    Both index tensors are sorted, so each part keeps the samples' original order.
    """
    labels = labels.cpu()
    n = labels.shape[0]
    perm = torch.randperm(n, generator=generator)
    # Group by class with a stable sort of the shuffled labels: each class stays in random order.
    grouped = perm[torch.sort(labels[perm], stable=True).indices]
    grouped_labels = labels[grouped]
    counts = torch.bincount(grouped_labels)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n) - starts[grouped_labels]
    held_per_class = torch.round(counts.double() * fraction).long()
    held = rank_in_class < held_per_class[grouped_labels]
    return torch.sort(grouped[~held]).values, torch.sort(grouped[held]).values


def subset(data: ImageSet, indices: torch.Tensor) -> ImageSet:
    return ImageSet(data.images.index_select(0, indices), data.labels.index_select(0, indices))


def few_shot_indices(labels: torch.Tensor, shots: int, num_classes: int, seed: int) -> torch.Tensor:
    """``shots`` indices of each of the ``num_classes`` classes, drawn with the run's ``seed`` (the same ones for
    the same seed and labels), sorted. A class with fewer than ``shots`` samples is a one-line error."""
    labels = labels.cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    short = [c for c in range(num_classes) if int(counts[c]) < shots]
    if short:
        c = short[0]
        raise KDError(f"--shots {shots}: class {c} has only {int(counts[c])} training images"
                      f"{f' (and {len(short) - 1} more classes have fewer than {shots})' if len(short) > 1 else ''}")
    perm = torch.randperm(labels.shape[0], generator=seeded_generator(seed, "shots"))
    grouped = perm[torch.sort(labels[perm], stable=True).indices]  # by class, each class in random order
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(labels.shape[0]) - starts[labels[grouped]]
    return torch.sort(grouped[rank_in_class < shots]).values


def repeat_to(data: ImageSet, length: int) -> ImageSet:
    """``data`` repeated (and cut) to ``length`` samples: a few-shot subset filling an epoch of the full split."""
    copies = -(-length // len(data))
    index = torch.arange(len(data)).repeat(copies)[:length]
    return subset(data, index)


def split_train_val(images: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """Hold out a stratified, seeded ``fraction`` of a split for validation; ``fraction=0`` → ``(images, None)``."""
    if not 0.0 <= fraction < 1.0:
        raise KDError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return images, None
    kept, held = stratified_split_indices(images.labels, fraction, seeded_generator(seed, "val-split"))
    if held.numel() == 0:
        raise KDError(f"validation fraction {fraction} holds out no sample of {len(images)}: use a larger fraction")
    return subset(images, kept), subset(images, held)


@dataclass
class Slot:
    """Where one batch comes from: positions ``lo:hi`` of the epoch, the sample indices there (None: the
    samples ``lo:hi`` in order) and the augmentation draws ``[B, 3]`` (None: no augmentation)."""

    lo: int
    hi: int
    index: torch.Tensor | None
    draws: torch.Tensor | None

    @property
    def size(self) -> int:
        return self.hi - self.lo


def _channel_tensor(values: Sequence[float] | float, channels: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"expected {channels} per-channel values, got {t.numel()}")
    return t.reshape(1, channels, 1, 1).to(device)


class DeviceLoader:
    """Batches of one split, kept on ``device`` as uint8 and normalised per batch.

    Args:
        data: the split; its uint8 images and int64 labels are copied to ``device`` once.
        batch_size: samples per batch.
        mean, std: per-channel statistics in [0, 1] units; a batch is ``(x / 255 - mean) / std``.
        device: where batches live.
        shuffle: a fresh order each epoch, from a generator seeded by ``(seed, epoch)`` only.
        drop_last: drop the final short batch.
        augment: ``"none"``, ``"crop"`` (4-pixel zero-padded random crop), ``"flip"`` (random
            horizontal flip) or ``"crop_flip"``. The draws are seeded by ``(seed, epoch)`` and made
            per position in the epoch, so a run resumed at ``start_step`` replays the same crops.
        seed: the run's seed.
        channels_last: return batches in ``torch.channels_last`` memory format.
        rank, world_size: this process yields slice ``rank`` of ``world_size`` equal slices of every
            batch (data-parallel training): the processes together see exactly the batches, order
            and augmentation of one process, so a 2-process run at batch B equals a 1-process one.
        partitions: split the data once (seeded) into this many disjoint, equal partitions; every
            batch then takes ``batch_size / partitions`` samples from each partition in turn, each
            partition shuffled on its own per epoch (codistillation: each copy keeps its own shard).
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        mean: Sequence[float] | float,
        std: Sequence[float] | float,
        device: torch.device | str,
        shuffle: bool,
        drop_last: bool,
        augment: str = "none",
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        partitions: int = 1,
    ) -> None:
        if augment not in AUGMENTS:
            raise KDError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTS)}")
        if batch_size < 1:
            raise KDError(f"batch size must be positive, got {batch_size}")
        if data.images.dtype != torch.uint8 or data.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {data.images.dtype} {tuple(data.images.shape)}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.seed = seed
        self.channels_last = channels_last
        self.rank, self.world_size, self.partitions = rank, world_size, partitions
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if batch_size % world_size:
            raise KDError(
                f"--batch-size {batch_size} must be divisible by the {world_size} processes sharing each batch"
            )
        if partitions > 1 and (batch_size % partitions or not (shuffle and drop_last)):
            raise KDError(f"batch size {batch_size} must be divisible by the {partitions} data partitions")
        channels = self.images.shape[1]
        std_t = _channel_tensor(std, channels, self.device)
        # (x / 255 - mean) / std  ==  x * scale - shift: one fused multiply-add per batch.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = _channel_tensor(mean, channels, self.device) / std_t
        if len(self) == 0:
            why = f"make no full batch of {batch_size}: lower --batch-size" if len(data) else "are no data"
            raise KDError(f"{len(data)} samples {why}")

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        if self.partitions > 1:
            return (self.num_samples // self.partitions) // (self.batch_size // self.partitions)
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """Sample indices in the order epoch ``epoch`` visits them, for all processes (on the device)."""
        if self.partitions > 1:
            return self._partitioned_order(epoch).to(self.device)
        if not self.shuffle:
            return torch.arange(self.num_samples, device=self.device)
        return torch.randperm(self.num_samples, generator=seeded_generator(self.seed, epoch, "order")).to(self.device)

    def _partitioned_order(self, epoch: int) -> torch.Tensor:
        """Batch-major interleaving of per-partition orders: batch t = [part 0's t-th chunk, part 1's, ...]."""
        size = self.num_samples // self.partitions
        chunk = self.batch_size // self.partitions
        parts = torch.randperm(self.num_samples, generator=seeded_generator(self.seed, "partitions"))
        parts = parts[: size * self.partitions].view(self.partitions, size)
        generator = seeded_generator(self.seed, epoch, "order")
        shuffled = torch.stack([part[torch.randperm(size, generator=generator)] for part in parts])
        steps = size // chunk
        return shuffled[:, : steps * chunk].view(self.partitions, steps, chunk).transpose(0, 1).reshape(-1)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` for steps ``start_step..len(self)-1`` of epoch ``epoch``.

        Images are float32 ``[B, C, H, W]``, augmented then normalised; labels int64 ``[B]``.
        """
        for slot in self.slots(epoch, start_step):
            yield self.gather(slot)

    def slots(self, epoch: int, start_step: int = 0) -> Iterator[Slot]:
        """Where each batch of steps ``start_step..`` of epoch ``epoch`` comes from, without reading it.

        :meth:`gather` turns a slot into the batch; a captured training step (a CUDA graph) gathers
        from fixed tensors that each step's slot is copied into.
        """
        steps = len(self)
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step {start_step} outside 0..{steps}")
        order = self.order(epoch) if self.shuffle else None
        draws = self._augment_draws(epoch, steps * self.batch_size) if self.augment != "none" else None
        for step in range(start_step, steps):
            lo = step * self.batch_size
            hi = min(lo + self.batch_size, self.num_samples)
            if self.world_size > 1:  # this process's slice of the global batch
                size = hi - lo
                lo, hi = lo + size * self.rank // self.world_size, lo + size * (self.rank + 1) // self.world_size
            yield Slot(lo, hi, None if order is None else order[lo:hi], None if draws is None else draws[lo:hi])

    def gather(self, slot: Slot) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of ``slot``: images gathered, augmented and normalised, and their labels (all on the device)."""
        if slot.index is None:
            images, labels = self.images[slot.lo:slot.hi], self.labels[slot.lo:slot.hi]
        else:
            # index_select, not images[index]: on CPU advanced indexing is ~20x slower here.
            images, labels = self.images.index_select(0, slot.index), self.labels.index_select(0, slot.index)
        if slot.draws is not None:
            images = self._augment(images, slot.draws)
        return self._normalise(images), labels

    def _augment_draws(self, epoch: int, count: int) -> torch.Tensor:
        """Per position in the epoch: ``[mirror, row offset, column offset]`` as an int64 ``[count, 3]``."""
        generator = seeded_generator(self.seed, epoch, "augment")
        pad = CROP_PADDING if "crop" in self.augment else 0
        draws = torch.zeros(count, 3, dtype=torch.int64)
        if "flip" in self.augment:
            draws[:, 0] = torch.randint(0, 2, (count,), generator=generator)
        if pad:
            draws[:, 1:] = torch.randint(0, 2 * pad + 1, (count, 2), generator=generator)
        return draws.to(self.device)

    def _augment(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Random crop of the zero-padded batch and random horizontal flip, as one batched selection.

        The padded batch and its mirror image are stacked; every crop of either is a view of
        ``unfold``, and each sample picks its own (mirror, row, column) window in one indexing op.
        """
        _, _, height, width = images.shape
        if "crop" in self.augment:
            pad = CROP_PADDING
            images = F.pad(images, (pad, pad, pad, pad))
        if "flip" in self.augment:
            images = torch.stack([images, images.flip(3)], 1)
        else:
            images = images.unsqueeze(1)
        windows = images.unfold(3, height, 1).unfold(4, width, 1)  # [B, mirror, C, row, col, H, W]
        batch = torch.arange(images.shape[0], device=images.device)
        return windows[batch, draws[:, 0], :, draws[:, 1], draws[:, 2]]

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return torch.addcmul(-self._shift, images.float(), self._scale)


def iterate_eval(
    data: ImageSet,
    batch_size: int,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    device: torch.device | str,
    *,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream a whole split once, in order, unaugmented; keep a :class:`DeviceLoader` to evaluate repeatedly."""
    loader = DeviceLoader(
        data, batch_size, mean=mean, std=std, device=device, shuffle=False, drop_last=False, channels_last=channels_last
    )
    return loader.epoch(0)


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 ``[N, C, H, W]`` images in [0, 1] units (via histograms)."""
    channels = images.shape[1]
    hist = torch.zeros(channels, 256, dtype=torch.float64)
    for part in images.split(chunk):
        for c in range(channels):
            hist[c] += torch.bincount(part[:, c].reshape(-1), minlength=256).cpu().double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = hist.sum(1)
    mean = (hist * values).sum(1) / total
    var = (hist * values**2).sum(1) / total - mean**2
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())
