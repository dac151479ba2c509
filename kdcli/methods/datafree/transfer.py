"""What the data-free methods share: distilling from a synthetic transfer set, and training a generator.

Two families, both driven by the engine's one loop (``needs_data = False``, so the training split is
never loaded):

* :class:`TransferSetDistill`: ZSKD, Lopes et al., DeepInversion. The transfer set is synthesised on
  the device in :meth:`~TransferSetDistill.prepare` (or loaded with ``synthetic=DIR``), kept there,
  and each step distils on one shuffled batch of it: the teacher's soft targets at T, T² scaling.
  ``kd synthesize`` calls their :meth:`~TransferSetDistill.synthesize` directly.
* :class:`GeneratorDistill`: DAFL, ZSKT. A generator and the student train together; the method
  steps its own two optimizers (``manual_optimization``). ``kd synthesize`` trains them on the
  engine, then samples the generator. ``--precision auto`` means fp32 for them, on CUDA too
  (``auto_precision``); ``--precision bf16`` still asks for mixed precision.

Both write their by-products into the run through ``write_artifacts`` (the synthetic set and its
``samples.png``, or ``generator.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcli import progress
from kdcli.checkpoint import save_model
from kdcli.data import synthetic
from kdcli.data.loader import seeded_generator
from kdcli.data.synthetic import SyntheticSet
from kdcli.device import Timer, autocast, resolve_precision
from kdcli.errors import KDError
from kdcli.methods.base import Batch, Method, MethodContext, Preset, agreement
from kdcli.methods.losses import kd_loss

SHIFT_PADDING = 2  # pixels a transfer-set image may move when --augment includes crop
STUDENT = "lenet5-half"  # the data-free papers' MNIST student: every data-free preset's default --model
#: The student schedule of the transfer-set methods' ``quick`` digits entries (ZSKD, Lopes, DeepInversion):
#: a small synthetic set, many cheap student epochs, ~20 s on one CPU thread with the default ResNet-20 teacher.
DIGITS_STUDENT = {"epochs": 30, "batch_size": 64, "optimizer": "adam", "lr": 5e-3, "weight_decay": 0.0}


def with_student(presets: dict[str, Preset]) -> dict[str, Preset]:
    """A data-free method's presets, each entry starting from the default student (``--model`` still wins)."""
    return {name: {dataset: {"model": STUDENT, **values} for dataset, values in table.items()}
            for name, table in presets.items()}


def distill_step(student: nn.Module, teacher: nn.Module, images: torch.Tensor, temperature: float,
                 ) -> dict[str, torch.Tensor]:
    """Hinton KD on ``images`` with the teacher's soft targets at T (T² scaling). Parts: ``loss``, ``agree``."""
    with torch.no_grad():
        teacher_logits = teacher(images)
    student_logits = student(images)
    return {"loss": kd_loss(student_logits, teacher_logits, temperature),
            "agree": agreement(student_logits, teacher_logits)}


def student_for(ctx: MethodContext) -> nn.Module:
    return ctx.create_model()


def shift_flip(pixels: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched random translation by up to ``pad`` pixels (zero fill) and optional horizontal flip."""
    b, _, h, w = pixels.shape
    dev = pixels.device
    if pad:
        padded = F.pad(pixels, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
        rows = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator).to(dev) + torch.arange(h, device=dev)
        cols = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator).to(dev) + torch.arange(w, device=dev)
        batch = torch.arange(b, device=dev)[:, None, None]
        pixels = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mirror = (torch.rand(b, generator=generator) < 0.5).to(dev)
        pixels = torch.where(mirror[:, None, None, None], pixels.flip(3), pixels)
    return pixels


class TransferSetDistill(Method):
    """Distil on a synthetic transfer set kept on the device. Loss parts: ``loss`` (= ``soft``), ``agree``.

    Subclasses implement :meth:`synthesize` (``n`` impressions on the device, in batches) and may
    override :meth:`check_teacher` (refuse a teacher the method cannot invert; called when the method
    is built, before any work).
    """

    needs_data: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True
    primary: ClassVar[str] = "student"
    synthesis: ClassVar[str] = "inputs"

    @classmethod
    def resolve_params(cls, params: Any, ctx: MethodContext) -> Any:
        """A ``--synthetic`` folder must be a set before the run starts (it is read in :meth:`prepare`)."""
        if params.synthetic:
            synthetic.read_description(params.synthetic)
        return params

    @classmethod
    def needs(cls, params: Any) -> dict[str, frozenset[str]]:
        """Distilling from a given ``--synthetic`` set asks only logits of the teacher."""
        needs = super().needs(params)
        return {**needs, "teacher": frozenset()} if params.synthetic else needs

    def __init__(self, ctx: MethodContext, params: Any) -> None:
        super().__init__(ctx, params)
        self.student = student_for(ctx)
        if not params.synthetic:
            if params.n <= 0:
                raise KDError(f"-n must be positive (got {params.n})")
            self.check_teacher()
        self.batch_size = ctx.config.train.batch_size
        augment = ctx.info.augment if ctx.config.data.augment == "auto" else ctx.config.data.augment
        self.shift = SHIFT_PADDING if "crop" in augment else 0
        self.flip = "flip" in augment
        self.transfer: SyntheticSet | None = None
        self._order: torch.Tensor | None = None

    # -- what a subclass provides ------------------------------------------------------------------
    def check_teacher(self) -> None:
        """Raise KDError if this teacher cannot be used."""

    def synthesize(self, n: int) -> SyntheticSet:
        raise NotImplementedError

    # -- the engine's side -----------------------------------------------------------------------
    def prepare(self) -> None:
        """Synthesise the transfer set (or read ``synthetic=DIR``) and keep it on the device."""
        ctx, params = self.ctx, self.params
        if params.synthetic:
            data, self.origin = synthetic.read_set(params.synthetic)
            expected = [ctx.info.channels, ctx.info.image_size, ctx.info.image_size]
            if list(data.images.shape[1:]) != expected or data.soft_targets.shape[1] != ctx.info.num_classes:
                raise KDError(
                    f"synthetic set {params.synthetic} holds {list(data.images.shape[1:])} images of "
                    f"{data.soft_targets.shape[1]} classes; this teacher needs {expected} and {ctx.info.num_classes}"
                )
            self.made_here = False
        else:
            torch.manual_seed(ctx.config.train.seed)
            with Timer(ctx.device) as timer:
                data = self.synthesize(params.n)
            self.origin = {
                "method": self.name,
                "synthesis_s": round(timer.seconds, 3),
                "samples_per_s": round(len(data) / max(timer.seconds, 1e-9), 2),
            }
            self.made_here = True
        self.transfer = data
        self.batch_size = min(ctx.config.train.batch_size, len(data))
        # the set lives on the device as float16 pixels: uint8 sets convert exactly enough (< 1e-3)
        self.register_buffer("pixels", data.pixels().to(ctx.device, torch.float16), persistent=False)

    def steps_per_epoch(self) -> int | None:
        return len(self.transfer) // self.batch_size

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        order = torch.randperm(
            len(self.transfer), generator=seeded_generator(self.ctx.config.train.seed, epoch, "transfer")
        )
        self._order = order.to(self.pixels.device)

    def next_batch(self, step: int) -> torch.Tensor:
        """Normalised images of this step's batch (position ``step`` in the epoch's order), augmented."""
        at = step % self.steps_per_epoch()
        index = self._order[at * self.batch_size : (at + 1) * self.batch_size]
        pixels = self.pixels.index_select(0, index).float()
        if self.shift or self.flip:
            pixels = shift_flip(
                pixels, self.shift, self.flip, seeded_generator(self.ctx.config.train.seed, step, "shift")
            )
        return synthetic.normalise(pixels, self.ctx.info.mean, self.ctx.info.std)

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        return distill_step(self.student, self.teacher, self.next_batch(step), self.params.temperature)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def write_artifacts(self, run_dir: Path) -> dict[str, Any]:
        """Keep the transfer set with the run (``synthetic/``) and its preview as ``samples.png``."""
        info = self.ctx.info
        synthetic.write_samples_png(
            run_dir / synthetic.SAMPLES_FILE, self.transfer.pixels(), self.transfer.classes, info.num_classes,
            info.class_names,
        )
        if not self.made_here:
            return {"synthetic": str(Path(self.params.synthetic).resolve()), "samples": synthetic.SAMPLES_FILE}
        description = {
            "method": self.name,
            "params": vars(self.params),
            "dataset": info.to_dict(),
            "seed": self.ctx.config.train.seed,
            "device": str(self.ctx.device),
            **self.origin,
        }
        synthetic.write_set(run_dir / "synthetic", self.transfer, description, info.num_classes, self.synthesis_dtype)
        return {
            "synthetic": "synthetic",
            "samples": synthetic.SAMPLES_FILE,
            "synthesis_s": self.origin["synthesis_s"],
            "samples_per_s": self.origin["samples_per_s"],
        }


def optimise_pixels(
    ctx: MethodContext,
    init: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, slice], torch.Tensor],
    *,
    iterations: int,
    lr: float,
    chunk: int,
    project: Callable[[torch.Tensor], torch.Tensor],
    description: str,
    warm_from: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adam on the pixels of ``init`` ``[N, C, H, W]``, ``chunk`` impressions at a time on the device.

    ``loss_fn(normalised_images, rows)`` returns one loss per impression (``rows`` says which), so the
    impressions of a chunk are independent and the chunk size only sets speed. After every step the
    pixels are mapped by ``project`` (clamp or rescale to [0, 1]). Returns float pixels on the CPU.

    ``warm_from`` (``[N]`` indices, −1 for none) warm-starts impression ``i`` from the *optimised* impression
    ``warm_from[i]`` instead of ``init[i]``; that one must lie in an earlier chunk (chunks run in order).
    Each chunk starts a fresh Adam.
    """
    device = ctx.device
    dtype = resolve_precision(ctx.config.train.precision, device)
    out = torch.empty_like(init)
    n = init.shape[0]
    with progress.track(description, n * iterations) as tracker:
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            x0 = init[rows].clone()
            if warm_from is not None:
                source = warm_from[rows]
                warm = source >= 0
                if bool((source[warm] >= start).any()):
                    raise ValueError("optimise_pixels: warm_from must point into an earlier chunk")
                x0[warm] = out[source[warm]]
            x = x0.to(device).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            for it in range(iterations):
                with autocast(device, dtype):
                    loss = loss_fn(synthetic.normalise(x, ctx.info.mean, ctx.info.std), rows).float().sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.copy_(project(x))
                if (it + 1) % 50 == 0 or it + 1 == iterations:
                    tracker.advance((rows.stop - rows.start) * (50 if (it + 1) % 50 == 0 else (it + 1) % 50))
            out[rows] = x.detach().cpu()
    return out


def finish_set(ctx: MethodContext, pixels: torch.Tensor, classes: torch.Tensor) -> SyntheticSet:
    """Quantise to uint8 (what is stored) and record the teacher's soft targets on exactly those images."""
    images = synthetic.to_uint8(pixels)
    targets = synthetic.soft_targets(ctx.teacher, images.float() / 255.0, ctx.info.mean, ctx.info.std)
    return SyntheticSet(images, targets, classes.long())


class GeneratorDistill(Method):
    """A generator and the student trained together (DAFL, ZSKT); the method steps both optimizers.

    Subclasses build ``self.generator`` and ``self.student`` and implement ``training_step``.
    """

    needs_data: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True
    primary: ClassVar[str] = "student"
    synthesis: ClassVar[str] = "generator"
    synthesis_dtype: ClassVar[str] = "float16"  # generator output is not confined to the pixel range
    #: fp32 unless ``--precision bf16`` is asked: both papers ran fp32, and no measured row shows bf16 autocast
    #: leaves a generator method's result unchanged (the adversarial/activation losses feed the generator).
    auto_precision: ClassVar[str] = "fp32"
    generator: nn.Module

    @property
    def manual_optimization(self) -> bool:
        return True

    def steps_per_epoch(self) -> int | None:
        return self.params.iterations

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def latent(self) -> torch.Tensor:
        return torch.randn(self.ctx.config.train.batch_size, self.params.latent_dim, device=self.ctx.device)

    @torch.no_grad()
    def synthesize(self, n: int) -> SyntheticSet:
        """``n`` generator samples, drawn in training-size batches with the generator in train mode
        (its BatchNorms use batch statistics, as during training); class = the teacher's argmax."""
        dtype = resolve_precision(self.ctx.config.train.precision, self.ctx.device)
        buffers = {k: v.clone() for k, v in self.generator.named_buffers()}  # BN running stats: left as trained
        self.generator.train()
        pixels, targets = [], []
        batch = self.ctx.config.train.batch_size
        with progress.track("sample generator", n) as tracker:
            for start in range(0, n, batch):
                with autocast(self.ctx.device, dtype):
                    images = self.generator(self.latent())[: n - start].float()
                    logits = self.teacher(images).float()
                pixels.append(synthetic.to_pixels(images, self.ctx.info.mean, self.ctx.info.std).cpu())
                targets.append(torch.softmax(logits, 1).cpu())
                tracker.advance(images.shape[0])
        for name, value in self.generator.named_buffers():
            value.copy_(buffers[name])
        soft = torch.cat(targets)
        return SyntheticSet(torch.cat(pixels), soft, soft.argmax(1))

    def synthesis_files(self, folder: Path) -> dict[str, str]:
        """The trained generator as ``generator.safetensors`` (rebuilt by ``kdcli.models.generator.load_generator``)."""
        save_model(folder / "generator.safetensors", self.generator, "generator", self.ctx.info.to_dict())
        return {"generator": "generator.safetensors"}

    def write_artifacts(self, run_dir: Path) -> dict[str, Any]:
        """The trained generator and a preview of its samples as ``samples.png``."""
        files = self.synthesis_files(run_dir)
        info = self.ctx.info
        rows = info.num_classes * synthetic.SAMPLES_PER_CLASS * 4
        preview = self.synthesize(min(max(rows, self.ctx.config.train.batch_size), 4096))
        synthetic.write_samples_png(
            run_dir / synthetic.SAMPLES_FILE, preview.pixels(), preview.classes, info.num_classes, info.class_names
        )
        return {**files, "samples": synthetic.SAMPLES_FILE}
