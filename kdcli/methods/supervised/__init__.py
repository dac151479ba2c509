"""Methods that read the labelled training data: supervised training (teachers) and Hinton KD."""

from kdcli.methods.supervised import cross_entropy, hinton  # noqa: F401  (each registers itself)
