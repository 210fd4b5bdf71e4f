"""report.png of the filter stage: the edu_score histogram and the removal waterfall, drawn with Pillow.

Two bar charts need no plotting library: matplotlib's import and one ``savefig`` cost as much as
filtering a small corpus, where Pillow draws the same panels at a fraction of it. Pillow (a
matplotlib dependency) brings its own scalable font.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_path

WIDTH, HEIGHT = 1320, 495
BLUE, ORANGE, RED, GREEN = (31, 119, 180), (255, 127, 14), (214, 39, 40), (44, 160, 44)
INK, GRID = (40, 40, 40), (225, 225, 225)


def plot_report(path: Path, table: list[dict[str, Any]], bins: np.ndarray, scored: np.ndarray,
                kept: np.ndarray) -> Path:
    """report.png: edu_score histogram (counts per bin, scored vs kept) and the removal waterfall."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, right = (70, 50, WIDTH // 2 - 30, HEIGHT - 70), (WIDTH // 2 + 70, 50, WIDTH - 30, HEIGHT - 120)
    scored, kept = np.asarray(scored, dtype=float), np.asarray(kept, dtype=float)
    if scored.sum():
        top = _axes(draw, left, "edu_score", float(scored.max()), "edu_score", "documents")
        x = _scale(np.asarray(bins, dtype=float), bins[0], bins[-1], left[0], left[2])
        for counts, color in ((scored, BLUE), (kept, ORANGE)):
            for k, n in enumerate(counts):
                if n:
                    draw.rectangle((x[k], _y(n, top, left), x[k + 1] - 1, left[3]), fill=color)
        _legend(draw, left, [(f"scored ({int(scored.sum()):,})", BLUE), (f"kept ({int(kept.sum()):,})", ORANGE)])
    else:
        _axes(draw, left, "edu_score", 1.0, "edu_score", "documents")
        _text(draw, ((left[0] + left[2]) / 2, (left[1] + left[3]) / 2), "quality stage off: no edu_score", "mm")

    start = table[0]["docs_in"] if table else 0
    bars = [("input", start, 0, BLUE)] + [(r["stage"], r["docs_removed"], r["docs_out"], RED) for r in table]
    bars.append(("kept", table[-1]["docs_out"] if table else 0, 0, GREEN))
    top = _axes(draw, right, "documents removed per stage", max(start, 1) * 1.1, None, "documents")
    slot = (right[2] - right[0]) / len(bars)
    for k, (name, height, bottom, color) in enumerate(bars):
        x0, x1 = right[0] + slot * (k + 0.15), right[0] + slot * (k + 0.85)
        if height:
            draw.rectangle((x0, _y(bottom + height, top, right), x1, _y(bottom, top, right)), fill=color)
        if color == RED and height:
            _text(draw, ((x0 + x1) / 2, _y(bottom + height, top, right) - 2), f"-{height:,}", "mb", 12)
        _label(image, (x0 + x1) / 2, right[3] + 6, name)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False)
    return Path(path)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text(draw: Any, xy: tuple[float, float], text: str, anchor: str, size: int = 14) -> None:
    draw.text(xy, text, fill=INK, font=_font(size), anchor=anchor)


def _scale(values: np.ndarray, lo: float, hi: float, start: float, end: float) -> np.ndarray:
    return start + (values - lo) / ((hi - lo) or 1.0) * (end - start)


def _y(value: float, top: float, box: tuple[int, int, int, int]) -> float:
    return box[3] - value / (top or 1.0) * (box[3] - box[1])


def _axes(draw: Any, box: tuple[int, int, int, int], title: str, most: float, xlabel: str | None,
          ylabel: str) -> float:
    """Frame, title, labels and 5 horizontal grid lines of round counts; returns the y-axis top."""
    x0, y0, x1, y1 = box
    step = _round_step(most / 5)
    top = max(step * np.ceil(most / step), step)
    for tick in np.arange(0, top + step / 2, step):
        y = _y(tick, top, box)
        draw.line((x0, y, x1, y), fill=GRID)
        _text(draw, (x0 - 6, y), f"{int(tick):,}", "rm", 12)
    draw.rectangle(box, outline=INK)
    _text(draw, ((x0 + x1) / 2, y0 - 12), title, "ms", 16)
    if xlabel:
        _text(draw, ((x0 + x1) / 2, y1 + 40), xlabel, "mt")
        for value in np.linspace(0, 1, 6):
            _text(draw, (x0 + value * (x1 - x0), y1 + 6), f"{value:.1f}", "mt", 12)
    _text(draw, (x0 - 62, y0 - 12), ylabel, "ls", 12)
    return float(top)


def _round_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw`` (grid lines at round counts)."""
    raw = max(raw, 1.0)
    power = 10 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def _legend(draw: Any, box: tuple[int, int, int, int], entries: list[tuple[str, tuple[int, int, int]]]) -> None:
    x, y = box[2] - 180, box[1] + 10
    for k, (text, color) in enumerate(entries):
        draw.rectangle((x, y + 22 * k, x + 14, y + 22 * k + 14), fill=color)
        _text(draw, (x + 20, y + 22 * k + 7), text, "lm", 12)


def _label(image: Any, x: float, y: float, text: str) -> None:
    """A stage name under its bar, turned 30 degrees so long names do not overlap."""
    from PIL import Image, ImageDraw

    font = _font(12)
    box = font.getbbox(text)
    label = Image.new("RGBA", (box[2] + 4, box[3] + 4), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2, 2), text, fill=INK, font=font)
    turned = label.rotate(30, expand=True, resample=Image.BICUBIC)
    image.paste(turned, (int(x - turned.width), int(y)), turned)
