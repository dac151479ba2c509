"""Every option of every kd command, declared once; :func:`command` gives a command the ones it takes,
and :func:`to_config` is the one function that turns them into a run's config.

Every option defaults to ``None`` so that "not given" can be told apart from a value: the config is
resolved as defaults < the method's preset < ``--config`` TOML < flags (:mod:`kdcli.presets`). What a
command's ``--help`` shows as each option's default is read from the catalogue (:mod:`kdcli.catalog`):
the value the command's default method and preset give it.

No torch here: building the CLI and printing help stay fast.
"""

from __future__ import annotations

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
    # models
    "model": _config(("--model", "-m"), "Model name (see `kd list models`).", Optional[str], "model", MODEL),
    "student": _config(("--student", "--model", "-m"), "Student model (see `kd list models`).", Optional[str], "model",
                       MODEL),
    "teacher": _config(("--teacher", "-t"), "Teacher run directory (RUN or RUN:role).", Optional[str], "teacher",
                       MODEL),
    "models": _config(("--models",), "Heterogeneous peers, e.g. resnet32,wrn-16-2 (dml, independent, codistill).",
                      Optional[str], "models", MODEL),
    # training
    "epochs": _config(("--epochs", "-e"), "Training epochs.", Optional[int], "epochs", TRAINING),
    "batch_size": _config(("--batch-size", "-b"), "Batch size.", Optional[int], "batch_size", TRAINING),
    "lr": _config(("--lr",), "Peak learning rate.", Optional[float], "lr", TRAINING),
    "optimizer": _config(("--optimizer",), "sgd | adam.", Optional[str], "optimizer", TRAINING),
    "schedule": _config(("--schedule",), "cosine | step | constant.", Optional[str], "schedule", TRAINING),
    "milestones": _config(("--milestones",), "Epochs where a step schedule decays, e.g. 60,120,180.", Optional[str],
                          "milestones", TRAINING),
    "warmup_epochs": _config(("--warmup-epochs",), "Linear learning-rate warm-up, in epochs.", Optional[float],
                             "warmup_epochs", TRAINING),
    "weight_decay": _config(("--weight-decay",), "Weight decay.", Optional[float], "weight_decay", TRAINING),
    "momentum": _config(("--momentum",), "SGD momentum.", Optional[float], "momentum", TRAINING),
    "seed": _config(("--seed",), "Random seed (same seed + same device ⇒ same numbers).", Optional[int], "seed",
                    TRAINING),
    # device
    "device": _config(("--device",), "auto | cpu | cuda | mps.", Optional[str], "device", DEVICE),
    "precision": _config(("--precision",), "auto (bf16 on CUDA) | fp32 | bf16.", Optional[str], "precision", DEVICE),
    "cuda_graphs": _config(("--cuda-graphs",), "auto | on | off (CUDA only).", Optional[str], "cuda_graphs", DEVICE),
    "fuse": _config(("--fuse",), "auto | on | off: peers or branches of one architecture run as one network "
                    "(online methods).", Optional[str], "fuse", DEVICE),
    "threads": _config(("--threads",), "CPU threads; 0 = chosen from the work per step and the free cores "
                       "(OMP_NUM_THREADS also sets it).", Optional[int], "threads", DEVICE),
    # the run
    "preset": Opt(("--preset",), "The method's preset: quick (sized for a CPU) | paper (the paper's protocol)."),
    "config": Opt(("--config",), "TOML file of defaults; flags win.", Optional[Path]),
    "out": _config(("--out", "-o"), "Run directory to write (default runs/<name>).", Optional[str], "out", RUN),
    "resume": Opt(("--resume",), "Continue an interrupted run directory."),
    "overwrite": Opt(("--overwrite",), "Replace an existing --out directory.", bool, default=False),
    "json": Opt(("--json",), "Print the result as JSON instead of a table.", bool, default=False),
    "quiet": Opt(("--quiet", "-q"), "No progress display or per-epoch log.", bool, default=False),
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
                         "spectral_layer_pairs.", Optional[str], "objective"),
    "iterations": _method(("--iterations",), "Optimisation steps per impression (zskd, lopes, deepinversion) or "
                          "steps per epoch (dafl, zskt, noise).", Optional[int], "iterations"),
    "lr_input": _method(("--lr-input",), "Adam learning rate on synthesised inputs.", Optional[float], "lr_input"),
    "lr_generator": _method(("--lr-generator",), "Generator learning rate (dafl, zskt).", Optional[float],
                            "lr_generator"),
    "latent_dim": _method(("--latent-dim",), "Generator latent size (dafl, zskt).", Optional[int], "latent_dim"),
    "beta": _method(("--beta",), "zskt: attention-transfer weight β.", Optional[float], "beta"),
    "synth_batch": _method(("--synth-batch",), "Impressions optimised at once on the device.", Optional[int],
                           "synth_batch"),
}

#: What every training command takes.
DATA_OPTIONS = ("dataset", "data_dir", "val_fraction", "augment")
SCHEDULE = ("epochs", "batch_size", "lr", "optimizer", "schedule", "milestones", "warmup_epochs", "weight_decay",
            "momentum", "seed")
DEVICE_OPTIONS = ("device", "precision", "cuda_graphs", "threads")
RUN_OPTIONS = ("preset", "config", "out", "resume", "overwrite", "json", "quiet")
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
                value = parse_int_list(value)
            elif opt.key == "models":
                value = [v.strip() for v in value.split(",") if v.strip()]
            flags[opt.key] = value
        return flags

    def method_flags(self) -> dict[str, Any]:
        """Method hyperparameters: ``--param KEY=VALUE`` pairs, then the named flags (which win)."""
        values: dict[str, Any] = parse_params(self.get("param"))
        values.update({OPTIONS[n].key: v for n, v in self.items() if OPTIONS[n].method_param and v is not None})
        return values


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise KDError(f"expected comma-separated integers, got {text!r}") from None


def parse_params(pairs: list[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise KDError(f"--param takes KEY=VALUE (got {pair!r})")
        values[key.strip().replace("-", "_")] = value.strip()
    return values


def to_config(command: str, options: Options, method: str | None = None, choices: list[str] | None = None) -> Any:
    """The run's config from this invocation's options: :func:`kdcli.presets.resolve_config` over their values.

    ``method`` defaults to the first of ``choices`` (by default, the methods registered for ``command``).
    """
    from kdcli.presets import methods_of, resolve_config  # noqa: PLC0415 - imports torch; `kd --help` must not

    choices = choices if choices is not None else methods_of(command)
    return resolve_config(command, method or choices[0], preset=options.get("preset"),
                          config_file=options.get("config"), flags=options.flags(),
                          method_flags=options.method_flags(), choices=choices)


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
    parts = [f"{k} {_fmt(v)}" for k, v in values.items() if k not in ("method", "no_batchnorm")]
    parts += [f"{k} {_fmt(v)}" for k, v in values.get("method", {}).items()]
    rule = values.get("no_batchnorm")
    if rule:
        parts.append("without BatchNorm: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rule.items()))
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
