"""Registers the online methods of `kd distill-online` (PAPERS.md, online section) in METHODS."""

from __future__ import annotations

from kdcli.methods import METHODS
from kdcli.methods.cl import CL
from kdcli.methods.dml import DML
from kdcli.methods.independent import Independent
from kdcli.methods.okddip import OKDDip
from kdcli.methods.one import ONE

COMMAND = "distill-online"

METHODS.add("dml", DML, help="Deep Mutual Learning, Zhang et al. 2018: K peers mimic each other", command=COMMAND)
METHODS.add("cl", CL, help="Collaborative Learning (CL-ILR), Song & Chai 2018: heads on a shared trunk",
            command=COMMAND)
METHODS.add("one", ONE, help="On-the-fly Native Ensemble, Lan et al. 2018: gated branches teach each branch",
            command=COMMAND)
METHODS.add("okddip", OKDDip, help="Online KD with Diverse Peers, Chen et al. 2020: attention peers + leader",
            command=COMMAND)
METHODS.add("independent", Independent, help="baseline: the same K peers with no distillation term",
            command=COMMAND)
