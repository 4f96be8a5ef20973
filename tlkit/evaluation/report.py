"""The run's REPORT.md: what the run did, in words (data, base, each stage as its kind describes
it), its results, and the evaluation of the validation split (tlkit.evaluation.metrics). The
training curves (curves.png) are drawn by tlkit.engine.curves, which the training loop calls.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from tlkit._util.io import write_json_atomic, write_text_atomic
from tlkit.data.augment import of as augmentation_of
from tlkit.data.pipeline import make_dataset
from tlkit.data.report import DataReport
from tlkit.engine.curves import plot_curves
from tlkit.evaluation import multilabel
from tlkit.evaluation.metrics import evaluation_report
from tlkit.recipe.kinds import STAGES
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)


def write_run_report(out: str | Path, model: keras.Model, classes: Sequence[str], train, val, recipe,
                     results: Sequence, *, batch_size: int | None = None) -> dict | None:
    """At the end of a run: the evaluation report of `model` on the validation split `val`
    (report.json, predictions.csv, confusion.png, top_losses.png), curves.png from the stages'
    histories, and REPORT.md, all in the run directory `out`.

    `train`, `val`: the run's tlkit.data.folders.ImageSet splits; `recipe`: the resolved Recipe;
    `results`: the stage results (each with .stage, .history, .val_accuracy, .val_loss,
    .seconds). Returns the evaluation report, or None when the run has no validation images."""
    out = Path(out)
    names = [f"{i} {r.kind}" for i, r in enumerate(results, start=1)]
    curves = plot_curves([(name, r.history) for name, r in zip(names, results)], RunDir(out).curves)
    blocks = RunDir(out).read_blocks()
    calibration = (json.loads(RunDir(out).calibration.read_text(encoding="utf-8"))
                   if RunDir(out).calibration.is_file() else None)
    evaluation = None
    if len(val):
        size, channels = tuple(model.input_shape[1:3]), model.input_shape[-1]
        probabilities = model.predict(make_dataset(val, size, batch_size or recipe.batch_size, channels=channels),
                                      verbose=0)
    if len(val) and val.multilabel:
        truth = val.multi_hot()
        thresholds = (np.full(len(classes), recipe.threshold) if recipe.threshold is not None
                      else multilabel.choose_thresholds(truth, probabilities))
        write_json_atomic(RunDir(out).thresholds, dict(zip(classes, map(float, thresholds))))
        evaluation = multilabel.write_evaluation(out, classes, val.files, truth, probabilities, thresholds,
                                                 extra={"model": str(RunDir(out).model), "data": "validation split"})
        log.info("validation (thresholds %s):\n%s", "of each label, chosen on it" if recipe.threshold is None
                 else f"{recipe.threshold:g}", multilabel.format_report(evaluation))
    elif len(val):
        evaluation = evaluation_report(model, classes, val.files, val.labels, probabilities, out,
                                       blocks=blocks, extra={"model": str(RunDir(out).model),
                                                                      "data": "validation split",
                                                                      **({"calibration": calibration} if calibration
                                                                         else {})})
    write_text_atomic(RunDir(out).report, run_markdown(out, classes, train, val, recipe, results, evaluation,
                                                      curves is not None, blocks, calibration))
    log.info("wrote %s", RunDir(out).report)
    return evaluation


def run_markdown(out: Path, classes, train, val, recipe, results, evaluation: dict | None, curves: bool,
                 blocks: dict[str, list[str]] | None, calibration: dict | None = None) -> str:
    """REPORT.md: what the run did and how well, in words and pictures; `blocks` is the base's
    block map (RUN/blocks.json), for the blocks a finetune stage unfroze; `calibration` is
    calibration.json's content."""
    data_report = RunDir(out).data_report
    split_column = data_report.is_file() and DataReport.load(data_report).split_column
    md = [f"# Run {out.name}", "", _what_was_trained(recipe, classes, train, val, split_column), "", *_data(classes, train, val), "",
          *_recipe(out, recipe, len(classes), list(blocks or [])), "", *_results(results, curves)]
    if evaluation is not None and evaluation.get("task") == "multilabel":
        md += ["## On the validation images", "", f"With `model.keras`, each label cut at its threshold "
               f"(`{RunDir.THRESHOLDS}`):", "", "```", multilabel.format_report(evaluation), "```"]
    elif evaluation is not None:
        md += _validation(evaluation)
    if calibration is not None:
        md += _calibration(calibration)
    val_losses = [v for r in results for v in r.history.get("val_loss", [])]
    return "\n".join([*md, *_files_and_next(out, recipe, val_losses)])


def _trained_from_scratch(recipe) -> bool:
    return any(stage.kind == "train" for stage in recipe.stages)  # `tlkit train`: a zoo model, its own top


def _what_was_trained(recipe, classes, train, val, split_column: bool = False) -> str:
    weights = {"imagenet": "ImageNet weights", "none": "random weights (no pretraining)"}.get(
        recipe.weights, f"weights from {recipe.weights}")
    what = (f"Architecture **{recipe.base}** trained from scratch" if _trained_from_scratch(recipe)
            else f"Base **{recipe.base}** with {weights}")
    return (f"{what}, input {recipe.image_size}x{recipe.image_size}, on "
            f"{len(train)} training and {len(val)} validation images in {len(classes)} classes from `{recipe.data}`"
            + (f" (validation images from `{recipe.val_data}`)." if recipe.val_data else
               f" (the validation images are the rows the manifest's `{recipe.split_column}` column names `val`)."
               if split_column else
               f" (a seeded split stratified over the labels, holding out {recipe.val_split:g} of the images, "
               f"seed {recipe.seed}; several labels an image)." if train.multilabel else
               f" (a seeded, stratified split holding out {recipe.val_split:g} of each class, seed {recipe.seed})."))


def _data(classes, train, val) -> list[str]:
    train_counts, val_counts = train.counts(), val.counts()
    skipped = sorted({(str(p), why) for p, why in [*train.skipped, *val.skipped]})
    md = ["## Data", "", "| class | training | validation |", "|---|---:|---:|"]
    md += [f"| {c} | {t} | {v} |" for c, t, v in zip(classes, train_counts, val_counts)]
    md += [f"| **total** | {len(train)} | {len(val)} |", ""]
    if skipped:
        return md + [f"{len(skipped)} bad file(s) skipped (`--skip-bad`):", ""] + [f"- `{p}`: {why}" for p, why in skipped]
    return md + ["No file was skipped: every image decoded."]


def _recipe(out: Path, recipe, classes: int, blocks: list[str]) -> list[str]:
    """The recipe in words: its settings, then each stage as its kind describes it."""
    md = ["## Recipe", "", f"Recipe `{recipe.name}`" + (f": {recipe.description.rstrip('.')}" if recipe.description else "")
          + f". Batch size {recipe.batch_size}, augmentation: {augmentation_of(recipe).describe()}"
          + (f", early stopping after {recipe.early_stopping} epochs without a better validation loss (each stage "
             "ends with its best epoch's weights)" if recipe.early_stopping else "")
          + (f", label smoothing {recipe.label_smoothing:g}" if recipe.label_smoothing else "")
          + (f", class weights {recipe.class_weight}" if recipe.class_weight != "none" else "")
          + (", mixed precision" if recipe.mixed_precision else "") + ". The stages, in order:", ""]
    md += [f"{i}. **{s.kind}**: {STAGES.get(s.kind).describe(s, recipe, blocks, classes)}."
           for i, s in enumerate(recipe.stages, start=1)]
    job = f"train --arch {recipe.base}" if _trained_from_scratch(recipe) else "finetune"
    return md + ["", f"`recipe.toml` holds all of it: `tlkit {job} --recipe {out}/recipe.toml --out runs/again` "
                     "repeats the run."]


def _results(results, curves: bool) -> list[str]:
    md = ["## Results per stage", "", "| stage | epochs run | val accuracy | val loss | seconds |",
          "|---|---:|---:|---:|---:|"]
    for i, r in enumerate(results, start=1):
        acc = "–" if r.val_accuracy is None else f"{r.val_accuracy:.4f}"
        md.append(f"| {i} {r.kind} | {len(r.history.get('loss', []))} | {acc} | {r.val_loss:.4f} | "
                  f"{r.seconds:.0f} |")
    md.append("")
    if curves:
        md += ["![training curves](curves.png)", "", "`curves.png`: loss and accuracy per epoch across the stages "
               "(redrawn after every epoch while the run trains); the star is the epoch with the lowest validation loss.",
               ""]
    return md


def _validation(evaluation: dict) -> list[str]:
    md = ["## On the validation images", "",
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
    return md + ["", "![confusion matrix](confusion.png)", "", "![top losses](top_losses.png)", "",
                 "`top_losses.png`: the validation images the model got most wrong, each beside its Grad-CAM "
                 "(where in the image the model found the class it predicted). Every prediction is in "
                 "`predictions.csv`, the numbers in `report.json`.", ""]


def _calibration(summary: dict) -> list[str]:
    """The temperature (tlkit.evaluation.calibrate), ECE and NLL before and after, the unknown threshold."""
    if summary["calibrated"]:
        md = ["## Calibration", "", f"A temperature of {summary['temperature']:.3f}, fitted on the validation split, "
              "divides the logits inside `model.keras` (and every export), so that a probability is about as often "
              "right as it says; it never changes a top-1 (`--no-calibrate` leaves it out)."]
    else:
        md = ["## Calibration", "", "Not calibrated (`--no-calibrate`, or a model without a softmax last layer); "
              f"the figures say what a temperature of {summary['temperature']:.3f} would do."]
    md += ["", "| on the validation split | before | after |", "|---|---:|---:|",
           f"| expected calibration error | {summary['ece_before']:.4f} | {summary['ece_after']:.4f} |",
           f"| negative log-likelihood | {summary['nll_before']:.4f} | {summary['nll_after']:.4f} |", "",
           "![reliability diagram](calibration.png)", ""]
    if "threshold" in summary:
        md += [f"Unknown: an image whose score (1 - the cosine similarity of its pooled features to the nearest "
               f"training image's) is above {summary['threshold']:.4f} is answered `unknown`; "
               f"{summary['keep']:.0%} of the validation images are below it (`--keep`).", ""]
    return md


def _files_and_next(out: Path, recipe, val_losses: list[float]) -> list[str]:
    md = ["## Model files", "",
          "- `model.keras`: the model as the run ended: the weights of the last epoch of the last stage"
          + (", or with early stopping that stage's best epoch" if recipe.early_stopping else "")
          + ". Every command uses it by default (`--checkpoint final`)."]
    if val_losses:
        best = int(np.argmin(val_losses))
        md.append(f"- `checkpoints/best.keras`: the epoch with the lowest validation loss over all stages, epoch "
                  f"{best + 1} of {len(val_losses)} (val loss {val_losses[best]:.4f}); `--checkpoint best` uses it.")
    return md + ["- `labels.txt` (class names in output order), `recipe.toml`, `blocks.json` (the base's blocks), "
                 "`history.json`, `metrics.json`, `logs/` (TensorBoard: `tensorboard --logdir " f"{out}/logs`).", "",
                 "## Next", "", "```",
                 f"tlkit evaluate --model {out} --data TEST_FOLDER            # a report like the one above, on new images",
                 f"tlkit predict  --model {out} PHOTOS/ --out predictions.csv",
                 f"tlkit visualize gradcam --model {out} IMAGE... --out {out}/gradcam",
                 f"tlkit export   --model {out} --out exported/{out.name}",
                 "```", ""]
