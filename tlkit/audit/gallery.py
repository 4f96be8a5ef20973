"""The audit's galleries: label_issues.png, duplicates.png, outliers.png. Each image a thumbnail
under a caption (given label, suggested label or group, score, file name), MAX_SHOWN at most,
worst first; the rest are in issues.csv."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlkit._util.io import write_atomic
from tlkit.data.pipeline import load_images
from tlkit.engine.curves import any_script

MAX_SHOWN = 60
PER_ROW = 6
TILE = 1.7  # inches
THUMB = 128  # pixels

TITLES = {
    "label_issue": "label issues, worst first: the label given and the one the out-of-fold heads suggest",
    "duplicate": "near-duplicates by group (across the split first, then across classes)",
    "outlier": "blank images, then outliers: farthest from their nearest images in feature space",
}


def _caption(row: dict) -> str:
    name = Path(row["path"]).name
    name = name if len(name) <= 24 else name[:23] + "…"
    if row["kind"] == "label_issue":
        head = f"given {row['given']}\nsuggested {row['suggested']}"
    elif row["kind"] == "duplicate":
        head = f"group {row['group']}: {row['given']}\n{row['split']}, {row['score']} bits"
    else:
        head = f"{row['kind']}: {row['given']}\nscore {row['score']}"
    return f"{head}\n{name}"


@any_script()
def draw(rows: list[dict], out: Path, kind: str) -> Path:
    """A gallery of `rows` (issues.csv rows of one kind) in `out`; a note alone when there are none."""
    shown = rows[:MAX_SHOWN]
    per_row = min(PER_ROW, max(len(shown), 1))
    n_rows = math.ceil(len(shown) / per_row)
    caption_h, title_h = 0.62, 0.5
    width = max(per_row * (TILE + 0.15) + 0.15, 6.0)
    height = n_rows * (TILE + caption_h) + title_h + (0 if shown else 0.3)
    fig = Figure(figsize=(width, height), dpi=100, facecolor="white")
    more = f"; {len(rows) - len(shown)} more in issues.csv" if len(rows) > len(shown) else ""
    fig.suptitle(f"{len(rows)} {TITLES[kind]}{more}" if rows else f"no {kind.replace('_', ' ')}s found",
                 fontsize=10, y=1 - 0.15 / height)
    images = load_images([r["path"] for r in shown], (THUMB, THUMB), 3) / 255.0 if shown else []
    groups = sorted({r["group"] for r in shown if r["group"] != ""}, key=str)
    for k, (row, image) in enumerate(zip(shown, images)):
        r, c = divmod(k, per_row)
        x0 = 0.15 + c * (TILE + 0.15)
        y0 = height - title_h - (r + 1) * (TILE + caption_h) + 0.05
        ax = fig.add_axes((x0 / width, y0 / height, TILE / width, TILE / height))
        ax.imshow(np.clip(image, 0, 1), interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        if kind == "duplicate":  # a frame colour per group, so that a group reads as one across rows
            colour = f"C{groups.index(row['group']) % 10}"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
        fig.text((x0 + TILE / 2) / width, (y0 + TILE + 0.03) / height, _caption(row), ha="center", va="bottom",
                 fontsize=7.5, linespacing=1.1)
    canvas = FigureCanvasAgg(fig)
    write_atomic(out, lambda tmp: canvas.print_png(str(tmp)))
    return out
