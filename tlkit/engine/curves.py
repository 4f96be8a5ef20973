"""curves.png: loss and accuracy per epoch over all the stages of a run, redrawn during training
by a Keras callback so that a long run can be watched.

A leaf below the training core (it needs only Keras, matplotlib and tlkit._util.io), so the core's
compile-and-fit can add the callback. Drawn on matplotlib's Agg canvas, never pyplot.

`any_script` is how every picture of tlkit draws text: class names in any script, emoji too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import keras
import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tlkit._util.io import write_atomic
from tlkit.rundir.files import RunDir

_DPI = 100
# Noto fonts that come as Python packages (the CJK one first: it covers the most), each file
# registered with matplotlib.
FONT_PACKAGES = ("manimgx_fonts_cjk", "manimgx_fonts")


@functools.cache
def _fallback_fonts() -> tuple[str, ...]:
    """The families of the FONT_PACKAGES installed, registered with matplotlib, in that order."""
    families: list[str] = []
    files: list[str] = []
    for package in FONT_PACKAGES:
        try:
            found = resources.files(package).iterdir()
        except ModuleNotFoundError:
            continue
        files += sorted(str(f) for f in found if f.name.endswith((".ttf", ".otf", ".ttc")))
    for file in files:
        font_manager.fontManager.addfont(file)
        name = font_manager.get_font(file).family_name  # of a collection (.ttc), its first face's
        if name not in families:
            families.append(name)
    # These are variable fonts, registered with the weight of their default instance (Noto Sans
    # CJK's is 100), the only one matplotlib draws: call it normal, or each lookup of normal text
    # logs that there is none.
    manager = font_manager.fontManager
    manager.ttflist = [dataclasses.replace(entry, weight=400) if entry.fname in files else entry
                       for entry in manager.ttflist]
    return tuple(families)


@contextlib.contextmanager
def any_script():
    """Text made inside (a context or a decorator) falls back, glyph by glyph, from DejaVu Sans
    (matplotlib's own) to the Noto fonts of FONT_PACKAGES, so that a class named in Chinese,
    Arabic or with an emoji is drawn, not as empty boxes. matplotlib fixes a text's fonts when
    the text is made: wrap the whole drawing."""
    with matplotlib.rc_context({"font.family": ["DejaVu Sans", *_fallback_fonts()]}):
        yield


@any_script()
def plot_curves(stages: Sequence[tuple[str, dict]], out: str | Path) -> Path | None:
    """curves.png: loss and accuracy per epoch, training and validation, over all stages on one
    epoch axis; each stage is shaded and named, the epoch with the lowest validation loss (the
    one checkpoints/best.keras holds) is marked. `stages`: (name, Keras history) in order.
    Nothing is drawn before the first epoch."""
    epochs = [len(h.get("loss", [])) for _, h in stages]
    if not sum(epochs):
        return None

    def series(key):
        return np.concatenate([np.asarray(h.get(key, [np.nan] * e), float) for (_, h), e in zip(stages, epochs)])

    x = np.arange(1, sum(epochs) + 1)
    has_accuracy = any("accuracy" in h for _, h in stages)
    fig = Figure(figsize=(11 if has_accuracy else 6, 4.2), dpi=_DPI, facecolor="white")
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if has_accuracy else [])
    val_loss = series("val_loss")
    best = int(np.nanargmin(val_loss)) if np.isfinite(val_loss).any() else None
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.plot(x, series(key), "o-", color="#1f77b4", markersize=3.5, label="training")
        ax.plot(x, series(f"val_{key}"), "s--", color="#d62728", markersize=3.5, label="validation")
        start = 0
        for s, ((name, _), e) in enumerate(zip(stages, epochs)):
            if s % 2:
                ax.axvspan(start + 0.5, start + e + 0.5, color="#f0f0f0", zorder=0)
            if s:
                ax.axvline(start + 0.5, color="#888888", linewidth=0.8)
            if e:
                ax.text(start + 0.5 + e / 2, 1.01, name, transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=9, color="#333333")
            start += e
        if best is not None:
            value = series(f"val_{key}")[best]
            ax.plot([best + 1], [value], marker="*", markersize=14, color="#ff9900", markeredgecolor="black",
                    linestyle="none", label=f"best epoch {best + 1} (lowest val_loss)", zorder=5)
        ax.set_xlabel("epoch (all stages)")
        ax.set_ylabel(title)
        ax.set_xlim(0.5, len(x) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=min(len(x), 12), integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    canvas = FigureCanvasAgg(fig)
    write_atomic(Path(out), lambda tmp: canvas.print_png(str(tmp)))
    return Path(out)


class TrainingCurves(keras.callbacks.Callback):
    """Redraws RUN/curves.png after an epoch when `every` seconds have passed since the last
    drawing, and at the end of every stage, so a long run can be watched. Drawing takes about a
    fifth of a second: after every epoch of a small dataset it was the largest cost tlkit added to
    Keras' own loop (bench/run.py, P3), while an epoch of a real dataset outlasts `every` anyway.

    One instance follows a whole run: `stage(name)` before each stage's `fit` starts a new
    stage on the same epoch axis, and the callback itself goes into that `fit`."""

    def __init__(self, run_dir: str | Path, every: float = 10.0):
        super().__init__()
        self.out = RunDir(run_dir).curves
        self.every = every
        self.stages: list[tuple[str, dict]] = []
        self.drawn: float | None = None  # time.monotonic() of the last drawing
        self.pending = False

    def stage(self, name: str) -> TrainingCurves:
        self.stages.append((name, {}))
        return self

    def on_epoch_end(self, epoch, logs=None):
        if not self.stages:
            self.stage("training")
        history = self.stages[-1][1]
        for key, value in (logs or {}).items():
            history.setdefault(key, []).append(float(value))
        self.pending = True
        if self.drawn is None or time.monotonic() - self.drawn >= self.every:
            self.draw()

    def on_train_end(self, logs=None):
        if self.pending:
            self.draw()

    def draw(self):
        plot_curves(self.stages, self.out)
        self.drawn, self.pending = time.monotonic(), False
