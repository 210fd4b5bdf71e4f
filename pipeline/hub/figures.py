"""PNG histograms of the seed space for the dataset card (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.io import write_png


def bar_chart(rows: list[dict[str, Any]], title: str, path: Path, distinct: int | None = None,
              total: int | None = None) -> Path:
    """A horizontal bar chart of ``rows`` ({"value", "rows"}), largest on top, saved as PNG at ``path``.

    ``distinct`` (values in all) and ``total`` (rows counted) go in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = [_short(str(r["value"])) for r in rows][::-1]
    counts = [r["rows"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    ax.barh(labels, counts, color="tab:blue")
    shown = f"top {len(rows)} of {distinct} values" if distinct and distinct > len(rows) else f"{len(rows)} values"
    ax.set(xlabel="rows", title=f"{title} ({shown}{f' over {total:,} rows' if total else ''})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts of rows
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return write_png(fig, path, dpi=100)


def seed_figures(seeds: dict[str, Any] | None, folder: Path) -> dict[str, str]:
    """One PNG per seed field under ``folder``; returns field -> file name (for the card's links)."""
    if not seeds:
        return {}
    names = {}
    for field, summary in seeds.items():
        name = f"seed_{field}.png"
        bar_chart(summary["top"], f"{field}s", Path(folder) / name, summary["distinct"], summary["rows"])
        names[field] = name
    return names


def _short(label: str, width: int = 60) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
