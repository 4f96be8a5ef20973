"""Predict the classes of images and folders of images, and evaluate a run on a labelled folder.

Images go through the training pipeline's decoder (`tlkit.data.pipeline.make_dataset`) in batches.
Test-time augmentation (`tta` views) averages the probabilities of the image, its mirror image
and crops of 85% of each side (inside the 80-100% crops of training's augmentation), resized back.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tlkit._util import buckets
from tlkit._util.io import write_csv_atomic, write_json_atomic
from tlkit._util.urls import Url, as_path, is_url
from tlkit.data import checks, folders, manifest, shards
from tlkit.data import pipeline as tldata
from tlkit.data.report import training_overlap_warning
from tlkit.errors import TlkitError
from tlkit.evaluation import multilabel, multilabel_plots
from tlkit.evaluation.metrics import evaluation_report, write_predictions
from tlkit.models import calibration
from tlkit.rundir.files import RunDir
from tlkit.rundir.load import Run, load_run, read_thresholds

log = logging.getLogger(__name__)

MAX_TTA = 12  # 6 crops (whole, centre, 4 corners) x mirrored or not
_TTA_CROP = 0.85
_PROGRESS_BATCHES = 4  # a progress bar for more batches than this


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class, probability), most probable first; of a multi-label run, every label above its threshold
    probabilities: np.ndarray | None = None  # every class's, in label order
    unknown_score: float | None = None  # tlkit.models.calibration; None for a run without its reference
    unknown: bool | None = None  # the score is above the run's threshold


class Predictions(list):
    """The predictions, in the order of the images, and the files skipped as bad (path, why)."""

    def __init__(self, predictions=(), skipped=()):
        super().__init__(predictions)
        self.skipped: list[tuple[Path, str]] = list(skipped)


def image_files(paths) -> list[Path]:
    """The image files named by `paths` (one path, or several): a file as given, a folder walked
    recursively for image files (by extension; hidden files and folders left out), each folder in
    sorted order."""
    if isinstance(paths, (str, os.PathLike)):  # a str is iterable too: by its characters
        paths = [paths]
    found = []
    for p in map(as_path, paths):
        if is_url(p):
            found += folders.images_at(p)
        elif p.is_dir():
            inside = _walk_images(p)
            if not inside:
                raise TlkitError(f"no images in folder '{p}' or its sub-folders")
            found += inside
        elif p.is_file():
            found.append(p)
        elif p.is_symlink():  # a link loop or a link to nothing: say which
            try:
                p.stat()
            except OSError as err:
                raise TlkitError(f"'{p}': {checks.unreadable(p, err)}") from err
        else:
            raise TlkitError(f"'{p}' does not exist: pass image files or folders of images")
    return found


def good_images(paths, skip_bad: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files named by `paths` (`image_files`) that decode, and the others (path, why),
    which are an error naming them unless `skip_bad`."""
    found = image_files(paths)
    problems = checks.check_images(found)
    if problems and not skip_bad:
        listed = "\n".join(f"  {path}: {why}" for path, why in problems[:50])
        raise TlkitError(f"{len(problems)} bad image file(s); remove them or pass --skip-bad:\n{listed}")
    bad = {path for path, _ in problems}
    return [p for p in found if p not in bad], problems


def _walk_images(folder: Path) -> list[Path]:
    found = []
    for where, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(where, f) for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in folders.IMAGE_EXTENSIONS]
    return found


def tta_view(images: tf.Tensor, view: int) -> tf.Tensor:
    """View `view` (0 ... MAX_TTA - 1) of a batch (n, h, w, c): even views as they are, odd ones
    mirrored; views 0-1 whole, 2-3 the centre crop, then the four corners."""
    if view % 2:
        images = tf.image.flip_left_right(images)
    crop = view // 2
    if crop:
        h, w = images.shape[1], images.shape[2]
        ch, cw = round(_TTA_CROP * h), round(_TTA_CROP * w)
        y, x = [((h - ch) // 2, (w - cw) // 2), (0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)][crop - 1]
        images = tf.image.resize(images[:, y:y + ch, x:x + cw], (h, w))
    return images


def probabilities(run: Run, images: folders.ImageSet, batch_size: int = 32, tta: int = 1,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The model's probabilities for `images`: (averaged over `tta` views, of the first view, and
    the unknown scores averaged over the views, None when the run has no reference features)."""
    if not 1 <= tta <= MAX_TTA:
        raise TlkitError(f"--tta must be between 1 and {MAX_TTA} views, got {tta}")
    dataset = tldata.make_dataset(images, run.image_size, batch_size, channels=run.channels)
    verbose = "auto" if progress and len(images) > _PROGRESS_BATCHES * batch_size else 0
    scored = calibration.with_features(run.model) if run.reference is not None else None
    views, scores = [], []
    for view in range(tta):
        if tta > 1 and verbose:
            log.info("test-time augmentation: view %d of %d", view + 1, tta)
        mapped = dataset.map(lambda x, _: tta_view(x, view))  # noqa: B023 (traced here, with this view)
        if scored is None:
            views.append(run.model.predict(mapped, verbose=verbose))
        else:
            probs, features = scored.predict(mapped, verbose=verbose)
            views.append(probs)
            scores.append(calibration.nearest_distance(features, run.reference))
    return np.mean(views, axis=0), views[0], np.mean(scores, axis=0) if scores else None


def _loaded(model: str | Path | Run, checkpoint: str) -> Run:
    return model if isinstance(model, Run) else load_run(model, checkpoint)


def predict(model: str | Path | Run, images, top: int = 3, batch_size: int = 32, *, skip_bad: bool = False,
            tta: int = 1, out: str | Path | None = None, checkpoint: str = "final",
            progress: bool = False) -> Predictions:
    """Predict every image of `images` (files, and folders walked recursively) with a run.

    A file that does not decode is an error naming it, or with `skip_bad` is left out and listed
    in the result's `skipped`. `out` also writes the predictions as CSV (`.csv`: path, predicted class, its
    probability, then every class's) or JSON (`.json`: a list of {path, top, probabilities}).
    A multi-label run gives each image every label at or above its threshold (RUN/thresholds.json),
    most probable first, and its CSV has the labels (joined by |) in place of the predicted class."""
    for option, value, least in (("top", top, 1), ("batch_size", batch_size, 1)):
        if value < least:
            raise TlkitError(f"{option} must be at least {least}, got {value}")
    if out is not None:  # told now, not after every image was predicted
        _predictions_format(out)
    run = _loaded(model, checkpoint)
    paths, problems = good_images(images, skip_bad)
    if not paths:
        raise TlkitError("no image left to predict")
    found = folders.ImageSet(Path("."), run.labels, paths, [0] * len(paths))
    probs, _, scores = probabilities(run, found, batch_size, tta, progress)
    k = min(top, len(run.labels))
    cut = read_thresholds(run) if run.recipe.task == "multilabel" else None
    results = Predictions(skipped=problems)
    threshold = run.unknown_threshold
    for n, (path, p) in enumerate(zip(paths, probs)):
        order = np.argsort(-p, kind="stable")
        order = order[p[order] >= cut[order]] if cut is not None else order[:k]
        score = float(scores[n]) if threshold is not None else None
        results.append(Prediction(path, [(run.labels[i], float(p[i])) for i in order], p, score,
                                  score > threshold if score is not None else None))
    if out is not None:
        write_predictions_file(out, results, run.labels, threshold, multi=cut is not None)
    return results


def unknown_report(known: np.ndarray, right: np.ndarray, unknown: np.ndarray, threshold: float, data: str) -> dict:
    """How the unknown scores of labelled images (`known`, whose top-1 is `right` or not) and of
    images of no class of the run (`unknown`) are told apart: the AUROC, the share of unknown
    images kept at the score that keeps 95% of the known (the false-positive rate at 95% known
    recall), and at the run's `threshold` how many unknown images would be given a class and how
    many known ones keep theirs (kept and right)."""
    at_95 = calibration.threshold_for(known, 0.95)
    return {"data": data, "images": int(len(unknown)), "auroc": calibration.auroc(known, unknown),
            "fpr_at_95_recall": float((unknown <= at_95).mean()), "threshold": threshold,
            "given_a_class": int((unknown <= threshold).sum()),
            "known_keep_class": float(((known <= threshold) & right).mean())}


def _predictions_format(out: str | Path) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise TlkitError(f"--out '{out}': give a .csv or .json file name")
    return suffix


def write_predictions_file(out: str | Path, results: list[Prediction], labels: list[str],
                           threshold: float | None = None, multi: bool = False) -> Path:
    """`results` as CSV or JSON (by `out`'s suffix); with their unknown flags when they have them,
    decided by the run's `threshold`; of a multi-label run (`multi`), the labels above their thresholds."""
    out = Path(out)
    scored = bool(results) and results[0].unknown is not None
    if _predictions_format(out) == ".csv" and multi:
        rows = [["path", "labels", *(f"p_{c}" for c in labels), *(["unknown", "unknown_score"] if scored else [])]]
        rows += [[str(r.path), "|".join(c for c, _ in r.top), *(f"{v:.6f}" for v in r.probabilities),
                  *([str(r.unknown).lower(), f"{r.unknown_score:.6f}"] if scored else [])] for r in results]
        write_csv_atomic(out, rows)
    elif _predictions_format(out) == ".csv":
        unknown = (np.array([r.unknown_score for r in results]), threshold) if scored else None
        write_predictions(out, [r.path for r in results], np.stack([r.probabilities for r in results]), labels,
                          unknown=unknown)
    else:
        write_json_atomic(out, [{"path": str(r.path), "top": [[c, p] for c, p in r.top],
                                 **({"unknown": r.unknown, "unknown_score": r.unknown_score} if scored else {}),
                                 "probabilities": dict(zip(labels, map(float, r.probabilities)))} for r in results])
    return out


def evaluate(model: str | Path | Run, data: str | Path, out: str | Path | None = None, batch_size: int = 32, *,
             skip_bad: bool = False, tta: int = 1, checkpoint: str = "final", progress: bool = False,
             top_losses: int = 9, image_root=None, columns: manifest.Columns = manifest.DEFAULT_COLUMNS,
             unknown_data: str | Path | None = None) -> dict:
    """Evaluate a run on a labelled folder (one sub-folder per class, among the run's classes), or
    on a manifest's test rows (all its rows when none is marked test; tlkit.data.manifest). The
    run's own manifest is read with the run's image root and columns unless others are given.

    Writes the evaluation report (tlkit.evaluation.report: report.json, predictions.csv, confusion.png,
    top_losses.png) into `out`, by default RUN/eval-<folder name>/, and returns report.json's
    content, with the folder written to in "out". `unknown_data`, a folder of images of none of
    the run's classes (walked recursively), adds how well the unknown score tells them from the
    labelled images (report["unknown"], see `unknown_report`)."""
    for option, value, least in (("batch_size", batch_size, 1), ("top_losses", top_losses, 0)):
        if value < least:
            raise TlkitError(f"{option} must be at least {least}, got {value}")
    run = _loaded(model, checkpoint)
    multi = run.recipe.task == "multilabel"
    if unknown_data is not None and (multi or run.unknown_threshold is None):
        why = ("a multi-label run is not calibrated and its images may carry no label at all" if multi else
               f"no {RunDir.REFERENCE} for it: a run made before tlkit had one, --checkpoint best, or a model without "
               "pooled features; train it again to evaluate --unknown-data")
        raise TlkitError(f"{run.describe()} has no unknown score ({why})")
    if run.recipe.data and manifest.is_manifest(data) and not manifest.is_frame(data) and \
            Path(data).resolve() == Path(run.recipe.data):  # the run's own manifest: read as the run read it
        image_root = run.recipe.image_root if image_root is None else image_root
        columns = manifest.Columns.of(run.recipe) if columns == manifest.DEFAULT_COLUMNS else columns
    if shards.is_pack(data):
        images = shards.image_set(data, classes=run.labels)
    else:
        images = manifest.evaluation_set(data, classes=run.labels, skip_bad=skip_bad, image_root=image_root,
                                         columns=columns, delimiter=run.recipe.label_delimiter if multi else None)
    if multi and not images.multilabel:
        raise TlkitError(f"'{data}' is not a multi-label manifest, and the run is multi-label: give a .csv, .tsv "
                         "or .jsonl manifest whose label cells list each image's labels")
    overlap = training_overlap_warning(run.path, images)
    if overlap:
        log.warning("%s", overlap)
    probs, single, scores = probabilities(run, images, batch_size, tta, progress)
    out = Path(out) if out else run.path / f"eval-{Url(data).name if is_url(data) else Path(data).resolve().name}"
    # a report in a bucket run's local copy is copied up beside the run (the next copy down replaces the local one)
    there = f"{run.url}/{out.name}" if run.url is not None and out.parent == run.path else None
    extra = {"model": str(run.model_file), "checkpoint": run.checkpoint, "data": str(data),
             "skipped": [[str(p), why] for p, why in images.skipped], "out": there or str(out)}
    report = _evaluation(run, images, probs, single, scores, out, extra, multi=multi, tta=tta, top_losses=top_losses,
                         unknown_data=unknown_data, batch_size=batch_size, progress=progress)
    if there is not None:
        buckets.Mirror(out, there).push()
    return report


def _evaluation(run: Run, images, probs, single, scores, out: Path, extra: dict, *, multi: bool, tta: int,
                top_losses: int, unknown_data, batch_size: int, progress: bool) -> dict:
    """`evaluate`'s report of the predictions made, written into `out`."""
    if multi:
        truth, thresholds = images.multi_hot(), read_thresholds(run)
        multilabel_plots.plot_pr_curves(run.labels, truth, probs, thresholds, out / "pr_curves.png")
        multilabel_plots.plot_cooccurrence(run.labels, truth, probs >= thresholds, out / "cooccurrence.png")
        worst = np.argsort(-multilabel_plots.losses(truth, probs), kind="stable")[:top_losses]
        multilabel_plots.plot_top_losses(run.model, run.labels, [images.files[i] for i in worst], truth[worst],
                                         probs[worst], thresholds, out / "top_losses.png",
                                         RunDir(run.path).read_blocks())
        return multilabel.write_evaluation(out, run.labels, images.files, truth, probs, thresholds, extra,
                                           pictures=("pr_curves.png", "cooccurrence.png", "top_losses.png"))
    if unknown_data is not None:
        paths, _ = good_images(unknown_data)  # a bad file is not what is measured here: left out
        strangers = folders.ImageSet(Path(unknown_data), run.labels, paths, [0] * len(paths))
        _, _, unknown_scores = probabilities(run, strangers, batch_size, tta, progress)
        extra["unknown"] = unknown_report(scores, probs.argmax(axis=1) == np.asarray(images.labels), unknown_scores,
                                          run.unknown_threshold, str(unknown_data))
    return evaluation_report(run.model, run.labels, images.files, images.labels, probs, out,
                             blocks=RunDir(run.path).read_blocks(), single_view=single if tta > 1 else None, tta_views=tta,
                             extra=extra, top_losses=top_losses)
