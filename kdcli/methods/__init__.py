"""Method registry: name → Method class. Feeds the CLI's choices, `kd list methods` and the tests."""

from __future__ import annotations

from kdcli.methods.base import Method, MethodContext, World, build_optimizer, make_params
from kdcli.methods.kd import HintonKD
from kdcli.methods.supervised import Supervised
from kdcli.registry import Registry

METHODS: Registry = Registry("method")
METHODS.add("supervised", Supervised, help="cross-entropy on labels (kd train-teacher)", command="train-teacher")
METHODS.add("kd", HintonKD, help="Hinton et al. 2015 soft targets at T (kd distill)", command="distill")

__all__ = ["METHODS", "Method", "MethodContext", "World", "build_optimizer", "make_params"]
from kdcli.methods import datafree_registry  # noqa: E402,F401
from kdcli.methods import online_registry  # noqa: E402,F401
from kdcli.methods import codistill as _codistill  # noqa: E402,F401
