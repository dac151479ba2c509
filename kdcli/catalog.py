"""What can be named on the command line, as plain data, without importing torch: ``kd list`` and ``--help``.

The registries live in modules that import torch (2–3 s on a laptop), far too slow for a listing or a
help page. So the catalogue (every model, dataset and method: names, help, presets, hyperparameters
with defaults) is built once by importing the registries, and cached as JSON under
``$XDG_CACHE_HOME/kd`` (default ``~/.cache/kd``), keyed by a fingerprint of kd's own source files
(their paths, sizes and modification times): an edit, an upgrade or another checkout gets a new
catalogue, and every later ``kd list`` or ``--help`` reads the file. Nothing else is cached: if the
cache cannot be written, the catalogue is simply rebuilt each time.

Only the standard library is imported at module level here; :func:`build` imports the registries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import kdcli

CATALOG_VERSION = "2"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kd" / "catalog"


def fingerprint() -> str:
    """A hash of kd's version and of every source file's path, size and modification time."""
    root = Path(kdcli.__file__).parent
    digest = hashlib.blake2b(f"{CATALOG_VERSION}:{kdcli.__version__}:{root}".encode(), digest_size=12)
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def catalog() -> dict[str, Any]:
    """The catalogue: from the cache when it matches this source tree, else built (and cached)."""
    path = cache_dir() / f"catalog-{fingerprint()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    data = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".catalog.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: rebuild next time
    return data


# ---------------------------------------------------------------------------------------------
# Building it (imports the registries)


def _attribute_docs(cls: type) -> dict[str, str]:
    """``name → text`` from a Google-style ``Attributes:`` section of a class docstring."""
    doc = inspect.getdoc(cls) or ""
    docs: dict[str, str] = {}
    current = None
    in_section = False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_section = True
            continue
        if not in_section:
            continue
        match = re.match(r"^\s{4}(\w+):\s*(.*)$", line)
        if match:
            current = match[1]
            docs[current] = match[2].strip()
        elif current and line.startswith("        "):
            docs[current] += " " + line.strip()
        elif line.strip():
            current = None
    return docs


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _method_entry(entry: Any) -> dict[str, Any]:
    cls = entry.builder
    params = []
    if dataclasses.is_dataclass(cls.Params):
        docs = _attribute_docs(cls.Params)
        for f in dataclasses.fields(cls.Params):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            params.append({"name": f.name, "type": str(f.type), "default": _jsonable(default),
                           "about": docs.get(f.name, "")})
    return {
        "name": entry.name,
        "command": entry.info.get("command", ""),
        "about": entry.help,
        "doc": (inspect.getdoc(cls) or "").split("\n\n")[0],
        "module": cls.__module__,
        "presets": _jsonable(cls.presets),
        "preset_notes": dict(cls.preset_notes),
        "params": params,
        "needs_teacher": cls.needs_teacher,
        "needs_data": cls.needs_data,
        "synthesis": cls.synthesis,
        "primary": cls.primary,
    }


def build() -> dict[str, Any]:
    """Import every registry and describe it as plain data."""
    from kdcli.config import RunConfig  # noqa: PLC0415 - the catalogue exists so listing does not import torch
    from kdcli.data import DATASETS  # noqa: PLC0415
    from kdcli.methods import METHODS  # noqa: PLC0415
    from kdcli.models import MODELS  # noqa: PLC0415
    from kdcli.models.external import FORMS  # noqa: PLC0415

    models = [{"name": e.name, "example": e.examples[0], "about": e.help, "family": e.pattern is not None}
              for e in MODELS]
    models += [{"name": name, "example": example, "about": about, "family": True} for name, example, about in FORMS]
    datasets = []
    for e in DATASETS:
        info = e.info.get("static_info")
        datasets.append({
            "name": e.name,
            "about": e.help,
            "shape": f"{info.channels}×{info.image_size}×{info.image_size}" if info else "from files",
            "classes": info.num_classes if info else None,
            "train/test": f"{info.train_size}/{info.test_size}" if info and info.train_size else "—",
        })
    return {
        "fingerprint": fingerprint(),
        "models": models,
        "datasets": datasets,
        "methods": [_method_entry(e) for e in METHODS],
        "defaults": _jsonable(RunConfig().to_dict()),
    }


# ---------------------------------------------------------------------------------------------
# Reading it


def methods_of(command: str) -> list[dict[str, Any]]:
    return [m for m in catalog()["methods"] if m["command"] == command]


def method(name: str) -> dict[str, Any] | None:
    return next((m for m in catalog()["methods"] if m["name"] == name), None)


def flat_defaults() -> dict[str, Any]:
    """The dataclass defaults as flat config keys (``epochs``, ``lr``, ``dataset``...)."""
    defaults = catalog()["defaults"]
    flat = {k: v for k, v in defaults.items() if not isinstance(v, dict)}
    for section in ("data", "optim", "train"):
        flat.update(defaults[section])
    return flat
