"""What a model gets wrong, as numbers and pictures: the evaluation report, the training curves
and the run's REPORT.md.

The training curves (curves.png) are drawn by tlkit.engine.curves, which the training loop calls.

Evaluation files (in `tlkit evaluate`'s folder, and in the run directory for the validation split
at the end of a run):

    report.json       accuracy, loss, per-class precision/recall/F1/support, averages, confusion
    predictions.csv   one row per image: path, true class, predicted class, probability of each class
    confusion.png     the confusion matrix in counts and normalised by row (each true class sums to 1)
    top_losses.png    the images with the highest loss, each with its Grad-CAM for the predicted class

Pictures are drawn on matplotlib's Agg canvas (never pyplot), so no display is needed and a
user's backend is left alone.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from tlkit._util.io import write_atomic, write_json_atomic, write_text_atomic
from tlkit.data.augment import of as augmentation_of
from tlkit.data.pipeline import load_images, make_dataset
from tlkit.engine.curves import any_script, plot_curves
from tlkit.errors import TlkitError
from tlkit.evaluation.visualize import gradcam, gradcam_layer, overlay, run_blocks
from tlkit.recipe.kinds import STAGES

log = logging.getLogger(__name__)

TOP_LOSSES = 9
_DPI = 100


# --- numbers --------------------------------------------------------------------------------


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], n: int) -> np.ndarray:
    """counts[i, j]: images of true class i predicted as class j."""
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (np.asarray(truth, int), np.asarray(predicted, int)), 1)
    return counts


def classification_table(confusion: np.ndarray, classes: Sequence[str]) -> dict:
    """Precision, recall, F1 and support per class, their macro and weighted averages, and the
    accuracy, as scikit-learn's `classification_report` computes them: over the classes that
    occur in the truth or the predictions, 0 where a ratio has nothing to divide by."""
    tp = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    present = np.flatnonzero((support > 0) | (predicted > 0))

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    rows = [{"class": classes[i], "precision": precision[i], "recall": recall[i], "f1": f1[i],
             "support": int(support[i])} for i in present]
    weights = support[present] / max(support.sum(), 1)
    averages = {
        "macro avg": {k: float(np.mean([r[k] for r in rows])) for k in ("precision", "recall", "f1")},
        "weighted avg": {k: float(np.dot([r[k] for r in rows], weights)) for k in ("precision", "recall", "f1")},
    }
    for average in averages.values():
        average["support"] = int(support.sum())
    for row in rows:
        row.update({k: float(row[k]) for k in ("precision", "recall", "f1")})
    return {"classes": rows, **averages, "accuracy": float(tp.sum() / max(support.sum(), 1))}


def most_confused(confusion: np.ndarray, classes: Sequence[str], k: int = 10) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal counts: (true class, predicted class, images), most first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [(classes[i], classes[j], int(off[i, j])) for i, j in pairs if off[i, j]]


def format_table(table: dict) -> str:
    """The classification table as text with headed columns, as `tlkit evaluate` prints it."""
    width = max([len("weighted avg"), *(len(r["class"]) for r in table["classes"])])
    head = f"{'class':<{width}}  {'precision':>9}  {'recall':>6}  {'F1':>6}  {'support':>7}"
    lines = [head, "-" * len(head)]

    def line(name, row):
        return (f"{name:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['f1']:>6.4f}  "
                f"{row['support']:>7d}")

    lines += [line(r["class"], r) for r in table["classes"]]
    lines.append("-" * len(head))
    lines += [line(name, table[name]) for name in ("macro avg", "weighted avg")]
    return "\n".join(lines)


# --- the evaluation report ------------------------------------------------------------------


def evaluation_report(model: keras.Model, classes: Sequence[str], files: Sequence[Path], truth: Sequence[int],
                      probabilities: np.ndarray, out: str | Path, *, blocks: dict | None = None,
                      single_view: np.ndarray | None = None, tta_views: int = 1, extra: dict | None = None,
                      top_losses: int = TOP_LOSSES) -> dict:
    """Write report.json, predictions.csv, confusion.png and top_losses.png into `out` for the
    images `files` of true labels `truth`, which `model` gave `probabilities` (n, classes).

    `single_view`: the probabilities without test-time augmentation, when `probabilities` are
    averaged over `tta_views` views; the report then gives the accuracy of both. `blocks` is the
    base's block map, for the Grad-CAM layer. `extra` is merged into report.json. Returns the
    report (report.json's content)."""
    out = Path(out)
    classes = list(classes)
    truth = np.asarray(truth, int)
    predicted = probabilities.argmax(axis=1)
    picked = np.clip(probabilities[np.arange(len(truth)), truth], 1e-7, 1.0)
    losses = -np.log(picked)
    confusion = confusion_matrix(truth, predicted, len(classes))
    table = classification_table(confusion, classes)
    report = {
        **(extra or {}),
        "images": int(len(truth)),
        "accuracy": table["accuracy"],
        "loss": float(losses.mean()) if len(losses) else float("nan"),
        **({"tta": {"views": tta_views, "accuracy_without": float((single_view.argmax(axis=1) == truth).mean()),
                    "accuracy_with": table["accuracy"]}} if single_view is not None else {}),
        "table": table,
        "most_confused": most_confused(confusion, classes),
        "labels": classes,
        "confusion_matrix": confusion.tolist(),
        "files": {"predictions": "predictions.csv", "confusion": "confusion.png", "top_losses": "top_losses.png"},
    }
    write_predictions(out / "predictions.csv", files, probabilities, classes, truth)
    plot_confusion(confusion, classes, out / "confusion.png")
    worst = np.argsort(-losses, kind="stable")[:top_losses]
    plot_top_losses(model, classes, [files[i] for i in worst], truth[worst], out / "top_losses.png", blocks,
                    probabilities[worst])
    write_json_atomic(out / "report.json", report)
    return report


def format_report(report: dict) -> str:
    """The text `tlkit evaluate` prints: the table, accuracy and loss, and what is confused most."""
    lines = [format_table(report["table"]), "",
             f"accuracy {report['accuracy']:.4f}  loss {report['loss']:.4f}  on {report['images']} images"]
    if "tta" in report:
        tta = report["tta"]
        lines.append(f"test-time augmentation ({tta['views']} views): accuracy "
                     f"{tta['accuracy_with']:.4f}, without {tta['accuracy_without']:.4f}")
    if report["most_confused"]:
        lines.append("most confused (true -> predicted: images): " + ", ".join(
            f"{t} -> {p}: {n}" for t, p, n in report["most_confused"][:5]))
    return "\n".join(lines)


def write_predictions(path: Path, files: Sequence[Path], probabilities: np.ndarray, classes: Sequence[str],
                      truth: Sequence[int] | None = None) -> None:
    """predictions.csv: path, true class (when known), predicted class, its probability, and
    the probability of every class, one row per image in the order given."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", *(["true"] if truth is not None else []), "predicted", "probability",
                     *(f"p_{c}" for c in classes)])
    for k, (f, p) in enumerate(zip(files, probabilities)):
        top = int(p.argmax())
        writer.writerow([str(f), *([classes[truth[k]]] if truth is not None else []), classes[top], f"{p[top]:.6f}",
                         *(f"{v:.6f}" for v in p)])
    write_text_atomic(path, text.getvalue())


# --- pictures -------------------------------------------------------------------------------


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
    fig = Figure(figsize=(width, height), dpi=_DPI, facecolor="white")
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
    fig = Figure(figsize=(width, height), dpi=_DPI, facecolor="white")
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


# --- the run report -------------------------------------------------------------------------


def write_run_report(out: str | Path, model: keras.Model, classes: Sequence[str], train, val, recipe,
                     results: Sequence, *, batch_size: int | None = None) -> dict | None:
    """At the end of a run: the evaluation report of `model` on the validation split `val`
    (report.json, predictions.csv, confusion.png, top_losses.png), curves.png from the stages'
    histories, and REPORT.md, all in the run directory `out`.

    `train`, `val`: the run's tlkit.data.pipeline.ImageSet splits; `recipe`: the resolved Recipe;
    `results`: the stage results (each with .stage, .history, .val_accuracy, .val_loss,
    .seconds). Returns the evaluation report, or None when the run has no validation images."""
    out = Path(out)
    names = [f"{i} {r.kind}" for i, r in enumerate(results, start=1)]
    curves = plot_curves([(name, r.history) for name, r in zip(names, results)], out / "curves.png")
    evaluation = None
    if len(val):
        size, channels = tuple(model.input_shape[1:3]), model.input_shape[-1]
        probabilities = model.predict(make_dataset(val, size, batch_size or recipe.batch_size, channels=channels),
                                      verbose=0)
        evaluation = evaluation_report(model, classes, val.files, val.labels, probabilities, out,
                                       blocks=run_blocks(out), extra={"model": str(out / "model.keras"),
                                                                      "data": "validation split"})
    write_text_atomic(out / "REPORT.md", run_markdown(out, classes, train, val, recipe, results, evaluation,
                                                      curves is not None))
    log.info("wrote %s", out / "REPORT.md")
    return evaluation


def run_markdown(out: Path, classes, train, val, recipe, results, evaluation: dict | None, curves: bool) -> str:
    """REPORT.md: what the run did and how well, in words and pictures."""
    blocks = list(json.loads((out / "blocks.json").read_text(encoding="utf-8"))) if (out / "blocks.json").is_file() else []
    train_counts = np.bincount(train.labels, minlength=len(classes))
    val_counts = np.bincount(val.labels, minlength=len(classes))
    skipped = sorted({(str(p), why) for p, why in [*train.skipped, *val.skipped]})
    md = [f"# Run {out.name}", ""]
    weights = {"imagenet": "ImageNet weights", "none": "random weights (no pretraining)"}.get(
        recipe.weights, f"weights from {recipe.weights}")
    scratch = any(stage.kind == "train" for stage in recipe.stages)  # `tlkit train`: a zoo model, its own top
    what = f"Architecture **{recipe.base}** trained from scratch" if scratch else f"Base **{recipe.base}** with {weights}"
    md += [f"{what}, input {recipe.image_size}x{recipe.image_size}, on "
           f"{len(train)} training and {len(val)} validation images in {len(classes)} classes from `{recipe.data}`"
           + (f" (validation images from `{recipe.val_data}`)." if recipe.val_data else
              f" (a seeded, stratified split holding out {recipe.val_split:g} of each class, seed {recipe.seed})."), ""]
    md += ["## Data", "", "| class | training | validation |", "|---|---:|---:|"]
    md += [f"| {c} | {t} | {v} |" for c, t, v in zip(classes, train_counts, val_counts)]
    md += [f"| **total** | {len(train)} | {len(val)} |", ""]
    if skipped:
        md += [f"{len(skipped)} bad file(s) skipped (`--skip-bad`):", ""] + [f"- `{p}`: {why}" for p, why in skipped]
    else:
        md.append("No file was skipped: every image decoded.")
    md += ["", "## Recipe", "", f"Recipe `{recipe.name}`" + (f": {recipe.description.rstrip('.')}" if recipe.description else "")
           + f". Batch size {recipe.batch_size}, augmentation: {augmentation_of(recipe).describe()}"
           + (f", early stopping after {recipe.early_stopping} epochs without a better validation loss (each stage "
              "ends with its best epoch's weights)" if recipe.early_stopping else "")
           + (", mixed precision" if recipe.mixed_precision else "") + ". The stages, in order:", ""]
    md += [f"{i}. **{s.kind}**: {STAGES.get(s.kind).describe(s, recipe, blocks, len(classes))}."
           for i, s in enumerate(recipe.stages, start=1)]
    job = f"train --arch {recipe.base}" if scratch else "finetune"
    md += ["", f"`recipe.toml` holds all of it: `tlkit {job} --recipe {out}/recipe.toml --out runs/again` repeats the run.", "", "## Results per stage", "",
           "| stage | epochs run | val accuracy | val loss | seconds |", "|---|---:|---:|---:|---:|"]
    for i, r in enumerate(results, start=1):
        acc = "–" if r.val_accuracy is None else f"{r.val_accuracy:.4f}"
        md.append(f"| {i} {r.kind} | {len(r.history.get('loss', []))} | {acc} | {r.val_loss:.4f} | "
                  f"{r.seconds:.0f} |")
    md.append("")
    val_losses = [v for r in results for v in r.history.get("val_loss", [])]
    if curves:
        md += ["![training curves](curves.png)", "", "`curves.png`: loss and accuracy per epoch across the stages "
               "(redrawn after every epoch while the run trains); the star is the epoch with the lowest validation loss.",
               ""]
    if evaluation is not None:
        md += ["## On the validation images", "",
               f"Accuracy **{evaluation['accuracy']:.4f}**, loss {evaluation['loss']:.4f}, on {evaluation['images']} "
               "images, with `model.keras`.", "", "| class | precision | recall | F1 | support |",
               "|---|---:|---:|---:|---:|"]
        table = evaluation["table"]
        md += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
               for r in table["classes"]]
        md += [f"| *{name}* | {table[name]['precision']:.4f} | {table[name]['recall']:.4f} | {table[name]['f1']:.4f} "
               f"| {table[name]['support']} |" for name in ("macro avg", "weighted avg")]
        if evaluation["most_confused"]:
            md += ["", "Most confused (true → predicted): " + ", ".join(
                f"{t} → {p} ({n})" for t, p, n in evaluation["most_confused"][:5]) + "."]
        md += ["", "![confusion matrix](confusion.png)", "", "![top losses](top_losses.png)", "",
               "`top_losses.png`: the validation images the model got most wrong, each beside its Grad-CAM "
               "(where in the image the model found the class it predicted). Every prediction is in "
               "`predictions.csv`, the numbers in `report.json`.", ""]
    md += ["## Model files", "",
           "- `model.keras`: the model as the run ended: the weights of the last epoch of the last stage"
           + (", or with early stopping that stage's best epoch" if recipe.early_stopping else "")
           + ". Every command uses it by default (`--checkpoint final`)."]
    if val_losses:
        best = int(np.argmin(val_losses))
        md.append(f"- `checkpoints/best.keras`: the epoch with the lowest validation loss over all stages, epoch "
                  f"{best + 1} of {len(val_losses)} (val loss {val_losses[best]:.4f}); `--checkpoint best` uses it.")
    md += ["- `labels.txt` (class names in output order), `recipe.toml`, `blocks.json` (the base's blocks), "
           "`history.json`, `metrics.json`, `logs/` (TensorBoard: `tensorboard --logdir " f"{out}/logs`).", "",
           "## Next", "", "```",
           f"tlkit evaluate --model {out} --data TEST_FOLDER            # a report like the one above, on new images",
           f"tlkit predict  --model {out} PHOTOS/ --out predictions.csv",
           f"tlkit visualize gradcam --model {out} IMAGE... --out {out}/gradcam",
           f"tlkit export   --model {out} --out exported/{out.name}",
           "```", ""]
    return "\n".join(md)
