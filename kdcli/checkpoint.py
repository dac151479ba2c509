"""Run directories on disk: safetensors weights with metadata, run.json, metrics.jsonl, resume state.

Every write is atomic (temp file in the same folder, then ``os.replace``), so an interrupted run
never leaves half a file. Only safetensors and JSON are ever read back: no pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kdcli import progress
from kdcli.errors import KDError
from kdcli.models import create_model
from kdcli.models.external import ModuleNotAllowed, is_allowed, will_import

FORMAT_VERSION = "1"
STATE_FILE = "state.safetensors"
RUN_FILE = "run.json"


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line; the file is rewritten atomically so a crash never leaves a half line."""
    existing = path.read_text() if path.exists() else ""
    _atomic(path, lambda tmp: tmp.write_text(existing + json.dumps(obj, default=str) + "\n"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(clean, str(tmp), metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; a missing, truncated or foreign file is a one-line KDError."""
    if not path.is_file():
        raise KDError(f"{path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise KDError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None
    return tensors, metadata


# ---------------------------------------------------------------------------------------------
# Models


def model_metadata(model: nn.Module, role: str, dataset: dict[str, Any]) -> dict[str, str]:
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError(f"model for role {role!r} has no .spec; build it with kdcli.models.create_model")
    return {
        "kd_format": FORMAT_VERSION,
        "role": role,
        "spec": json.dumps(spec.to_dict()),
        "arch": spec.arch,
        "num_classes": str(spec.num_classes),
        "dataset": json.dumps(dataset),
    }


def save_model(path: Path, model: nn.Module, role: str, dataset: dict[str, Any]) -> None:
    save_tensors(path, model.state_dict(), model_metadata(model, role, dataset))


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its safetensors file alone. Returns ``(model in eval mode, info)``."""
    tensors, metadata = load_tensors(path)
    if metadata.get("kd_format") != FORMAT_VERSION or "spec" not in metadata:
        raise KDError(f"{path} is not a kd checkpoint (no kd metadata)")
    spec = json.loads(metadata["spec"])
    module = will_import(spec["arch"])
    if module is not None and is_allowed(module):  # say which code a run makes kd import
        progress.log(f"{path}: importing module {module} for model {spec['arch']}")
    try:
        model = create_model(spec["arch"], spec["in_channels"], spec["image_size"], spec["num_classes"],
                             **spec["kwargs"])
    except ModuleNotAllowed as err:  # a run never allows code by itself: say which file asked for it
        raise ModuleNotAllowed(f"{path}: {err}") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise KDError(f"{path} does not match its architecture {spec['arch']!r}: {str(err).splitlines()[0]}") from None
    model.to(device).eval()
    return model, {"spec": spec, "role": metadata.get("role"), "dataset": json.loads(metadata.get("dataset", "{}"))}


# ---------------------------------------------------------------------------------------------
# Nested state (optimiser state dicts, RNG, counters) ↔ safetensors + JSON metadata


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """Move every tensor of a nested structure into ``tensors`` and return a JSON-able skeleton."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, tensors, f"{prefix}.{i}")] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    return obj


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_state(path: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state, tensors)
    save_tensors(path, tensors, {"kd_format": FORMAT_VERSION, "state": json.dumps(skeleton)})


def load_state(path: Path) -> dict[str, Any]:
    tensors, metadata = load_tensors(path)
    if "state" not in metadata:
        raise KDError(f"{path} holds no resumable state")
    return unflatten_state(json.loads(metadata["state"]), tensors)


# ---------------------------------------------------------------------------------------------
# Run directories


def read_run(path: str | Path) -> dict[str, Any]:
    """Read ``run.json`` of a run directory, with a clear error for anything that is not a run."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise KDError(f"run {str(path)!r} not found")
    if not (run_dir / RUN_FILE).is_file():
        raise KDError(f"{str(path)!r} is not a kd run directory (no {RUN_FILE})")
    try:
        info = json.loads((run_dir / RUN_FILE).read_text())
    except json.JSONDecodeError:
        raise KDError(f"{run_dir / RUN_FILE} is corrupt (not JSON)") from None
    if not isinstance(info, dict) or "roles" not in info:
        raise KDError(f"{run_dir / RUN_FILE} is not a kd run description")
    return info


def resolve_role(run_ref: str) -> tuple[Path, str, dict[str, Any]]:
    """``RUN`` or ``RUN:role`` → (run dir, role, run.json). Without a role, the run's primary model."""
    path, _, role = run_ref.partition(":") if ":" in run_ref and not Path(run_ref).exists() else (run_ref, "", "")
    info = read_run(path)
    role = role or info.get("primary", "")
    if role not in info["roles"]:
        raise KDError(f"run {path!r} has no model {role!r}; it has: {', '.join(info['roles'])}")
    return Path(path), role, info


def load_run_model(run_ref: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    run_dir, role, info = resolve_role(run_ref)
    model, meta = load_model(run_dir / info["roles"][role]["file"], device)
    meta.update(run=str(run_dir), run_info=info, role=role)
    return model, meta


def new_run_dir(out: str | None, default_name: str, root: str = "runs", overwrite: bool = False) -> Path:
    """Choose the run directory (not created yet). An explicit existing ``--out`` needs ``--overwrite``."""
    if out:
        path = Path(out)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise KDError(f"{out} already exists; pass --overwrite to replace it or --resume {out} to continue it")
        return path
    base = Path(root) / default_name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def remove_incomplete(path: Path) -> None:
    """Delete a run directory that never completed a checkpoint (bad input found late, crash)."""
    if path.exists() and not (path / STATE_FILE).exists() and not (path / RUN_FILE).exists():
        shutil.rmtree(path, ignore_errors=True)
