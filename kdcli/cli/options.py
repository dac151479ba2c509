"""Every option of every kd command, declared once; :func:`command` gives a command the ones it takes,
and :meth:`Options.api_kwargs` is the one function that hands them to :mod:`kdcli.api` (which resolves
the run's config with :func:`kdcli.presets.resolve_config`): the CLI is a thin layer over the Python API.

Every option defaults to ``None`` so that "not given" can be told apart from a value: the config is
resolved as defaults < the method's preset < ``--config`` TOML < flags (:mod:`kdcli.presets`). What a
command's ``--help`` shows as each option's default is read from the catalogue (:mod:`kdcli.catalog`):
the value the command's default method and preset give it.

No torch here: building the CLI and printing help stay fast.
"""

from __future__ import annotations

import ast
import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer
from typer.core import TyperCommand

from kdcli import catalog
from kdcli.errors import KDError

F = TypeVar("F", bound=Callable[..., Any])

DATA, MODEL, TRAINING, DEVICE, RUN, METHOD = "Data", "Model", "Training", "Device", "Run", "Method"


@dataclass(frozen=True)
class Opt:
    """One option: its flags, help, type, and where its value goes.

    Attributes:
        key: the config key it sets (``None``: it steers the command, not the run's config).
        method_param: True when it sets the method hyperparameter ``key``.
    """

    decls: tuple[str, ...]
    help: str
    type: Any = Optional[str]
    key: str | None = None
    panel: str = RUN
    default: Any = None
    method_param: bool = False

    def annotation(self) -> Any:
        return Annotated[self.type, typer.Option(*self.decls, help=self.help, rich_help_panel=self.panel)]


def _config(decls: tuple[str, ...], help: str, type: Any, key: str, panel: str) -> Opt:
    return Opt(decls, help, type, key, panel)


def _method(decls: tuple[str, ...], help: str, type: Any, key: str) -> Opt:
    return Opt(decls, help, type, key, METHOD, method_param=True)


OPTIONS: dict[str, Opt] = {
    # data
    "dataset": _config(("--dataset", "-d"), "Dataset name (see `kd list datasets`).", Optional[str], "dataset", DATA),
    "data_dir": _config(("--data-dir",), "Folder holding dataset files (else $KD_DATA_DIR).", Optional[str], "data_dir",
                        DATA),
    "val_fraction": _config(("--val-fraction",), "Share of train held out for validation (0 = train on all).",
                            Optional[float], "val_fraction", DATA),
    "augment": _config(("--augment",), "auto | none | crop | flip | crop_flip.", Optional[str], "augment", DATA),
    "image_size": _config(("--image-size",), "Resize every image to N×N once when loading (bilinear, antialiased, "
                          "as the papers' Resize; e.g. 32 for MNIST); 0 = the dataset's size. Recorded in the run; "
                          "a run made from a teacher run takes the teacher's.", Optional[int], "image_size", DATA),
    "shots": _config(("--shots",), "Train on only M seeded images per class (few-shot; 0 = all); no validation split, "
                     "the batch is capped at M × classes and an epoch shows as many images as an epoch of the "
                     "full split (the M per class repeated). The indices are recorded in run.json.",
                     Optional[int], "shots", DATA),
    # models
    "model": _config(("--model", "-m"), "Model name (see `kd list models`), tv:NAME (torchvision), or your own "
                     "MODULE:FACTORY.", Optional[str], "model", MODEL),
    "student": _config(("--student", "--model", "-m"), "Student model (see `kd list models`), tv:NAME or "
                       "MODULE:FACTORY.", Optional[str], "model", MODEL),
    "teacher": _config(("--teacher", "-t"), "Teacher run directory (RUN or RUN:role).", Optional[str], "teacher",
                       MODEL),
    "models": _config(("--models",), "Heterogeneous peers, e.g. resnet32,wrn-16-2 (dml, independent, codistill).",
                      Optional[str], "models", MODEL),
    "model_arg": _config(("--model-arg",), "Argument of the model's factory as KEY=VALUE (repeatable), e.g. "
                         "width=16; kept with the model.", Optional[list[str]], "model_args", MODEL),
    "teacher_model": _config(("--teacher-model",), "The teacher run's model (an import path or name): kd checks it "
                             "against the run and may import its module.", Optional[str], "teacher_model", MODEL),
    # training
    "epochs": _config(("--epochs", "-e"), "Training epochs.", Optional[int], "epochs", TRAINING),
    "batch_size": _config(("--batch-size", "-b"), "Batch size.", Optional[int], "batch_size", TRAINING),
    "lr": _config(("--lr",), "Peak learning rate.", Optional[float], "lr", TRAINING),
    "optimizer": _config(("--optimizer",), "sgd | adam.", Optional[str], "optimizer", TRAINING),
    "schedule": _config(("--schedule",), "cosine | step | constant.", Optional[str], "schedule", TRAINING),
    "milestones": _config(("--milestones",), "Epochs where a step schedule decays, e.g. 60,120,180 (7.5 = mid-epoch).",
                          Optional[str], "milestones", TRAINING),
    "gamma": _config(("--gamma",), "Factor a step schedule multiplies the learning rate by at each milestone.",
                     Optional[float], "gamma", TRAINING),
    "warmup_epochs": _config(("--warmup-epochs",), "Linear learning-rate warm-up, in epochs.", Optional[float],
                             "warmup_epochs", TRAINING),
    "weight_decay": _config(("--weight-decay",), "Weight decay.", Optional[float], "weight_decay", TRAINING),
    "momentum": _config(("--momentum",), "SGD momentum.", Optional[float], "momentum", TRAINING),
    "nesterov": _config(("--nesterov/--no-nesterov",), "SGD with Nesterov momentum, or plain momentum.", Optional[bool],
                        "nesterov", TRAINING),
    "seed": _config(("--seed",), "Random seed (same seed + same device ⇒ same numbers).", Optional[int], "seed",
                    TRAINING),
    # device
    "device": _config(("--device",), "auto | cpu | cuda | mps.", Optional[str], "device", DEVICE),
    "precision": _config(("--precision",), "auto (bf16 on CUDA; fp32 for DAFL, ZSKT) | fp32 | bf16.", Optional[str], "precision", DEVICE),
    "cuda_graphs": _config(("--cuda-graphs",), "auto | on | off (CUDA only).", Optional[str], "cuda_graphs", DEVICE),
    "fuse": _config(("--fuse",), "auto | on | off: peers or branches of one architecture run as one network "
                    "(online methods).", Optional[str], "fuse", DEVICE),
    "threads": _config(("--threads",), "CPU threads; 0 = chosen from the work per step and the free cores "
                       "(OMP_NUM_THREADS also sets it).", Optional[int], "threads", DEVICE),
    # the run
    "preset": Opt(("--preset",), "The method's preset: quick (sized for a CPU) | paper (the paper's protocol; "
                  "--epochs scales its milestones and ramp-up) | a named variant (`kd list methods NAME`)."),
    "config": Opt(("--config",), "TOML file of defaults; flags win.", Optional[Path]),
    "out": _config(("--out", "-o"), "Run directory to write (default runs/<name>).", Optional[str], "out", RUN),
    "resume": Opt(("--resume",), "Continue an interrupted or diverged run directory with its own config (only "
                  "--epochs, --lr, --device, --data-dir may change)."),
    "overwrite": Opt(("--overwrite",), "Replace an existing --out run (only a directory kd wrote).", bool,
                     default=False),
    "json": Opt(("--json",), "Print the result as JSON instead of a table.", bool, default=False),
    "quiet": Opt(("--quiet", "-q"), "No progress display or per-epoch log.", bool, default=False),
    "allow_module": Opt(("--allow-module",), "Let kd import this module for a model a run names, e.g. my_pkg.nets "
                        "(repeatable; also $KD_ALLOW_MODULES). Modules named by --model are allowed already.",
                        Optional[list[str]]),
    # method hyperparameters
    "param": Opt(("--param",), "Any method hyperparameter as KEY=VALUE (repeatable), e.g. ilr=false.",
                 Optional[list[str]], panel=METHOD),
    "temperature": _method(("--temperature", "-T"), "Softmax temperature T of the distillation term.",
                           Optional[float], "temperature"),
    "alpha": _method(("--alpha",), "Weight of the soft loss; the hard CE gets 1−α.", Optional[float], "alpha"),
    "peers": _method(("--peers", "-k"), "Peers (dml, independent, codistill), heads (cl), branches (one), "
                     "auxiliary peers (okddip).", Optional[int], "peers"),
    "update": _method(("--update",), "dml: simultaneous | alternating (the paper's Algorithm 1).", Optional[str],
                      "update"),
    "split_at": _method(("--split-at",), "cl/one/okddip: first per-branch stage, e.g. stage3 (default: the last).",
                        Optional[str], "split_at"),
    "ramp_epochs": _method(("--ramp-epochs",), "one/okddip: ramp-up length R in epochs (default 80/300 of --epochs).",
                           Optional[float], "ramp_epochs"),
    "exchange_every": _method(("--exchange-every",), "codistill: steps between weight exchanges.", Optional[int],
                              "exchange_every"),
    "burn_in": _method(("--burn-in",), "codistill: steps before the distillation term starts.", Optional[int],
                       "burn_in"),
    "distill_weight": _method(("--distill-weight",), "codistill: weight of the distillation term.", Optional[float],
                              "distill_weight"),
    "shard": _method(("--shard",), "codistill: disjoint | shared data.", Optional[str], "shard"),
    "n": _method(("-n", "--n"), "Transfer-set size (images to synthesise).", Optional[int], "n"),
    "synthetic": _method(("--synthetic",), "Distil from this `kd synthesize` folder.", Optional[str], "synthetic"),
    "objective": _method(("--objective",), "lopes: top_layer | all_layers | spectral_all_layers | "
                         "spectral_layer_pairs (the spectral two are kd's own construction).", Optional[str],
                         "objective"),
    "statistics": _method(("--statistics",), "lopes: pooled (kd's pooled units) | full (the official code's "
                          "full pre-ReLU maps, correlated targets; small networks).", Optional[str], "statistics"),
    "iterations": _method(("--iterations",), "Optimisation steps per impression (zskd, lopes, deepinversion) or "
                          "steps per epoch (dafl, zskt, noise).", Optional[int], "iterations"),
    "lr_input": _method(("--lr-input",), "Adam learning rate on synthesised inputs.", Optional[float], "lr_input"),
    "lr_generator": _method(("--lr-generator",), "Generator learning rate (dafl, zskt).", Optional[float],
                            "lr_generator"),
    "latent_dim": _method(("--latent-dim",), "Generator latent size (dafl, zskt).", Optional[int], "latent_dim"),
    "beta": _method(("--beta",), "Attention-transfer weight β (zskt; kd with --attention).", Optional[float], "beta"),
    "attention": _method(("--attention/--no-attention",), "kd: add β·Σ attention transfer over block groups "
                         "(ZSKT's KD+AT baseline, β 250); both models need block groups.", Optional[bool],
                         "attention"),
    "synth_batch": _method(("--synth-batch",), "Impressions optimised at once on the device.", Optional[int],
                           "synth_batch"),
}

#: What every training command takes.
DATA_OPTIONS = ("dataset", "data_dir", "val_fraction", "augment", "image_size")
SCHEDULE = ("epochs", "batch_size", "lr", "optimizer", "schedule", "milestones", "gamma", "warmup_epochs",
            "weight_decay", "momentum", "nesterov", "seed")
DEVICE_OPTIONS = ("device", "precision", "cuda_graphs", "threads")
RUN_OPTIONS = ("preset", "config", "out", "resume", "overwrite", "json", "quiet", "allow_module")
TRAINING_COMMAND = (*DATA_OPTIONS, *SCHEDULE, *DEVICE_OPTIONS, *RUN_OPTIONS)


class Options(dict):
    """The shared options' values of one invocation (``None`` = not given)."""

    def flags(self) -> dict[str, Any]:
        """The config keys they set, parsed (``--milestones 60,120`` → ``[60, 120]``)."""
        flags: dict[str, Any] = {}
        for name, value in self.items():
            opt = OPTIONS[name]
            if opt.key is None or opt.method_param or value is None:
                continue
            if opt.key == "milestones":
                value = parse_epochs(value)
            elif opt.key == "models":
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif opt.key == "model_args":
                value = parse_model_args(value)
            flags[opt.key] = value
        return flags

    def method_flags(self) -> dict[str, Any]:
        """Method hyperparameters from the named flags (typed by the option); they win over ``--param``."""
        return {OPTIONS[n].key: v for n, v in self.items() if OPTIONS[n].method_param and v is not None}

    def param_text(self) -> dict[str, str]:
        """``--param KEY=VALUE`` pairs as text; the method's ``Params`` types parse them."""
        return parse_params(self.get("param"))

    def api_kwargs(self) -> dict[str, Any]:
        """This invocation as keyword arguments of a :mod:`kdcli.api` training function (the CLI is a thin
        layer over it): the config flags, the method's hyperparameters and how the run is handled."""
        return {
            **self.flags(),
            "params": self.method_flags(),
            "param_text": self.param_text(),
            "preset": self.get("preset"),
            "config": self.get("config"),
            "resume": self.get("resume"),
            "overwrite": bool(self.get("overwrite")),
            "quiet": bool(self.get("quiet") or self.get("json")),
            "allow_modules": list(self.get("allow_module") or []),
        }


def parse_epochs(text: str) -> list[float]:
    """``"60,120,180"`` → ``[60, 120, 180]``; a fraction stays one (``"7.5"`` → ``[7.5]``)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise KDError(f"expected comma-separated epochs, got {text!r}") from None
    return [int(v) if v.is_integer() else v for v in values]


def parse_value(text: str) -> Any:
    """A command-line value as Python: ``16`` → 16, ``0.5`` → 0.5, ``true``/``false``/``none``, ``[1,2]``; else
    the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_model_args(pairs: list[str]) -> dict[str, Any]:
    """``--model-arg KEY=VALUE`` pairs as a dict of Python values."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise KDError(f"--model-arg takes KEY=VALUE with KEY a Python name (got {pair!r})")
        values[key.strip()] = parse_value(value)
    return values


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise KDError(f"--param takes KEY=VALUE (got {pair!r})")
        values[key.strip().replace("-", "_")] = value.strip()
    return values


def command(*names: str) -> Callable[[F], F]:
    """Give a command function the shared options ``names`` besides its own parameters.

    The function declares a parameter ``options`` and receives their values in it, as :class:`Options`.
    """
    for name in names:
        if name not in OPTIONS:
            raise KeyError(name)

    def wrap(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "options"]
        shared = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=OPTIONS[name].default,
                              annotation=OPTIONS[name].annotation())
            for name in names
        ]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            values = Options({name: kwargs.pop(name) for name in names})
            return func(**kwargs, options=values)

        wrapper.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {}
        return wrapper  # type: ignore[return-value]

    return wrap


# ---------------------------------------------------------------------------------------------
# --help: effective defaults and presets


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _preset_summary(values: dict[str, Any]) -> str:
    rules = ("method", "no_batchnorm", "scale_with_epochs")
    parts = [f"{k} {_fmt(v)}" for k, v in values.items() if k not in rules]
    parts += [f"{k} {_fmt(v)}" for k, v in values.get("method", {}).items()]
    rule = values.get("no_batchnorm")
    if rule:
        parts.append("without BatchNorm: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rule.items()))
    scaled = values.get("scale_with_epochs")
    if scaled:
        parts.append("scaled with --epochs: " + ", ".join(k.removeprefix("method.") for k in scaled))
    return "; ".join(parts)


def describe_defaults(command: str, params: list[str]) -> tuple[dict[str, str], str]:
    """For ``kd <command> --help``: each option's default as shown, and an epilog listing the presets."""
    methods = catalog.methods_of(command)
    defaults = catalog.flat_defaults()
    shown: dict[str, str] = {}
    if not methods:
        return shown, ""
    first = methods[0]
    quick = first["presets"].get("quick", {}).get("*", {})
    for name in params:
        opt = OPTIONS.get(name)
        if name == "method":
            shown[name] = first["name"]
        elif name == "preset":
            shown[name] = "quick"
        elif opt is None or opt.key is None:
            continue
        elif opt.method_param:
            per_method = {}
            for m in methods:
                values = m["presets"].get("quick", {}).get("*", {}).get("method", {})
                param = next((p for p in m["params"] if p["name"] == opt.key), None)
                if param is not None:
                    per_method[m["name"]] = values.get(opt.key, param["default"])
            if len(set(map(_fmt, per_method.values()))) == 1:
                shown[name] = _fmt(next(iter(per_method.values())))
            elif per_method:
                shown[name] = ", ".join(f"{m} {_fmt(v)}" for m, v in per_method.items())
        elif opt.key == "dataset" and first["needs_teacher"]:
            shown[name] = "the teacher's"
        elif opt.key in quick:
            shown[name] = _fmt(quick[opt.key])
        elif opt.key in defaults and defaults[opt.key] not in (None, "", []):
            shown[name] = _fmt(defaults[opt.key])
    lines = ["Presets (defaults < preset < --config TOML < flags; `kd list methods NAME` shows every value):"]
    for m in methods:
        for preset, table in m["presets"].items():
            for dataset, values in table.items():
                where = "" if dataset == "*" else f" on {dataset}"
                lines.append(f"{m['name']} --preset {preset}{where}: {_preset_summary(values)}")
    return shown, "\n\n".join(lines)


class KdCommand(TyperCommand):
    """A command whose ``--help`` shows each option's effective default and the presets it can take."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        shown, epilog = describe_defaults(self.name or "", [p.name for p in self.params if p.name])
        for param in self.params:
            if param.name in shown:
                param.show_default = shown[param.name]
        if epilog:
            self.epilog = epilog
        super().format_help(ctx, formatter)
