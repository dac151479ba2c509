"""Data-free distillation (`kd distill-datafree`, `kd synthesize`): a student from a teacher run alone.

Registration order is the order `kd` lists them (and the first is each command's default method).
"""

# isort: off
from kdcli.methods.datafree import dafl, zskt, zskd, lopes, deepinversion, noise  # noqa: F401  (each registers itself, in this order)
# isort: on
