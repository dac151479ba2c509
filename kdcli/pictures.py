"""What a person looks at: loss/accuracy curves (``curves.png``) and image grids (``samples.png``), as PNG.

Drawn with Pillow (already a torchvision dependency), so kd needs no plotting library.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from kdcli.checkpoint import _atomic

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _save_png(image: Image.Image, path: Path) -> None:
    _atomic(path, lambda tmp: image.save(tmp, format="PNG"))


# ---------------------------------------------------------------------------------------------
# Pictures. Everything is laid out in final-pixel units and drawn at SUPERSAMPLE× size, then scaled
# down, which gives smooth lines and text without a plotting library.

SUPERSAMPLE = 2
CURVES_WIDTH = 1000
_PLOT_LEFT, _PLOT_RIGHT = 78, 760  # plot area; the legend lives to its right, never over the lines
_LEGEND_LEFT = _PLOT_RIGHT + 18
_PANEL_MIN_HEIGHT = 280
_PANEL_TOP = 40  # above a plot area: panel title
_PANEL_BOTTOM = 54  # below a plot area: epoch tick labels and the "epoch" title
_BOTTOM_MARGIN = 8
_LEGEND_ROW = 18
_TEXT, _TITLE = 13, 15  # font sizes
_INK, _MUTED, _GRID, _FRAME = (20, 20, 20), (90, 90, 90), (228, 228, 228), (150, 150, 150)
MIN_ACCURACY_SPAN = 20.0  # percentage points: a narrower accuracy axis would magnify epoch-to-epoch noise
# tab10, then ten darker colours for runs with many roles (8 peers + ensemble + training rates)
_COLOURS = PALETTE + [(0, 63, 92), (160, 82, 45), (0, 100, 0), (128, 0, 0), (75, 0, 130), (184, 134, 11),
                      (199, 21, 133), (47, 79, 79), (85, 107, 47), (0, 139, 139)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's scalable default font (Pillow ≥ 10.1 with FreeType), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # older Pillow (no ``size``) or Pillow built without FreeType
        return ImageFont.load_default()


def _nice_step(span: float, target: int) -> float:
    """A 1/2/2.5/5 × 10^k step dividing ``span`` into about ``target`` intervals."""
    raw = max(span, 1e-12) / max(1, target)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * magnitude >= raw * (1 - 1e-9):
            return m * magnitude
    return 10.0 * magnitude


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 10) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _decimals(step: float) -> int:
    for d in range(7):
        if abs(round(step, d) - step) <= 1e-9 * max(1.0, abs(step)):
            return d
    return 6


def epoch_ticks(n: int, first: int = 1) -> list[int]:
    """Integer epoch ticks for epochs ``first..n``: every epoch up to 10 of them, else multiples of a
    1/2/5 × 10^k step, the smallest that gives at most 10 ticks."""
    if n < first:
        return []
    if n - first < 10:
        return list(range(first, n + 1))
    magnitude = 1
    while True:
        for m in (1, 2, 5):
            step = m * magnitude
            ticks = list(range(-(-first // step) * step, n + 1, step))
            if len(ticks) <= 10:
                return ticks
        magnitude *= 10


def accuracy_axis_range(values: Sequence[float | None]) -> tuple[float, float]:
    """The accuracy axis (percent) for ``values`` (percent; None/NaN ignored): up to 100, from the multiple
    of 10 at or below the lowest value, but spanning at least ``MIN_ACCURACY_SPAN`` points so that noise
    between epochs (97.1 → 97.4) is not blown up to fill the panel. No values: 0–100."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    hi = max(100.0, 10.0 * math.ceil(max(finite) / 10.0))
    lo = min(10.0 * math.floor(min(finite) / 10.0), hi - MIN_ACCURACY_SPAN)
    return max(0.0, lo) if min(finite) >= 0 else lo, hi


def loss_axis_range(values: Sequence[float | None]) -> tuple[float, float, float]:
    """``(lo, hi, step)`` for losses: nice round limits around the data, starting at 0 when the data are
    non-negative and the lowest is under half the highest (so a falling loss is seen against zero)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0, 0.2
    vmin, vmax = min(finite), max(finite)
    if 0 <= vmin <= 0.5 * vmax:
        vmin = 0.0
    if vmax - vmin < 1e-12:
        pad = abs(vmax) * 0.1 or 1.0
        vmin, vmax = (vmin - pad if vmin != 0 else 0.0), vmax + pad
    step = _nice_step(vmax - vmin, 5)
    lo, hi = math.floor(vmin / step + 1e-9) * step, math.ceil(vmax / step - 1e-9) * step
    return lo, max(hi, lo + step), step


class _Canvas:
    """A white RGB picture drawn in final-pixel coordinates at ``SUPERSAMPLE``× resolution."""

    def __init__(self, width: int, height: int) -> None:
        self.size = (width, height)
        self.s = SUPERSAMPLE if isinstance(_font(_TEXT), ImageFont.FreeTypeFont) else 1  # bitmap text can't scale
        self.image = Image.new("RGB", (width * self.s, height * self.s), "white")
        self.draw = ImageDraw.Draw(self.image)
        self._fonts: dict[int, Any] = {}

    def font(self, size: int) -> Any:
        if size not in self._fonts:
            self._fonts[size] = _font(size * self.s)
        return self._fonts[size]

    def text_width(self, text: str, size: int = _TEXT) -> float:
        left, _, right, _ = self.draw.textbbox((0, 0), text, font=self.font(size))
        return (right - left) / self.s

    def fit(self, text: str, width: float, size: int = _TEXT) -> str:
        """``text``, shortened with an ellipsis to fit ``width``."""
        if self.text_width(text, size) <= width:
            return text
        while text and self.text_width(text + "…", size) > width:
            text = text[:-1]
        return text + "…"

    def text(self, x: float, y: float, text: str, size: int = _TEXT, fill: tuple = _INK, anchor: str = "lt") -> None:
        """Draw ``text`` with its ink box aligned at (x, y): anchor[0] in l/m/r, anchor[1] in t/m/b."""
        font = self.font(size)
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font)
        _, m_top, _, m_bottom = self.draw.textbbox((0, 0), "0", font=font)  # align on digit height, not per-string
        ox = {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
        oy = {"t": m_top, "m": (m_top + m_bottom) / 2, "b": m_bottom}[anchor[1]]
        self.draw.text((x * self.s - ox, y * self.s - oy), text, fill=fill, font=font)

    def vertical_text(self, x: float, y: float, text: str, size: int = _TEXT, fill: tuple = _INK) -> None:
        """``text`` rotated to read bottom-to-top, centred on (x, y)."""
        font = self.font(size)
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font)
        mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
        ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
        mask = mask.rotate(90, expand=True)
        corner = (round(x * self.s - mask.width / 2), round(y * self.s - mask.height / 2))
        self.image.paste(Image.new("RGB", mask.size, fill), corner, mask)

    def line(self, points: Sequence[tuple[float, float]], fill: tuple, width: float = 1.0,
             style: str = "solid") -> None:
        xy = [(x * self.s, y * self.s) for x, y in points]
        w = max(1, round(width * self.s))
        if style == "solid" or len(xy) < 2:
            if len(xy) >= 2:
                self.draw.line(xy, fill=fill, width=w, joint="curve")
            return
        on, off = (7.0, 4.0) if style == "dashed" else (1.6, 2.4)  # dotted
        on, off = on * self.s * max(1.0, width / 1.5), off * self.s * max(1.0, width / 1.5)
        drawing, left = True, on
        for (xa, ya), (xb, yb) in zip(xy, xy[1:]):
            length, done = math.hypot(xb - xa, yb - ya), 0.0
            while done < length - 1e-9:
                step = min(left, length - done)
                if drawing:
                    t0, t1 = done / length, (done + step) / length
                    self.draw.line([(xa + (xb - xa) * t0, ya + (yb - ya) * t0),
                                    (xa + (xb - xa) * t1, ya + (yb - ya) * t1)], fill=fill, width=w)
                done, left = done + step, left - step
                if left <= 1e-9:
                    drawing = not drawing
                    left = on if drawing else off

    def marker(self, x: float, y: float, fill: tuple, style: str, radius: float = 3.0) -> None:
        r, cx, cy = radius * self.s, x * self.s, y * self.s
        if style == "dashed":  # test: a ring
            self.draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill="white", outline=fill, width=max(1, self.s))
        elif style == "dotted":  # training rates: a small square
            r *= 0.8
            self.draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            self.draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)

    def finish(self) -> Image.Image:
        if self.s == 1:
            return self.image
        return self.image.resize(self.size, Image.LANCZOS)


class _Series:
    def __init__(self, label: str, style: str, role: str | None = None) -> None:
        self.label, self.style, self.role = label, style, role
        self.points: list[tuple[float, float | None]] = []
        self.colour: tuple = _INK

    def values(self) -> list[float]:
        return [y for _, y in self.points if y is not None]


def _number(value: Any) -> float | None | bool:
    """A finite float; None for a gap (None, NaN, ±inf); False for a value that is not a number at all."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return float(value) if math.isfinite(value) else None


def _collect(history: Sequence[dict[str, Any]]) -> tuple[list[_Series], list[_Series], list[float]]:
    """Loss series, accuracy series (percent) and the epochs, from history rows."""
    losses: dict[str, _Series] = {}
    rates: dict[str, _Series] = {}
    epochs: list[float] = []
    for row in history:
        x = _number(row.get("epoch"))
        if x is None or x is False:
            continue
        epochs.append(x)
        for key, value in row.items():
            y = _number(value)
            if y is False or key in ("epoch", "time_s", "lr"):
                continue
            split, _, role = key.partition("_top1/")
            if split in ("val", "test") and role:
                label = f"val {role}" if split == "val" else f"test {role} (curve)"
                series = rates.setdefault(key, _Series(label, "solid" if split == "val" else "dashed", role))
            elif "acc" in key or "agree" in key:  # training rates in [0, 1], not losses
                series = rates.setdefault(key, _Series(key.replace("train_", "train ", 1), "dotted"))
            elif key.startswith("train_"):
                series = losses.setdefault(key, _Series(key[len("train_"):], "solid"))
                series.points.append((x, y))
                continue
            else:
                continue
            series.points.append((x, None if y is None else 100.0 * y))
    for i, series in enumerate(losses.values()):
        series.colour = _COLOURS[i % len(_COLOURS)]
    roles = list(dict.fromkeys(s.role for s in rates.values() if s.role is not None))
    others = [s for s in rates.values() if s.role is None]
    for series in rates.values():
        index = roles.index(series.role) if series.role is not None else len(roles) + others.index(series)
        series.colour = _COLOURS[index % len(_COLOURS)]
    # validation lines last, on top: they are what model selection uses
    order = {"dotted": 0, "dashed": 1, "solid": 2}
    return list(losses.values()), sorted(rates.values(), key=lambda s: order[s.style]), epochs


def _legend(series: list[_Series], rows: int) -> list[tuple[str, tuple, str]]:
    """Legend entries ``(label, colour, style)``: one per line while they fit in ``rows``; otherwise one
    colour per role plus a key to the line styles (val solid, test dashed)."""
    roles = list(dict.fromkeys(s.role for s in series if s.role is not None))
    by_role = sorted((s for s in series if s.role is not None), key=lambda s: (roles.index(s.role), s.style != "solid"))
    others = [s for s in series if s.role is None]
    entries = [(s.label, s.colour, s.style) for s in by_role + others]
    if len(entries) <= rows:
        return entries
    compact = [(role, next(s.colour for s in by_role if s.role == role), "swatch") for role in roles]
    compact += [(s.label, s.colour, s.style) for s in others]
    styles = {s.style for s in by_role}
    key = [("val", _INK, "solid")] * ("solid" in styles) + [("test (curve)", _INK, "dashed")] * ("dashed" in styles)
    return compact + [("", _INK, "gap")] * bool(key) + key


def _panel(canvas: _Canvas, top: float, height: float, title: str, y_title: str, series: list[_Series],
           legend: list[tuple[str, tuple, str]], x_range: tuple[float, float], x_ticks: list[int],
           y_range: tuple[float, float, float], markers: bool) -> None:
    x0, x1, y0, y1 = _PLOT_LEFT, _PLOT_RIGHT, top, top + height
    (xlo, xhi), (ylo, yhi, ystep) = x_range, y_range
    inset = 10.0  # keep the first and last epoch off the frame

    def px(x: float) -> float:
        return x0 + inset + (x - xlo) / (xhi - xlo) * (x1 - x0 - 2 * inset)

    def py(y: float) -> float:
        return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    canvas.text(x0, y0 - 14, title, size=_TITLE, anchor="lb")
    decimals = _decimals(ystep)
    for tick in _ticks(ylo, yhi, ystep):
        canvas.line([(x0, py(tick)), (x1, py(tick))], _GRID)
        canvas.line([(x0 - 4, py(tick)), (x0, py(tick))], _FRAME)
        canvas.text(x0 - 7, py(tick), f"{tick:.{decimals}f}", fill=_MUTED, anchor="rm")
    for tick in x_ticks:
        canvas.line([(px(tick), y0), (px(tick), y1)], _GRID)
        canvas.line([(px(tick), y1), (px(tick), y1 + 4)], _FRAME)
        canvas.text(px(tick), y1 + 8, str(tick), fill=_MUTED, anchor="mt")
    canvas.line([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], _FRAME)
    canvas.text((x0 + x1) / 2, y1 + 30, "epoch", anchor="mt")
    canvas.vertical_text(20, (y0 + y1) / 2, y_title)
    if not any(s.values() for s in series):
        canvas.text((x0 + x1) / 2, (y0 + y1) / 2, "no data", fill=_MUTED, anchor="mm")
    for s in series:
        width = 1.5 if s.style == "dotted" else 2.0
        run: list[tuple[float, float]] = []
        for x, y in s.points + [(0.0, None)]:  # None ends a run: gaps (NaN, None) are not bridged
            if y is not None:
                run.append((px(x), py(y)))
                continue
            canvas.line(run, s.colour, width, s.style)
            for mx, my in run if markers or len(run) == 1 else []:
                canvas.marker(mx, my, s.colour, s.style)
            run = []
    # the legend, to the right of the plot area
    text_width = CURVES_WIDTH - _LEGEND_LEFT - 44
    for i, (label, colour, style) in enumerate(legend):
        cy = y0 + 8 + i * _LEGEND_ROW
        if style == "gap":
            continue
        if style == "swatch":
            canvas.draw.rectangle([(_LEGEND_LEFT + 6) * canvas.s, (cy - 5) * canvas.s,
                                   (_LEGEND_LEFT + 18) * canvas.s, (cy + 5) * canvas.s], fill=colour)
        else:
            canvas.line([(_LEGEND_LEFT, cy), (_LEGEND_LEFT + 28, cy)], colour, 1.5 if style == "dotted" else 2.0, style)
            if markers:
                canvas.marker(_LEGEND_LEFT + 14, cy, colour, style)
        canvas.text(_LEGEND_LEFT + 36, cy, canvas.fit(label, text_width), fill=_INK, anchor="lm")


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Two panels against epoch: training losses, and accuracies in percent — validation per role (solid),
    optional per-epoch test curves ``test_top1/<role>`` (dashed: for reference, never used for selection),
    and training accuracy/agreement (dotted). Legends sit to the right of the plots."""
    losses, rates, epochs = _collect(history)
    first, last = (int(min(epochs)), int(max(epochs))) if epochs else (1, 1)
    x_range = (first - 0.5, last + 0.5) if first == last else (float(min(epochs)), float(max(epochs)))
    x_ticks = epoch_ticks(last, first) if epochs else []
    markers = len(set(epochs)) <= 25
    rows = int(_PANEL_MIN_HEIGHT - 8) // _LEGEND_ROW
    loss_legend = [(s.label, s.colour, s.style) for s in losses]
    rate_legend = _legend(rates, rows)
    heights = [max(_PANEL_MIN_HEIGHT, 8 + len(legend) * _LEGEND_ROW) for legend in (loss_legend, rate_legend)]
    total = _PANEL_TOP + heights[0] + _PANEL_BOTTOM + _PANEL_TOP + heights[1] + _PANEL_BOTTOM + _BOTTOM_MARGIN
    canvas = _Canvas(CURVES_WIDTH, total)
    lo, hi, step = loss_axis_range([v for s in losses for v in s.values()])
    _panel(canvas, _PANEL_TOP, heights[0], "training losses", "loss", losses, loss_legend, x_range, x_ticks,
           (lo, hi, step), markers)
    lo, hi = accuracy_axis_range([v for s in rates for v in s.values()])
    title = "accuracy" + (" (dashed test curves: for reference, never used for selection)"
                          if any(s.style == "dashed" for s in rates) else "")
    _panel(canvas, 2 * _PANEL_TOP + heights[0] + _PANEL_BOTTOM, heights[1], title, "accuracy %", rates,
           rate_legend, x_range, x_ticks, (lo, hi, _nice_step(hi - lo, 10)), markers)
    _save_png(canvas.finish(), path)


def curves_size(history: list[dict[str, Any]]) -> tuple[int, int]:
    """The pixel size ``plot_curves`` gives ``history``: fixed, taller only when a legend needs more rows."""
    losses, rates, _ = _collect(history)
    rows = int(_PANEL_MIN_HEIGHT - 8) // _LEGEND_ROW
    heights = [max(_PANEL_MIN_HEIGHT, 8 + n * _LEGEND_ROW) for n in (len(losses), len(_legend(rates, rows)))]
    return CURVES_WIDTH, 2 * (_PANEL_TOP + _PANEL_BOTTOM) + sum(heights) + _BOTTOM_MARGIN


_LABEL_PAD = 6
_LABEL_MAX_WIDTH = 160


def _label_font(row_height: int) -> Any:
    return _font(max(8, min(16, int(row_height * 0.6))))


def _fit_label(draw: ImageDraw.ImageDraw, text: str, font: Any) -> str:
    def width(s: str) -> float:
        left, _, right, _ = draw.textbbox((0, 0), s, font=font)
        return right - left

    if width(text) <= _LABEL_MAX_WIDTH:
        return text
    while text and width(text + "…") > _LABEL_MAX_WIDTH:
        text = text[:-1]
    return text + "…"


def row_label_margin(labels: Sequence[str], row_height: int) -> int:
    """Width in pixels of the left margin ``image_grid`` adds for ``labels`` on rows ``row_height`` tall."""
    font, draw = _label_font(row_height), ImageDraw.Draw(Image.new("L", (1, 1)))
    widest = 0
    for label in labels:
        left, _, right, _ = draw.textbbox((0, 0), _fit_label(draw, str(label), font), font=font)
        widest = max(widest, right - left)
    return widest + 2 * _LABEL_PAD


def image_grid(images: torch.Tensor, rows: int, path: Path, scale: int = 2,
               row_labels: Sequence[str] | None = None) -> None:
    """Save ``images`` (float ``[N, C, H, W]`` in [0, 1] or uint8) as a ``rows``-row grid PNG, each image
    scaled ``scale``× (nearest neighbour, so pixels stay exact). With ``row_labels`` (one per row) each row
    is named in a left margin ``row_label_margin(row_labels, (H + 1) * scale)`` pixels wide."""
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
    if row_labels is not None:
        labels = [str(label) for label in row_labels]
        if len(labels) != rows:
            raise ValueError(f"image_grid: {len(labels)} row labels for {rows} rows")
        row_height = (h + 1) * scale
        margin = row_label_margin(labels, row_height)
        labelled = Image.new(picture.mode, (margin + picture.width, picture.height), 255 if c == 1 else "white")
        labelled.paste(picture, (margin, 0))
        draw, font = ImageDraw.Draw(labelled), _label_font(row_height)
        ink = 0 if c == 1 else (0, 0, 0)
        _, m_top, _, m_bottom = draw.textbbox((0, 0), "0", font=font)
        for r, label in enumerate(labels):
            label = _fit_label(draw, label, font)
            left, _, right, _ = draw.textbbox((0, 0), label, font=font)
            centre = (1 + r * (h + 1) + h / 2) * scale
            draw.text((margin - _LABEL_PAD - right, centre - (m_top + m_bottom) / 2), label, fill=ink, font=font)
        picture = labelled
    _save_png(picture, path)
