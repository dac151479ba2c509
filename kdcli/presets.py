"""The one preset system: every method's ``presets`` table, resolved into a run's config in one function.

A preset has one shape for every command and method (:attr:`kdcli.methods.base.Method.presets`)::

    {preset name: {dataset name or "*": overrides}}

The overrides are flat config keys (``epochs``, ``lr``, ``model``, ``milestones``...), ``method`` (a
table of the method's own hyperparameters), and optionally two rules:

* ``no_batchnorm``: values that apply, unless the user set them, when the model has no BatchNorm
  (``lr`` is a cap, ``warmup_epochs`` a floor: LeNet-5 diverged on MNIST at the ResNet rate of 0.1);
* ``scale_with_epochs``: the keys whose values are counted in the preset's own ``epochs`` (a step
  schedule's ``milestones``, a ramp-up's ``method.ramp_epochs``, a burn-in's ``method.burn_in``).
  When the run's epochs differ from the preset's (``--epochs 30`` on a 300-epoch paper protocol),
  each of them that the user did not set is multiplied by run epochs ÷ preset epochs, so a shortened
  paper run still decays its learning rate and ramps its distillation weight at the same fractions of
  training. A scaled integer stays an integer, except milestones (the schedule is a function of the
  fractional epoch, so 22.5 decays half-way through epoch 23).

:func:`resolve_config` is the only place a run's config is put together, for every command, in this
order (each layer wins over the one before it):

1. the dataclass defaults (:mod:`kdcli.config`);
2. the method's preset: the entry of the run's dataset, else ``"*"`` (``--preset``, else the TOML
   file's ``preset``, else ``quick``);
3. the ``--config`` TOML file;
4. the flags.

The run's dataset (which picks the preset's entry) is the one named by the flags or the TOML file,
else the teacher's (commands with ``--teacher``), else the preset's ``"*"`` entry, else ``digits``.
The preset's name and every value the two rules changed are kept in the config (``preset``,
``adjusted``: ``{key: "old → new: why"}``), so ``run.json`` says how the numbers were chosen, and
the orchestrator prints them when a run starts.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcli import checkpoint
from kdcli.config import FLAGS, ResumeChanges, RunConfig, apply_overrides, flag_name, load_toml, validate
from kdcli.data import get_dataset
from kdcli.errors import KDError, did_you_mean, unknown
from kdcli.methods import DEFAULT_PRESET, METHODS
from kdcli.methods.base import Method, Preset, parse_param_text
from kdcli.models import MODELS, create_model, external, model_provides, probe_model

NO_BATCHNORM = "no_batchnorm"
SCALE_WITH_EPOCHS = "scale_with_epochs"
#: How the refusal of another command's method reads, per command ("... is not an online method").
KINDS = {"distill-online": "an online", "distill-datafree": "a data-free", "synthesize": "a synthesising",
         "distill": "a distill", "train-teacher": "a train-teacher"}


def methods_of(command: str) -> list[str]:
    """The names of the methods ``kd <command>`` runs, in registration order (the first is its default)."""
    return [e.name for e in METHODS if e.info.get("command") == command]


def synthesizers() -> list[str]:
    """The methods ``kd synthesize`` takes: input optimisers first (the first is its default), then generators."""
    datafree = [e.builder for e in METHODS if e.info.get("command") == "distill-datafree"]
    return [cls.name for kind in ("inputs", "generator") for cls in datafree if cls.synthesis == kind]


def method_class(method: str, command: str | None = None, choices: list[str] | None = None) -> type[Method]:
    """The registered method ``method``. With ``command``, only a method of that command (``choices``, by
    default :func:`methods_of`) is accepted; anything else is a one-line error listing them."""
    if command is None:
        return METHODS.resolve(method)[0].builder
    own = methods_of(command) if choices is None else choices
    if method in own:
        return METHODS.resolve(method)[0].builder
    if method in METHODS:
        owner = METHODS.resolve(method)[0].info.get("command", "?")
        raise KDError(f"method {method!r} is not {KINDS.get(command, 'a ' + command)} method (it is run by kd "
                      f"{owner}). Valid: {', '.join(own)}.")
    raise unknown("method", method, own)


def preset_table(cls: type[Method], preset: str) -> Preset:
    """``cls``'s preset ``preset`` (every method has ``quick``); an unknown name is a one-line error."""
    if preset not in cls.presets:
        names = list(cls.presets) or ["none"]
        raise KDError(
            f"method {cls.name!r} has no {preset!r} preset.{did_you_mean(preset, names)} "
            f"--preset takes: {', '.join(names)}."
        )
    return cls.presets[preset]


def preset_values(cls: type[Method], preset: str, dataset: str) -> dict[str, Any]:
    """The overrides of ``cls``'s ``preset`` for ``dataset``: its own entry, else ``"*"`` (a deep copy)."""
    table = preset_table(cls, preset)
    return copy.deepcopy(table.get(dataset, table.get("*", {})))


def has_batchnorm(model: str, channels: int = 1, image_size: int = 28, classes: int = 10, **kwargs: Any) -> bool:
    """Whether the registered ``model`` has a BatchNorm layer (built once as a probe, off the run's RNG)."""
    with torch.random.fork_rng(devices=[]):
        probe = create_model(model, channels, image_size, classes, **kwargs)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules())


def _without_batchnorm(config: RunConfig) -> str | None:
    """The first model the run trains (``--models``, else ``--model``) that has no BatchNorm, or ``None``. A
    model kd did not define is probed on the run's dataset (its factory may fix the channels); an unknown
    registry name is left for the build to report."""
    for name in dict.fromkeys(config.models or [config.model]):
        if external.is_external(name):
            info = get_dataset(config.data.dataset, config.data.data_dir, config.data.image_size).info
            probe = probe_model(name, info.channels, info.image_size, info.num_classes, **config.model_args)
            if "batchnorm" not in model_provides(probe):
                return name
        elif name in MODELS and not has_batchnorm(name, **config.model_args):
            return name
    return None


def _explicit_keys(values: dict[str, Any]) -> set[str]:
    """Keys a layer sets (flat or inside a section), normalised to underscores."""
    keys: set[str] = set()
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict) and key != "method":
            keys |= {k.replace("-", "_") for k, v in value.items() if v is not None}
        else:
            keys.add(key.replace("-", "_"))
    return keys


def resolve_config(
    command: str,
    method: str,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    method_flags: dict[str, Any] | None = None,
    choices: list[str] | None = None,
    param_text: dict[str, str] | None = None,
) -> RunConfig:
    """Put a run's config together: defaults < preset < ``--config`` TOML < flags (see the module docstring).

    Args:
        command: the CLI command (``train-teacher``, ``distill``, ``distill-online``...).
        method: the method's registered name; must be one that ``command`` runs.
        preset: the preset's name (default ``quick``).
        config_file: a TOML file of defaults (flat keys or ``[data]``/``[optim]``/``[train]``/``[method]``).
        flags: flat config keys from the command line (``None`` = not given).
        method_flags: the method's hyperparameters from the command line (``None`` = not given).
        choices: the methods ``command`` accepts (default: those registered for it).
        param_text: ``--param KEY=VALUE`` pairs, parsed by the method's ``Params`` types (named flags win).

    Every value is type-checked where it is applied and the result validated (:func:`kdcli.config.validate`,
    the method's ``make_params``), so a wrong value fails here, before anything is read or written.
    """
    cls = method_class(method, command, choices)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    method_flags = {k: v for k, v in (method_flags or {}).items() if v is not None}
    from_file = load_toml(config_file) if config_file is not None else {}
    preset = preset or from_file.get("preset") or DEFAULT_PRESET
    preset_table(cls, preset)  # an unknown preset fails before any file is read

    probe = RunConfig()
    apply_overrides(probe, from_file, str(config_file))
    apply_overrides(probe, flags, FLAGS)
    # the user named these (flags, their own --config file): kd may import their modules, now and later
    # in this process; a run directory read back never adds to this list (kdcli.models.external)
    external.allow_models([probe.model, *probe.models, probe.teacher_model])
    dataset = flags.get("dataset") or (probe.data.dataset if _sets(from_file, "dataset") else "")
    teacher = probe.teacher
    if cls.needs_teacher and not teacher:
        raise KDError(f"{command} needs a teacher: pass --teacher RUN (a kd train-teacher run)")
    if not dataset and teacher:
        dataset = checkpoint.resolve_role(teacher)[2]["dataset"]["name"]
    values = preset_values(cls, preset, dataset or "*")
    dataset = dataset or values.get("dataset") or RunConfig().data.dataset
    no_batchnorm = values.pop(NO_BATCHNORM, {})
    scaled = values.pop(SCALE_WITH_EPOCHS, [])

    config = RunConfig(command=command, method=method, preset=preset)
    apply_overrides(config, values, f"preset {preset}")
    apply_overrides(config, from_file, str(config_file))
    apply_overrides(config, flags, FLAGS)
    config.data.dataset = dataset
    config.method_params.update(parse_param_text(cls.Params, param_text or {}, method))
    config.method_params.update({k.replace("-", "_"): v for k, v in method_flags.items()})
    explicit = _explicit_keys(from_file) | _explicit_keys(flags)
    if scaled and "epochs" in values:
        explicit_method = {k.replace("-", "_") for k in {**from_file.get("method", {}), **(param_text or {}),
                                                         **method_flags}}
        scale_with_epochs(config, scaled, values["epochs"], explicit, explicit_method)
    if config.data.shots and config.data.val_fraction > 0 and "val_fraction" not in explicit:
        # few-shot training reads M images per class and nothing else (kdcli.run.few_shot_set)
        config.adjusted["val_fraction"] = f"{config.data.val_fraction:g} → 0: --shots holds no image out"
        config.data.val_fraction = 0.0
    without = _without_batchnorm(config) if no_batchnorm and "lr" not in explicit else None
    if without is not None:
        _apply_no_batchnorm(config, no_batchnorm, explicit, without)
    validate(config)
    cls.make_params(config.method_params)  # types and ranges of the method's hyperparameters, now
    return config


#: What ``--resume`` may change in a run's stored config (documented in the README): the run's length
#: (the schedule is recomputed for the new total from where it resumes), the peak learning rate (a run
#: that diverged resumes from its last finite checkpoint with a lower one), and where it runs and
#: finds its data. Anything else would make a run that is neither the stored one nor a new one.
RESUME_MAY_CHANGE = ("epochs", "lr", "device", "data_dir")


def _flat(config: RunConfig) -> dict[str, Any]:
    raw = config.to_dict()
    flat = {k: v for k, v in raw.items() if k not in ("data", "optim", "train", "adjusted", "method_params")}
    for section in ("data", "optim", "train"):
        flat.update(raw[section])
    return flat


def _shown(value: Any) -> str:
    """A config value as typed on the command line (``0.002``, ``60,120``, ``none``)."""
    if isinstance(value, list):
        return ",".join(_shown(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def resolve_resume(run_dir: str | Path, info: dict[str, Any], changes: ResumeChanges | None) -> tuple[
        RunConfig, dict[str, Any], dict[str, list[Any]]]:
    """The config and hyperparameters to continue ``run_dir`` with: the stored ones, with what this invocation
    asked to change when :data:`RESUME_MAY_CHANGE` allows it.

    Refused, with one line: a run made by another command or method; any other change (all of them are
    listed, each with the run's value). Returns ``(config, method params, {key: [stored, new]})``.
    """
    try:
        stored = RunConfig.from_dict(info["config"])
    except (TypeError, KeyError, AttributeError) as err:
        raise KDError(f"{Path(run_dir) / checkpoint.RUN_FILE}: its config cannot be read ({err}); the run is "
                      "damaged") from None
    params = dict(info.get("params") or {})
    if changes is None:
        return stored, params, {}
    command = info.get("command", stored.command)
    if command != changes.command:
        raise KDError(f"{run_dir} was made by kd {command}, not kd {changes.command}; "
                      f"resume it with: kd {command} --resume {run_dir}")
    if changes.method and changes.method != stored.method:
        raise KDError(f"{run_dir} is a {stored.method} run; --method {changes.method} cannot resume it "
                      f"(drop --method, or start a new run)")
    flags = {k: v for k, v in changes.flags.items() if v is not None}
    out = flags.pop("out", None)
    if out is not None and Path(out).resolve() != Path(run_dir).resolve():
        raise KDError(f"--out {out} with --resume {run_dir}: a resumed run writes into its own directory; drop --out")
    wanted = copy.deepcopy(stored)
    from_file = load_toml(changes.config_file) if changes.config_file is not None else {}
    apply_overrides(wanted, from_file, str(changes.config_file))
    apply_overrides(wanted, flags, FLAGS)
    preset = changes.preset or from_file.get("preset")
    if preset:
        wanted.preset = preset
    before, after = _flat(stored), _flat(wanted)
    differ = {k: [before[k], after[k]] for k in after if after[k] != before.get(k)}
    cls = method_class(stored.method)
    asked = {**{k.replace("-", "_"): v for k, v in from_file.get("method", {}).items()},
             **parse_param_text(cls.Params, changes.param_text, stored.method),
             **{k: v for k, v in changes.method_flags.items() if v is not None}}
    old_params, new_params = cls.make_params(params), cls.make_params({**params, **asked})
    for name in (f.name for f in dataclasses.fields(old_params)) if dataclasses.is_dataclass(old_params) else ():
        if getattr(old_params, name) != getattr(new_params, name):
            differ[f"method.{name}"] = [getattr(old_params, name), getattr(new_params, name)]
    refused = {k: v for k, v in differ.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        listed = "; ".join(f"{k if k.startswith('method.') else flag_name(k)} {_shown(new)} (the run has "
                           f"{_shown(old)})" for k, (old, new) in refused.items())
        may = ", ".join(flag_name(k) for k in RESUME_MAY_CHANGE)
        raise KDError(f"--resume {run_dir} keeps the run's config, but this would change it: {listed}. "
                      f"Only {may} may change on resume; start a new run for anything else")
    validate(wanted)
    return wanted, params, differ


def _sets(values: dict[str, Any], key: str) -> bool:
    return key in _explicit_keys(values)


def _scaled(value: float, factor: float, integer: bool) -> float:
    scaled = value * factor
    if integer:
        return int(round(scaled))
    scaled = round(scaled, 6)
    return int(scaled) if float(scaled).is_integer() else scaled


def scale_with_epochs(config: RunConfig, keys: list[str], preset_epochs: int, explicit: set[str],
                      explicit_method: set[str]) -> None:
    """Multiply the preset's epoch-counted ``keys`` by ``config.train.epochs / preset_epochs`` (see the module
    docstring); keys the user set (``explicit``, ``explicit_method``) keep their values. Records each change
    in ``config.adjusted``."""
    epochs = config.train.epochs
    if epochs == preset_epochs:
        return
    factor = epochs / preset_epochs
    why = f"the {config.preset} preset is {preset_epochs} epochs, this run {epochs} (×{factor:.4g})"
    for key in keys:
        if key.startswith("method."):
            name = key.removeprefix("method.")
            if name in explicit_method or config.method_params.get(name) is None:
                continue
            old = config.method_params[name]
            new = _scaled(old, factor, integer=isinstance(old, int))
            config.method_params[name] = new
        else:
            section = next(s for s in (config.optim, config.train, config.data) if hasattr(s, key))
            old = getattr(section, key)
            if key in explicit or old is None:
                continue
            new = [_scaled(v, factor, integer=False) for v in old] if isinstance(old, list) else \
                _scaled(old, factor, integer=isinstance(old, int))
            setattr(section, key, new)
        if new != old:
            config.adjusted[key] = f"{_shown(old)} → {_shown(new)}: {why}"


def _apply_no_batchnorm(config: RunConfig, rule: dict[str, Any], explicit: set[str], model: str) -> None:
    """A model without BatchNorm: ``lr`` capped and ``warmup_epochs`` raised to the rule's values, unless set."""
    if "lr" in explicit:
        return
    if "lr" in rule and config.optim.lr > rule["lr"]:
        config.adjusted["lr"] = f"{config.optim.lr:g} → {rule['lr']:g}: {model} has no BatchNorm"
        config.optim.lr = rule["lr"]
    if "warmup_epochs" in rule and "warmup_epochs" not in explicit and config.optim.warmup_epochs < rule["warmup_epochs"]:
        config.adjusted["warmup_epochs"] = (
            f"{config.optim.warmup_epochs:g} → {rule['warmup_epochs']:g}: {model} has no BatchNorm"
        )
        config.optim.warmup_epochs = rule["warmup_epochs"]
