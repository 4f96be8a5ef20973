"""The pictures of a multi-label evaluation:

    pr_curves.png      each label's precision-recall curve, its AP and its threshold marked
    cooccurrence.png   which labels come together (true) and which are predicted for each true label
    top_losses.png     the images with the highest loss (mean binary cross-entropy over labels),
                       each with a Grad-CAM for every label it predicts
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from matplotlib.figure import Figure

from tlkit.data.pipeline import load_images
from tlkit.engine.curves import any_script
from tlkit.errors import TlkitError
from tlkit.evaluation.gradcam import gradcam, gradcam_layer, overlay
from tlkit.evaluation.multilabel import average_precision, pr_curve
from tlkit.evaluation.plots import _save, _short
from tlkit.evaluation.visualize import DPI

log = logging.getLogger(__name__)

GRADCAM_LABELS = 3  # Grad-CAMs beside each top-loss image: its most probable labels above threshold


def losses(truth: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each image's binary cross-entropy, averaged over its labels (the loss training minimised)."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    t = truth > 0
    return -np.where(t, np.log(p), np.log(1 - p)).mean(axis=1)


@any_script()
def plot_pr_curves(classes: Sequence[str], truth: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray,
                   out: str | Path) -> Path:
    """pr_curves.png: one panel per label (a label without a positive image says so), the point
    of its threshold marked."""
    n = len(classes)
    per_row = min(n, 4)
    rows = math.ceil(n / per_row)
    fig = Figure(figsize=(per_row * 2.8, rows * 2.8 + 0.4), dpi=DPI, facecolor="white")
    fig.suptitle("precision-recall of each label; the dot: its threshold", fontsize=10)
    for i, name in enumerate(classes):
        ax = fig.add_subplot(rows, per_row, i + 1)
        ax.set(xlim=(0, 1.02), ylim=(0, 1.05))
        ax.tick_params(labelsize=7)
        t, p = truth[:, i] > 0, probabilities[:, i]
        if not t.any():
            ax.set_title(f"{_short(name, 22)}: no positive image", fontsize=8)
            continue
        precision, recall = pr_curve(t, p)
        ax.step(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]), where="pre", lw=1.5)
        predicted = p >= thresholds[i]
        hit = (predicted & t).sum()
        ax.plot(hit / t.sum(), hit / predicted.sum() if predicted.any() else 1.0, "o", color="#d62728")
        ax.set_title(f"{_short(name, 22)}  AP {average_precision(t, p):.2f}  (n={int(t.sum())})", fontsize=8)
        ax.set_xlabel("recall", fontsize=7)
        ax.set_ylabel("precision", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (rows * 2.8 + 0.4)))
    return _save(fig, Path(out))


@any_script()
def plot_cooccurrence(classes: Sequence[str], truth: np.ndarray, predicted: np.ndarray, out: str | Path) -> Path:
    """cooccurrence.png: left, images carrying both labels (the diagonal: each label's images);
    right, of the images with true label i (row), the share predicted with label j: the
    diagonal is recall, off it what each label drags in."""
    t, q = (truth > 0).astype(int), (predicted > 0).astype(int)
    together, predicted_with = t.T @ t, t.T @ q
    support = t.sum(axis=0)[:, None]
    share = np.divide(predicted_with, support, out=np.zeros(predicted_with.shape), where=support > 0)
    n = len(classes)
    names = [_short(c, 20) for c in classes]
    side = max(n * 0.5, 2.4)
    fig = Figure(figsize=(2 * side + 3.6, side + 1.8), dpi=DPI, facecolor="white")
    for k, (matrix, title, fmt) in enumerate(((together, "images with both labels", "d"),
                                              (share, "true row: share predicted with column", ".2f"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.imshow(matrix, cmap="Blues", vmin=0)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        if n <= 15:
            top = matrix.max() or 1
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > top / 2 else "black")
    fig.tight_layout()
    return _save(fig, Path(out))


@any_script()
def plot_top_losses(model: keras.Model, classes: Sequence[str], files: Sequence[Path], truth: np.ndarray,
                    probabilities: np.ndarray, thresholds: np.ndarray, out: str | Path,
                    blocks: dict | None = None) -> Path:
    """top_losses.png: each image (highest loss first) and a Grad-CAM for each label it predicts
    (up to GRADCAM_LABELS, most probable first; the most probable label when none passes its
    threshold), under its true and predicted labels and its loss."""
    size, channels = tuple(model.input_shape[1:3]), model.input_shape[-1]
    images = load_images(files, size, channels)
    order = np.argsort(-probabilities, axis=1, kind="stable")
    above = np.take_along_axis(probabilities >= thresholds, order, axis=1)
    shown = [list(o[a][:GRADCAM_LABELS]) or [int(o[0])] for o, a in zip(order, above)]
    heats = {}
    try:
        layer = gradcam_layer(model, blocks)
        for rank in range(max(len(s) for s in shown) if shown else 0):
            wanted = [s[rank] if rank < len(s) else s[0] for s in shown]
            heats[rank] = gradcam(model, images, layer, wanted)[0]
    except TlkitError as err:  # a base without feature maps (TF Hub): the images alone
        log.info("top losses without Grad-CAM: %s", err)
        heats = {}
    columns = 1 + (max(len(s) for s in shown) if heats and shown else 0)
    tile = 1.8
    width, height = columns * tile + 0.3, max(len(files), 1) * (tile + 0.6) + 0.5
    fig = Figure(figsize=(max(width, 5.0), height), dpi=DPI, facecolor="white")
    fig.suptitle(f"the {len(files)} images with the highest loss, highest first"
                 + ("; right: Grad-CAM of each predicted label" if heats else ""), fontsize=9, y=1 - 0.15 / height)
    fig_w = max(width, 5.0)
    for k, (path, image, labels) in enumerate(zip(files, images, shown)):
        y0 = height - 0.5 - (k + 1) * (tile + 0.6) + 0.05
        pictures = [(np.broadcast_to(image / 255.0, (*image.shape[:2], 3)), "the image")]
        if heats:
            none_above = not (probabilities[k] >= thresholds).any()  # the most probable label, though below
            pictures += [(overlay(image, heats[r][k]), ("below threshold: " if none_above else "")
                          + f"{_short(classes[c], 14)} {probabilities[k, c]:.2f}") for r, c in enumerate(labels)]
        for m, (picture, title) in enumerate(pictures):
            ax = fig.add_axes(((0.15 + m * tile) / fig_w, (y0 + 0.2) / height, (tile - 0.08) / fig_w,
                               (tile - 0.4) / height))
            ax.imshow(picture, interpolation="bilinear")
            ax.set_axis_off()
            fig.text((0.15 + m * tile + tile / 2) / fig_w, (y0 + 0.05) / height, title, ha="center", fontsize=7)
        true = "|".join(c for c, on in zip(classes, truth[k]) if on) or "(none)"
        said = "|".join(classes[c] for c in np.flatnonzero(probabilities[k] >= thresholds)) or "(none)"
        loss = float(losses(truth[k:k + 1], probabilities[k:k + 1])[0])
        fig.text(0.15 / fig_w, (y0 + tile - 0.12) / height,
                 f"true {_short(true, 40)}, predicted {_short(said, 40)}; loss {loss:.2f}   {_short(Path(path).name, 28)}",
                 fontsize=7.5, va="bottom", color="black" if true == said else "#b00000")
    return _save(fig, Path(out))
