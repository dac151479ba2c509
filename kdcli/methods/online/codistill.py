"""Codistillation: Anil, Pereyra, Passos, Ormandi, Dahl, Hinton, "Large scale distributed neural network
training through online distillation" (ICLR 2018, arXiv:1804.03235).

n copies of a model train at once, each on its own data shard. Every K steps the copies exchange
weights into frozen, *stale* copies of each other; after a burn-in, each copy also learns to match
the average prediction of the stale copies of the others on its own batch. The exchange is rare
and cheap, which is the point: each copy can be its own worker (group).

In kd a copy is a torch.distributed rank, or a group of ranks training it data-parallel, when the
command runs under ``torchrun``; the exchange is one ``all_gather``. Without torchrun one process
holds every copy and does the same arithmetic, so a 2-process run and a 1-process run of the
same seed log the same losses (within float rounding).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdcli import distributed
from kdcli.config import Range, RunConfig, at_least, positive
from kdcli.distributed import World
from kdcli.errors import KDError
from kdcli.methods.base import Batch, MethodContext, Preset, accuracy, build_optimizer, register_method
from kdcli.methods.losses import kd_loss, mean_probability_logits
from kdcli.methods.online.common import QUICK, PeerMethod, build_peers, check_count, paper_preset
from kdcli.models.fused import FusedModels

SHARDS = ("disjoint", "shared")


@dataclass
class CodistillParams:
    """Codistillation hyperparameters (kd defaults sized for short runs; the paper exchanges rarely
    on very long ones, so scale ``exchange_every`` and ``burn_in`` with the run length).

    Attributes:
        peers: number of copies n. Default: 2 in one process; one per rank under torchrun. With
            w processes and n copies, each copy trains on w/n ranks (w must be a multiple of n).
        exchange_every: K, steps between weight exchanges into the stale copies.
        burn_in: steps of plain cross-entropy before the distillation term switches on; the first
            exchange happens at this step, so the stale copies are fresh when it does.
        distill_weight: weight of the distillation term (0 = independent copies, same data).
        temperature: T of the distillation term (scaled by T²); the paper distils at T = 1.
        shard: ``disjoint``, each copy trains on its own fixed 1/n of the training split (the
            paper's setting); ``shared``, every copy sees the same batches.
    """

    peers: int | None = None
    exchange_every: int = 50
    burn_in: int = 100
    distill_weight: float = 1.0
    temperature: float = 1.0
    shard: str = "disjoint"


def copies_and_group(params: CodistillParams, config: RunConfig, world: World) -> tuple[int, int]:
    """(number of copies n, ranks per copy g)."""
    if config.models and params.peers is not None and params.peers != len(config.models):
        raise KDError(f"--peers {params.peers} disagrees with --models ({len(config.models)} names); give one")
    default = world.world_size if world.distributed else 2
    n = len(config.models) if config.models else (params.peers or default)
    check_count("codistill", "copies", n)
    if not world.distributed:
        return n, 1
    if world.world_size % n:
        raise KDError(f"codistill with {n} copies needs a multiple of {n} processes (got {world.world_size}); "
                      "set --peers")
    return n, world.world_size // n


@register_method("codistill", command="distill-online",
                 help="Anil et al. 2018 codistillation: copies on ranks, stale weight exchange every K steps")
class Codistill(PeerMethod):
    """Loss of copy i: ``CE(y, z_i) + w · T²·KL(mean_{j≠i} σ(ẑ_j/T) ‖ σ(z_i/T))`` with ẑ_j the stale copy j
    (the second term only from step ``burn_in`` on). ``loss`` is the sum over copies; each copy's
    gradient is its own term. Parts: ``ce``, ``distill``, ``acc`` (means over copies), ``distill_on``,
    ``exchanged`` (1 on an exchange step) and ``exchange_ms`` (wall time of the exchange).

    ``--preset paper`` follows Anil et al. 2018 in what the method is: 2 copies, each on its own
    disjoint shard of the data, distilling at T = 1 with weight 1 toward the mean prediction of *stale*
    copies of the others, refreshed by rare weight exchanges, after a burn-in of plain cross-entropy. It
    does not follow their scale: they trained ImageNet ResNet-50s and Common Crawl language models with
    each copy on its own group of many GPUs, and report no CIFAR table, so no published number belongs
    to this preset. kd's choices, stated: ResNet-32 copies with the online papers' CIFAR schedule (300
    epochs, batch 128 per copy, SGD Nesterov 0.9, lr 0.1 ÷10 at 150/225, weight decay 5e-4, fp32, all
    training images), a weight exchange every 50 steps and a burn-in of 2000 steps (scaled with
    ``--epochs``). Its matched baseline is the same command with ``--distill-weight 0`` (same shards,
    same initialisation, same data order): an ``independent`` run sees all the data with every peer.
    """

    Params = CodistillParams
    param_ranges: ClassVar[dict[str, Range]] = {"peers": positive(), "exchange_every": positive(), "burn_in": at_least(0),
                                                   "distill_weight": at_least(0.0), "temperature": positive()}
    data_parallel = False  # copies differ between ranks: the exchange and consolidate() are the collectives
    presets: ClassVar[dict[str, Preset]] = {
        "quick": QUICK,
        "paper": paper_preset(300, 128, [150, 225], 5e-4, nesterov=True, scaled=("burn_in",), peers=2,
                              shard="disjoint", temperature=1.0, distill_weight=1.0, exchange_every=50,
                              burn_in=2000),
    }
    preset_notes: ClassVar[dict[str, str]] = {
        "paper": "Anil et al. 2018's algorithm at CIFAR scale; no published number (the paper has no CIFAR "
                 "table). From the paper: 2 copies, each on its own disjoint shard, distilling at T 1 with "
                 "weight 1 toward the mean prediction of stale copies of the others, refreshed by rare weight "
                 "exchanges, after a burn-in of plain training. kd's choices: ResNet-32 copies with the online "
                 "papers' CIFAR schedule (300 epochs, batch 128 per copy, SGD Nesterov, lr 0.1 ÷10 at 150/225, "
                 "wd 5e-4, fp32, all training images), an exchange every 50 steps, a burn-in of 2000 steps "
                 "(scaled with --epochs). The paper ran ImageNet and Common Crawl with each copy on its own "
                 "group of many GPUs.",
    }

    @classmethod
    def budget_terms(cls, params: CodistillParams, config: RunConfig) -> dict[str, Any]:
        """Disjoint shards: each copy sees 1/n of every epoch's data, which no `independent` run does."""
        terms = super().budget_terms(params, config)
        if params.shard == "disjoint":
            terms["data_per_member"] = f"1/{terms['members']} (disjoint shards)"
        return terms

    @classmethod
    def resolve_params(cls, params: CodistillParams, ctx: MethodContext) -> CodistillParams:
        """The resolved copy count is recorded, so a run resumed with another number of processes keeps its copies."""
        if params.shard not in SHARDS:
            raise KDError(f"--shard must be one of {', '.join(SHARDS)} (got {params.shard!r})")
        if params.exchange_every < 1 or params.burn_in < 0:
            raise KDError("--exchange-every must be ≥ 1 and --burn-in ≥ 0")
        copies, _ = copies_and_group(params, ctx.config, ctx.world)
        return replace(params, peers=copies)

    def __init__(self, ctx: MethodContext, params: CodistillParams) -> None:
        super().__init__(ctx, params)
        world = ctx.world
        self.copies, self.group_size = copies_and_group(params, ctx.config, world)
        archs = list(ctx.config.models) or [ctx.config.model] * self.copies
        # Every rank builds every copy from the same seed, so copy i starts identical everywhere
        # and a checkpoint holds the same tensors whether 1 or n processes wrote it.
        self.peers = build_peers(ctx, archs)
        self.stale = copy.deepcopy(self.peers)
        for p in self.stale.parameters():
            p.requires_grad_(False)
        self.register_buffer("exchanges", torch.zeros((), dtype=torch.int64))
        self.own = [world.rank // self.group_size] if world.distributed else list(range(self.copies))
        self._group = None
        if world.distributed and self.group_size > 1:
            # Every rank creates every group, in the same order (torch.distributed's rule).
            for c in range(self.copies):
                members = list(range(c * self.group_size, (c + 1) * self.group_size))
                group = torch.distributed.new_group(members)
                if c == self.own[0]:
                    self._group = group

    @classmethod
    def data_shard(cls, params: CodistillParams, config: RunConfig, world: World) -> "distributed.Shard":
        """``--batch-size`` is per copy. Disjoint: the global batch holds one chunk of each copy's
        partition, rank r reads its copy's chunk (or its 1/g of it); shared: the copies' ranks
        split one batch the same way in every copy."""
        if params.shard not in SHARDS:
            raise KDError(f"--shard must be one of {', '.join(SHARDS)} (got {params.shard!r})")
        n, g = copies_and_group(params, config, world)
        batch = config.train.batch_size
        if batch % g:
            raise KDError(f"--batch-size {batch} must be divisible by the {g} ranks that train each copy")
        if params.shard == "disjoint":
            return distributed.Shard(n * batch, n, world.rank, world.world_size)
        return distributed.Shard(batch, 1, world.rank % g, g)

    # -- training ---------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer per copy (a rank steps only its own; the others hold the gathered state); one for
        all of them when they run fused in one process."""
        if isinstance(self.peers, FusedModels):
            return [build_optimizer(self.ctx.config.optim, list(self.peers.parameters()))]
        optimizers = [build_optimizer(self.ctx.config.optim, list(peer.parameters())) for peer in self.peers]
        if self._group is not None:
            distributed.install_gradient_sync([optimizers[self.own[0]]], self._group)
        return optimizers

    def train(self, mode: bool = True) -> "Codistill":
        super().train(mode)
        self.stale.eval()  # stale copies are teachers: running statistics, never updated
        return self

    def training_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        p = self.params
        exchanged = step >= p.burn_in and (step - p.burn_in) % p.exchange_every == 0
        exchange_ms = self._exchange() if exchanged else 0.0
        active = step >= p.burn_in and p.distill_weight > 0
        if isinstance(self.peers, FusedModels):
            losses, ces, distills, accs = self._fused_terms(images, labels, active)
        else:
            losses, ces, distills, accs = self._terms(images, labels, active)
        loss = torch.stack(losses).sum()
        if self.ctx.world.distributed:
            # The engine averages logged values over ranks; the sum over copies is n × the mean.
            # Gradient: this copy's term alone, exactly as in one process.
            loss = loss + (loss.detach() * (self.copies - 1))
        return {
            "loss": loss,
            "ce": torch.stack(ces).mean(),
            "distill": torch.stack(distills).mean(),
            "acc": torch.stack(accs).mean(),
            # host-side numbers stay on the CPU: copying them to a GPU every step would sync it
            "distill_on": torch.tensor(float(active)),
            "exchanged": torch.tensor(float(exchanged)),
            "exchange_ms": torch.tensor(exchange_ms),
        }

    def _terms(self, images: torch.Tensor, labels: torch.Tensor, active: bool) -> tuple[list[torch.Tensor], ...]:
        """Per own copy: (loss, ce, distill, acc), one copy (and one stale copy) at a time."""
        p = self.params
        if self.ctx.world.distributed or p.shard == "shared":
            inputs = [(images, labels)] * len(self.own)
        else:
            inputs = list(zip(images.chunk(self.copies), labels.chunk(self.copies)))
        stale_cache: dict[int, torch.Tensor] = {}
        losses, ces, distills, accs = [], [], [], []
        for i, (x, y) in zip(self.own, inputs):
            logits = self.peers[i](x)
            ce = F.cross_entropy(logits, y)
            distill = torch.zeros((), device=logits.device)
            if active:
                with torch.no_grad():
                    others = []
                    for j in range(self.copies):
                        if j == i:
                            continue
                        if p.shard == "shared" and j in stale_cache:
                            others.append(stale_cache[j])
                            continue
                        out = self.stale[j](x).float()
                        stale_cache[j] = out
                        others.append(out)
                    target = _mean_target_logits(torch.stack(others), p.temperature)
                distill = kd_loss(logits, target, p.temperature)
            losses.append(ce + p.distill_weight * distill)
            ces.append(ce.detach())
            distills.append(distill.detach())
            accs.append(accuracy(logits.detach(), labels=y))
        return losses, ces, distills, accs

    def _fused_terms(self, images: torch.Tensor, labels: torch.Tensor,
                     active: bool) -> tuple[list[torch.Tensor], ...]:
        """The same terms with every copy in one pass of the fused copies (one process holds them all), and
        every stale copy in one pass over the whole batch (each copy then reads its own chunk's rows)."""
        p, n = self.params, self.copies
        if p.shard == "shared":
            logits = self.peers(images)  # [n, B, C]: every copy on the same batch
            targets_y = labels.expand(n, -1)
        else:
            logits = self.peers(images.unflatten(0, (n, -1)), per_model=True)  # copy i on chunk i
            targets_y = labels.view(n, -1)
        ces = F.cross_entropy(logits.flatten(0, 1), targets_y.flatten(), reduction="none").view(n, -1).mean(1)
        distills = [torch.zeros((), device=logits.device)] * n
        if active:
            with torch.no_grad():
                stale = self.stale(images).float()  # [n (stale copy j), B, C]
                per_chunk = stale.unsqueeze(1).expand(n, n, *stale.shape[1:]) if p.shard == "shared" else \
                    stale.unflatten(1, (n, -1))  # [j, i, rows of copy i's chunk, C]
                targets = [_mean_target_logits(torch.cat([per_chunk[:i, i], per_chunk[i + 1:, i]]), p.temperature)
                           for i in range(n)]
            distills = [kd_loss(logits[i], targets[i], p.temperature) for i in range(n)]
        losses = [ces[i] + p.distill_weight * distills[i] for i in range(n)]
        accs = [accuracy(logits[i].detach(), labels=targets_y[i]) for i in range(n)]
        return losses, list(ces.detach()), [d.detach() for d in distills], accs

    @torch.no_grad()
    def _exchange(self) -> float:
        """Refresh every stale copy from the live copies; returns the wall time in milliseconds."""
        sync = torch.cuda.synchronize if self.ctx.device.type == "cuda" else (lambda: None)
        sync()
        started = time.perf_counter()
        if self.ctx.world.distributed:
            self._gather_copies(self.stale, "codistillation weight exchange")
        else:
            # the same keys, fused or not: copy i's tensors (views into the fused ones) in the same order
            for target, source in zip(distributed.module_state(self.stale), distributed.module_state(self.peers)):
                target.copy_(source)
        sync()
        self.exchanges += 1
        return (time.perf_counter() - started) * 1000.0

    def _gather_copies(self, into: nn.ModuleList, what: str) -> None:
        """One all_gather: every rank sends its copy's weights and buffers; copy j comes from rank j·g."""
        own_state = distributed.module_state(self.peers[self.own[0]])
        lengths = [sum(t.numel() for t in distributed.module_state(peer)) for peer in self.peers]
        gathered = distributed.all_gather_padded(distributed.flatten(own_state), max(lengths), what)
        for j, module in enumerate(into):
            distributed.unflatten_into(gathered[j * self.group_size], distributed.module_state(module))

    def prepare_distributed(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Nothing to broadcast: every rank built every copy from the same seed; a copy trained by several
        ranks averages its gradients within its group (installed with its optimizer)."""

    def consolidate(self) -> None:
        """Before evaluation and checkpoints: every rank gets every copy's weights and optimizer state,
        so rank 0 scores and saves the whole job (the same tensors a 1-process run saves)."""
        if not self.ctx.world.distributed:
            return
        own = self.own[0]
        if self._group is not None:
            distributed.average_buffers(self.peers[own], self._group)
        self._gather_copies(self.peers, "codistillation state gather")
        states = distributed.all_gather_object(self.optimizers()[own].state_dict(), "optimizer state gather")
        for j, opt in enumerate(self.optimizers()):
            if j != own:
                opt.load_state_dict(states[j * self.group_size])


def _mean_target_logits(stale_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits whose softmax at ``temperature`` is the mean of the stale copies' softmaxes at it.

    ``[n−1, B, C] → [B, C]``; with one other copy this is its logits up to a constant.
    """
    return temperature * mean_probability_logits(stale_logits / temperature)

