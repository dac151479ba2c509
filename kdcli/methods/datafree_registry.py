"""Registers the data-free methods (``kd distill-datafree`` / ``kd synthesize``) and resolves their presets."""

from __future__ import annotations

from typing import Any

from kdcli.errors import KDError
from kdcli.methods import METHODS
from kdcli.methods.dafl import DAFL
from kdcli.methods.deepinversion import DeepInversion
from kdcli.methods.lopes import Lopes
from kdcli.methods.noise import NoiseDistill
from kdcli.methods.zskd import ZSKD
from kdcli.methods.zskt import ZSKT

DATAFREE = ("dafl", "zskt", "zskd", "lopes", "deepinversion", "noise")
SYNTHESIZERS = ("zskd", "lopes", "deepinversion", "dafl", "zskt")
PRESETS = ("quick", "paper")

METHODS.add(
    "dafl",
    DAFL,
    help="Chen et al. 2019: generator vs fixed teacher (one-hot, activation, entropy)",
    command="distill-datafree",
)
METHODS.add(
    "zskt",
    ZSKT,
    help="Micaelli & Storkey 2019: adversarial generator, KL + attention transfer",
    command="distill-datafree",
)
METHODS.add("zskd", ZSKD, help="Nayak et al. 2019: Dirichlet data impressions at T=20", command="distill-datafree")
METHODS.add(
    "lopes",
    Lopes,
    help="Lopes et al. 2017: reconstructions from recorded activation statistics",
    command="distill-datafree",
)
METHODS.add(
    "deepinversion",
    DeepInversion,
    help="Yin et al. 2020: BatchNorm-statistics inversion + TV/L2 priors",
    command="distill-datafree",
)
METHODS.add(
    "noise",
    NoiseDistill,
    help="baseline: KD on Gaussian noise inputs (what every data-free method must beat)",
    command="distill-datafree",
)


def preset_values(method: str, preset: str, dataset: str) -> dict[str, Any]:
    """A method's preset for a dataset (the dataset's own entry, else ``*``), as config overrides."""
    if preset not in PRESETS:
        raise KDError(f"unknown --preset {preset!r}; valid: {', '.join(PRESETS)}")
    entry, _ = METHODS.resolve(method)
    table = getattr(entry.builder, "PRESETS", {}).get(preset, {})
    values = table.get(dataset, table.get("*", {}))
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
