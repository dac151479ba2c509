"""kd: knowledge distillation for image classifiers, from the command line."""

__version__ = "0.1.0"
