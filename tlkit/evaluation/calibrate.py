"""At the end of a run: the temperature (fitted on the validation split, put inside the model),
the unknown score's reference (the training images' pooled features) and threshold, and the
reliability diagram; see tlkit.models.calibration for what they are.

Multi-label runs are not calibrated per label (yet): this is for single-label classifiers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from tlkit._util.io import write_atomic, write_json_atomic
from tlkit.data.pipeline import make_dataset
from tlkit.evaluation.plots import plot_reliability
from tlkit.models import calibration as cal
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)

MAX_REFERENCE = 20000  # training images whose features are kept, spread over the split: 20000 x 1280 float16 is 51 MB


def calibrate_run(out: str | Path, model: keras.Model, train, val, recipe, batch_size: int | None = None
                  ) -> keras.Model:
    """`model` with its temperature inside (unless `recipe.calibrate` is off); writes
    calibration.json, reference.npy (when the model has pooled features) and calibration.png
    into the run directory `out`. A run without validation images is left as it is."""
    run = RunDir(out)
    if recipe.task == "multilabel":  # a temperature per label is not fitted yet: sigmoid outputs as trained
        log.info("multi-label run: its per-label probabilities are not calibrated and there is no unknown threshold")
        return model
    if not len(val):
        log.warning("no validation images: the probabilities are not calibrated and there is no unknown threshold")
        return model
    size, channels = tuple(model.input_shape[1:3]), model.input_shape[-1]
    batch = batch_size or recipe.batch_size
    truth = np.asarray(val.labels, int)
    two = cal.with_features(model)
    if two is None:
        before, features = model.predict(make_dataset(val, size, batch, channels=channels), verbose=0), None
    else:
        before, features = two.predict(make_dataset(val, size, batch, channels=channels), verbose=0)
    temperature = cal.fit_temperature(before, truth)
    calibrated = cal.with_temperature(model, temperature) if recipe.calibrate else None
    if recipe.calibrate and calibrated is None:
        log.warning("not calibrated: the model's last layer is not a softmax, so it has no logits to divide")
    after = cal.scaled(before, temperature)
    summary = {"temperature": temperature, "calibrated": calibrated is not None,
               "ece_before": cal.ece(before, truth), "ece_after": cal.ece(after, truth),
               "nll_before": cal.nll(before, truth), "nll_after": cal.nll(after, truth)}
    if calibrated is not None:
        model = calibrated
        log.info("calibration: temperature %.3f; on the validation split ECE %.4f -> %.4f, NLL %.4f -> %.4f",
                 temperature, summary["ece_before"], summary["ece_after"], summary["nll_before"], summary["nll_after"])
    if features is not None:
        reference = _reference(two, train, size, channels, batch)
        scores = cal.nearest_distance(features, reference)
        threshold = cal.threshold_for(scores, recipe.keep)
        summary |= {"unknown_score": "nearest training features: 1 - cosine similarity", "keep": recipe.keep,
                    "threshold": threshold}
        write_atomic(run.reference, lambda tmp: np.save(tmp, reference.astype(np.float16), allow_pickle=False))
        log.info("unknown threshold %.4f: above it is `unknown` (%.0f%% of the validation images are below)",
                 threshold, 100 * float((scores <= threshold).mean()))
    write_json_atomic(run.calibration, summary)
    plot_reliability(before, after, truth, temperature, run.calibration_plot)
    return model


def _reference(two: keras.Model, train, size, channels: int, batch: int) -> np.ndarray:
    """The normalized pooled features of (at most MAX_REFERENCE of) the training images, rounded
    to float16 as reference.npy keeps them, so the threshold is set on the scores predict gives."""
    if len(train) > MAX_REFERENCE:
        train = train.subset(np.linspace(0, len(train) - 1, MAX_REFERENCE).round().astype(int))
    _, features = two.predict(make_dataset(train, size, batch, channels=channels), verbose=0)
    return cal.normalized(features).astype(np.float16).astype(np.float32)
