"""Online distillation (`kd distill-online`): peers or branches trained together, no pre-trained teacher.

Registration order is the order `kd` lists them (and the first is the command's default method).
"""

# isort: off
from kdcli.methods.online import dml, cl, one, okddip, independent, codistill  # noqa: F401  (each registers itself, in this order)
# isort: on
