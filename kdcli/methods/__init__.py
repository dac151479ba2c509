"""Every training method, grouped by what it learns from, and the registry that names them.

* :mod:`kdcli.methods.supervised`: the labelled training data (supervised teachers, Hinton KD);
* :mod:`kdcli.methods.online`: peers or branches trained together, no pre-trained teacher;
* :mod:`kdcli.methods.datafree`: a teacher alone, never the training data.

Importing this package registers them all in :data:`METHODS`; the contract they implement is
:class:`kdcli.methods.base.Method`.
"""

# isort: off
from kdcli.methods import supervised, datafree, online  # noqa: F401  (each registers itself, in this order)
# isort: on
from kdcli.methods.base import DEFAULT_PRESET, METHODS, Method, MethodContext, register_method

__all__ = ["DEFAULT_PRESET", "METHODS", "Method", "MethodContext", "register_method"]
