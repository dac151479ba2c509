"""What a person sees: rich tables, JSON, loss/accuracy curves and image grids as PNG files.

Pictures are drawn with Pillow (already a torchvision dependency) so kd needs no plotting library.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

from kdcli.checkpoint import _atomic

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], console: Console | None = None) -> None:
    table = Table(title=title, header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    # piped output (CI logs, `| less`) keeps the whole table instead of rich's 80-column default
    (console or Console(width=None if sys.stdout.isatty() else max(120, shutil.get_terminal_size().columns))).print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.2f}"
    return str(value)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _save_png(image: Image.Image, path: Path) -> None:
    _atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
           series: dict[str, list[tuple[float, float]]], font: ImageFont.ImageFont) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0, y0 - 14), title, fill=(0, 0, 0), font=font)
    points = [p for pts in series.values() for p in pts if math.isfinite(p[1])]
    if not points:
        return
    xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
    ymin, ymax = min(p[1] for p in points), max(p[1] for p in points)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymax = ymin + 1e-6
    pad = 0.05 * (ymax - ymin)
    ymin, ymax = ymin - pad, ymax + pad
    for frac in (0.0, 0.5, 1.0):
        y = y1 - frac * (y1 - y0)
        draw.line([(x0, y), (x0 + 4, y)], fill=(0, 0, 0))
        draw.text((x0 + 6, y - 6), f"{ymin + frac * (ymax - ymin):.3g}", fill=(90, 90, 90), font=font)
    draw.text((x1 - 60, y1 + 4), f"epoch {int(xmax)}", fill=(90, 90, 90), font=font)
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        xy = [(x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))
              for x, y in pts if math.isfinite(y)]
        if len(xy) == 1:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=colour)
        elif xy:
            draw.line(xy, fill=colour, width=2)
        draw.text((x0 + 60, y0 + 4 + 12 * i), name, fill=colour, font=font)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Two panels: training losses, and accuracies (train and validation per role), against epoch."""
    losses: dict[str, list[tuple[float, float]]] = {}
    accs: dict[str, list[tuple[float, float]]] = {}
    for row in history:
        x = float(row["epoch"])
        for key, value in row.items():
            if not isinstance(value, (int, float)) or key in ("epoch", "time_s", "lr"):
                continue
            if key.startswith("val_top1/") or "acc" in key or "agree" in key:  # rates in [0, 1], not losses
                accs.setdefault(key.replace("val_top1/", "val ").replace("train_", "train "), []).append((x, value))
            elif key.startswith("train_"):
                losses.setdefault(key.replace("train_", ""), []).append((x, value))
    width, height = 900, 360
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    _panel(draw, (50, 30, 430, 320), "training losses", losses, font)
    _panel(draw, (500, 30, 880, 320), "accuracy", accs, font)
    _save_png(image, path)


def image_grid(images: torch.Tensor, rows: int, path: Path, scale: int = 2) -> None:
    """Save ``images`` (float ``[N, C, H, W]`` in [0, 1] or uint8) as a ``rows``-row grid PNG."""
    if images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    n, c, h, w = images.shape
    cols = max(1, math.ceil(n / rows))
    grid = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = images[i]
    array = grid.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if c == 1 else array[:, :, :3], mode="L" if c == 1 else "RGB")
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    _save_png(picture, path)
