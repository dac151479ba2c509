"""Scoring saved runs: what `kd evaluate` shows. Every model is rebuilt from its run directory alone."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcli import checkpoint
from kdcli.data import get_dataset
from kdcli.data.base import DatasetInfo, ImageSet
from kdcli.device import resolve_precision, select_device, setup_device
from kdcli.engine import predict, score
from kdcli.errors import KDError
from kdcli.methods import METHODS
from kdcli.methods.base import agreement


def cpu_latency_ms(model: nn.Module, info: DatasetInfo, repeats: int = 30) -> float:
    """Median wall time of one single-image forward pass on the CPU, in milliseconds."""
    cpu_model = model.to("cpu").eval()
    x = torch.randn(1, info.channels, info.image_size, info.image_size)
    times = []
    with torch.no_grad():
        for i in range(repeats + 5):
            t0 = time.perf_counter()
            cpu_model(x)
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def load_run_models(run_dir: Path, info_json: dict[str, Any], device: torch.device) -> dict[str, tuple[nn.Module, int]]:
    """Every saved role of a run, as ``role → (model, bytes on disk)``, plus rows its method assembles."""
    loaded: dict[str, tuple[nn.Module, int]] = {}
    for role, desc in info_json["roles"].items():
        path = run_dir / desc["file"]
        model, _ = checkpoint.load_model(path, device)
        loaded[role] = (model, path.stat().st_size)
    if info_json.get("method") in METHODS:
        cls = METHODS.resolve(info_json["method"])[0].builder
        params = cls.make_params(info_json.get("params", {}))
        assembled = cls.assemble_eval({r: m for r, (m, _) in loaded.items()}, params)
        for role, model in assembled.items():
            if role not in loaded:
                loaded[role] = (model, None)
    return loaded


def _check_fits(info_json: dict[str, Any], info: DatasetInfo, run: str) -> None:
    """Refuse to score a run on a dataset whose classes, channels or image size differ from its own."""
    stored = info_json["dataset"]
    if stored["name"] == info.name:
        return
    mismatch = [
        f"{key} {stored[key]} vs {getattr(info, key)}"
        for key in ("num_classes", "channels", "image_size")
        if stored[key] != getattr(info, key)
    ]
    if mismatch:
        raise KDError(f"cannot evaluate {run} (a {stored['name']} run) on {info.name}: {', '.join(mismatch)}")


def run_image_size(info_json: dict[str, Any]) -> int:
    """The ``--image-size`` a run was made at (0: the dataset's own size); its test images are resized the same."""
    return int(info_json["config"].get("data", {}).get("image_size", 0) or 0)


def _dataset_for(info_json: dict[str, Any], dataset: str | None, data_dir: str | None, run: str = "the run"):
    stored = info_json["dataset"]
    name = dataset or stored["name"]
    data = get_dataset(name, data_dir or info_json["config"].get("data", {}).get("data_dir"), run_image_size(info_json))
    _check_fits(info_json, data.info, run)
    return data, data.info


def _refuse_duplicates(refs: list[str]) -> None:
    """The same model twice in one table is a mistake (``kd evaluate R R``, or ``R`` and ``R:role``)."""
    seen: dict[Path, list[tuple[str, str | None]]] = {}
    for ref in refs:
        named_role = ":" in ref and not Path(ref).exists()
        path, role = (ref.rsplit(":", 1) if named_role else (ref, None))
        key = Path(path).resolve()
        for earlier, earlier_role in seen.get(key, []):
            if role is None or earlier_role is None or role == earlier_role:
                raise KDError(f"{ref} is given twice (as {earlier} and {ref}); name each run or RUN:role once")
        seen.setdefault(key, []).append((ref, role))


def evaluate_runs(
    runs: list[str], dataset: str | None = None, data_dir: str | None = None, device: str = "auto",
    batch_size: int = 1024, measure_latency: bool = True,
) -> list[dict[str, Any]]:
    if not runs:
        raise KDError("give at least one run directory")
    if batch_size <= 0:
        raise KDError(f"--batch-size must be positive (got {batch_size})")
    _refuse_duplicates(runs)
    dev = select_device(device)
    setup_device(dev)
    dtype = resolve_precision("auto", dev)
    rows: list[dict[str, Any]] = []
    cache: dict[tuple[str, str | None, int], tuple[ImageSet, DatasetInfo]] = {}
    for ref in runs:
        run_dir, only_role, info_json = checkpoint.resolve_role(ref) if ":" in ref and not Path(ref).exists() else (
            Path(ref), None, checkpoint.read_run(ref))
        if info_json.get("status") != "complete":
            raise KDError(f"run {ref} is not complete (status {info_json.get('status')}); resume it first")
        key = (dataset or info_json["dataset"]["name"], data_dir, run_image_size(info_json))
        if key not in cache:
            data, info = _dataset_for(info_json, dataset, data_dir, ref)
            cache[key] = (data.load("test"), info)
        test, info = cache[key]
        _check_fits(info_json, info, ref)  # every run, not only the first to name this dataset
        models = load_run_models(run_dir, info_json, dev)
        teacher_logits = None
        if info_json.get("teacher"):
            teacher_ref = f"{info_json['teacher']['run']}:{info_json['teacher']['role']}"
            try:
                teacher, _ = checkpoint.load_run_model(teacher_ref, dev)
                teacher_logits = predict(teacher, test, info, dev, batch_size, dtype)
            except KDError:
                teacher_logits = None  # the teacher run was moved or deleted: agreement shown as —
        for role, (model, size) in models.items():
            if only_role and role != only_role:
                continue
            logits = predict(model, test, info, dev, batch_size, dtype)
            result = score(logits, test.labels)
            rows.append({
                "run": str(run_dir),
                "role": role,
                "model": getattr(getattr(model, "spec", None), "arch", type(model).__name__),
                "dataset": info.name,
                "top1": result["top1"],
                "top5": result["top5"],
                "params": sum(p.numel() for p in model.parameters()),
                "size_bytes": size,
                "cpu_latency_ms": round(cpu_latency_ms(model, info), 3) if measure_latency else None,
                "agreement": None if teacher_logits is None else agreement(logits, teacher_logits).item(),
            })
            model.to(dev)
    return rows


def churn(
    refs: list[str], dataset: str | None = None, data_dir: str | None = None, device: str = "auto",
    batch_size: int = 1024,
) -> list[dict[str, Any]]:
    """Prediction churn (Anil et al., ICLR 2018): the share of test images on which two models' top-1
    predictions differ, for every pair of the models named.

    One run given without a role: every pair of its saved models (the copies or peers of an online
    run). Otherwise each reference is one model: ``RUN`` (its primary model) or ``RUN:role``.
    """
    names_role = len(refs) == 1 and ":" in refs[0] and not Path(refs[0]).exists()
    if len(refs) == 1 and not names_role:
        info_json = checkpoint.read_run(refs[0])
        selected = [(Path(refs[0]), role, info_json) for role in info_json["roles"]]
    else:
        selected = [checkpoint.resolve_role(ref) for ref in refs]
    if len(selected) < 2:
        raise KDError(
            "churn compares two models or more: give two runs, RUN:role pairs, or one run with several models"
        )
    for run_dir, _, info_json in selected:
        if info_json.get("status") != "complete":
            raise KDError(f"run {run_dir} is not complete (status {info_json.get('status')}); resume it first")
    data, info = _dataset_for(selected[0][2], dataset, data_dir, str(selected[0][0]))
    for run_dir, _, info_json in selected[1:]:
        stored = info_json["dataset"]
        if any(stored[key] != getattr(info, key) for key in ("num_classes", "channels", "image_size")):
            raise KDError(f"run {run_dir} was trained on {stored['name']}, which does not fit {info.name}: no churn")
    test = data.load("test")
    dev = select_device(device)
    setup_device(dev)
    dtype = resolve_precision("auto", dev)
    predictions = []
    for run_dir, role, info_json in selected:
        model, _ = checkpoint.load_model(run_dir / info_json["roles"][role]["file"], dev)
        predictions.append((f"{run_dir}:{role}", predict(model, test, info, dev, batch_size, dtype).argmax(1)))
    rows = []
    for i, (name_a, pred_a) in enumerate(predictions):
        for name_b, pred_b in predictions[i + 1:]:
            rows.append({
                "a": name_a,
                "b": name_b,
                "dataset": info.name,
                "churn": (pred_a != pred_b).float().mean().item(),
                "images": int(pred_a.numel()),
            })
    return rows
