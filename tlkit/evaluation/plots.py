"""The evaluation's pictures:

    confusion.png     the confusion matrix in counts and normalised by row (each true class sums to 1)
    top_losses.png    the images with the highest loss, each with its Grad-CAM for the predicted class
    calibration.png   the reliability diagram: accuracy against confidence, before and after calibration

Pictures are drawn on matplotlib's Agg canvas (never pyplot), so no display is needed and a
user's backend is left alone.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from tlkit._util.io import write_atomic
from tlkit.data.pipeline import load_images
from tlkit.engine.curves import any_script
from tlkit.errors import TlkitError
from tlkit.evaluation.gradcam import gradcam, gradcam_layer, overlay
from tlkit.evaluation.visualize import DPI
from tlkit.models.calibration import ECE_BINS, ece, reliability

log = logging.getLogger(__name__)


TOP_LOSSES = 9




def _save(fig: Figure, out: Path) -> Path:
    canvas = FigureCanvasAgg(fig)
    write_atomic(out, lambda tmp: canvas.print_png(str(tmp)))
    return out


@any_script()
def plot_confusion(confusion: np.ndarray, classes: Sequence[str], out: str | Path) -> Path:
    """confusion.png: counts on the left, row-normalised (the share of each true class) on the
    right. The cells keep a readable size, so a large matrix makes a large picture; counts are
    written in the cells while they fit, and the names are shortened past 24 characters."""
    n = len(classes)
    names = [c if len(c) <= 24 else c[:23] + "…" for c in classes]
    cell = 0.5 if n <= 10 else 0.36 if n <= 25 else 0.3
    font = 10 if n <= 10 else 8 if n <= 25 else 7
    longest = max(len(s) for s in names)
    label_in = 0.35 + 0.062 * font / 7 * longest  # room for tick labels, in inches
    side = max(n * cell, 2.2)
    width, height = 2 * (side + label_in + 0.3) + 0.8, side + label_in + 1.0
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    for k, (values, title) in enumerate(((confusion, "counts"), (share, "share of each true class (row sums to 1)"))):
        left = (label_in + k * (side + label_in + 0.5) + 0.3) / width
        ax = fig.add_axes((left, (label_in + 0.2) / height, side / width, side / height))
        scale = values.max() if k == 0 else 1.0
        # a square-root colour scale, so that a cell of one or two mistakes is still seen beside a
        # diagonal of hundreds
        norm = PowerNorm(0.5, vmin=0, vmax=max(scale, 1e-9))
        ax.imshow(values, cmap="Blues", norm=norm, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        # names that fit under their column stay level; short ones slant, long ones stand up
        flat = longest * 0.6 * font / 72 < 0.9 * cell
        slant = not flat and longest <= 10 and n <= 10
        ax.set_xticks(range(n), names, rotation=0 if flat else 45 if slant else 90,
                      ha="right" if slant else "center", fontsize=font)
        ax.set_yticks(range(n), names, fontsize=font)
        ax.set_xlabel("predicted", fontsize=max(font, 8))
        ax.set_ylabel("true", fontsize=max(font, 8))
        ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="#dddddd", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        if n <= 60:
            for i in range(n):
                for j in range(n):
                    v = values[i, j]
                    if v == 0:
                        continue  # empty cells stay blank, so the mistakes stand out
                    text = f"{v:d}" if k == 0 else f"{v:.2f}".lstrip("0") if v < 1 else "1"
                    ax.text(j, i, text, ha="center", va="center", fontsize=font - (1 if k else 0),
                            color="white" if norm(v) > 0.6 else "black")
    fig.suptitle(f"confusion matrix: {int(confusion.sum())} images, {n} classes, accuracy "
                 f"{np.trace(confusion) / max(confusion.sum(), 1):.4f}", fontsize=12, y=1 - 0.25 / height)
    return _save(fig, Path(out))


def plot_reliability(before: np.ndarray, after: np.ndarray, truth: np.ndarray, temperature: float,
                     out: str | Path) -> Path:
    """calibration.png: per confidence bin, the accuracy of its images (bars) and their mean
    confidence (dots) against the diagonal a calibrated model would follow, before (left) and after (right) the temperature; the share of
    images in each bin under the bars, since a bin of three images says little."""
    fig = Figure(figsize=(9, 4.6), dpi=DPI, facecolor="white")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for k, (probabilities, title) in enumerate(((before, "before"), (after, f"after: temperature {temperature:.3g}"))):
        ax = fig.add_axes((0.07 + k * 0.49, 0.24, 0.41, 0.62))
        count, confidence, accuracy = reliability(probabilities, truth)
        filled = count > 0
        ax.bar(edges[:-1][filled], accuracy[filled], width=1 / ECE_BINS, align="edge", color="#4c72b0",
               edgecolor="white", label="accuracy")
        ax.plot((edges[:-1] + 0.5 / ECE_BINS)[filled], confidence[filled], "o", color="#c44e52", markersize=4,
                label="mean confidence")
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (largest probability)")
        if k == 0:
            ax.set_ylabel("accuracy")
        ax.set_title(f"{title}\nECE {ece(probabilities, truth):.4f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        share = fig.add_axes((0.07 + k * 0.49, 0.08, 0.41, 0.06), sharex=ax)
        share.bar(edges[:-1], count / max(count.sum(), 1), width=1 / ECE_BINS, align="edge", color="#999999")
        share.set_yticks([])
        share.set_ylabel("images", fontsize=8, rotation=0, ha="right", va="center")
        share.tick_params(labelbottom=False)
    fig.suptitle(f"reliability on the validation split ({len(truth)} images)", fontsize=12)
    return _save(fig, Path(out))


@any_script()
def plot_top_losses(model: keras.Model, classes: Sequence[str], files: Sequence[Path], truth: Sequence[int],
                    out: str | Path, blocks: dict | None = None, probabilities: np.ndarray | None = None) -> Path:
    """top_losses.png: each image (highest loss first) as the model sees it, and beside it its
    Grad-CAM for the predicted class (where the model saw what it said), under a caption with
    the true class, the predicted class and its probability, and the loss. `probabilities` are
    those that ranked the images (averaged over test-time views); by default, the model's on the
    images as they are."""
    size, channels = tuple(model.input_shape[1:3]), model.input_shape[-1]
    images = load_images(files, size, channels)
    predicted = None if probabilities is None else np.asarray(probabilities).argmax(axis=1)
    try:
        heat, probs = gradcam(model, images, gradcam_layer(model, blocks), predicted)
    except TlkitError as err:  # a base without feature maps (TF Hub): the images alone
        log.info("top losses without Grad-CAM: %s", err)
        heat, probs = None, model.predict(images, verbose=0)
    if probabilities is not None:
        probs = probabilities
    per_row = 3 if len(files) > 4 else max(len(files), 1)
    rows = max(math.ceil(len(files) / per_row), 1)
    pair_w, tile = 2 if heat is not None else 1, 2.0
    width, height = per_row * (pair_w * tile + 0.3), rows * (tile + 0.75) + 0.45
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    fig.suptitle(f"the {len(files)} images with the highest loss, highest first"
                 + ("; right of each, Grad-CAM: where the model saw the class it predicted" if heat is not None else ""),
                 fontsize=10, y=1 - 0.2 / height)
    for k, (caption, t, image) in enumerate(zip(top_loss_captions(classes, files, truth, probs), truth, images)):
        r, c = divmod(k, per_row)
        x0, y0 = c * (pair_w * tile + 0.3) + 0.15, height - 0.45 - (r + 1) * (tile + 0.75) + 0.1
        pictures = [np.broadcast_to(image / 255.0, (*image.shape[:2], 3))]
        if heat is not None:
            pictures.append(overlay(image, heat[k]))
        for m, picture in enumerate(pictures):
            ax = fig.add_axes(((x0 + m * tile) / width, y0 / height, (tile - 0.05) / width, tile / height))
            ax.imshow(picture, interpolation="bilinear")
            ax.set_axis_off()
        fig.text((x0 + pair_w * tile / 2) / width, (y0 + tile + 0.05) / height, caption, ha="center", va="bottom",
                 fontsize=9, color="#b00000" if int(probs[k].argmax()) != t else "black")
    return _save(fig, Path(out))


def top_loss_captions(classes: Sequence[str], files: Sequence[Path], truth: Sequence[int],
                      probabilities: np.ndarray) -> list[str]:
    """The caption of each image of top_losses.png: true class, predicted class and its
    probability, the loss, the file name."""
    captions = []
    for path, t, p in zip(files, truth, probabilities):
        top = int(p.argmax())
        captions.append(f"true {_short(classes[t], 18)}, predicted {_short(classes[top], 18)} {p[top]:.2f}\n"
                        f"loss {-math.log(max(float(p[t]), 1e-7)):.2f}   {_short(Path(path).name, 30)}")
    return captions


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
