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
from tlkit.bases import Base
from tlkit.data.pipeline import make_dataset
from tlkit.engine import frozen
from tlkit.evaluation.plots import plot_reliability
from tlkit.models import calibration as cal
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)

MAX_REFERENCE = 20000  # training images whose features are kept, spread over the split: 20000 x 1280 float16 is 51 MB


def calibrate_run(out: str | Path, model: keras.Model, train, val, recipe, batch_size: int | None = None,
                  base: Base | None = None) -> keras.Model | None:
    """The classifier `model` with its temperature inside, None where it is not calibrated
    (`recipe.calibrate` off, a multi-label run, no validation images, no softmax); `model` is left
    as it is. Writes calibration.json, reference.npy (when the model has pooled features) and
    calibration.png into the run directory `out`. `base`: the run's base, whose pooled features of
    these images an extract stage may have left in the feature cache (tlkit.engine.frozen): read
    from there when they are still the base's, in place of running it again."""
    run = RunDir(out)
    if recipe.task == "multilabel":  # a temperature per label is not fitted yet: sigmoid outputs as trained
        log.info("multi-label run: its per-label probabilities are not calibrated and there is no unknown threshold")
        return None
    if not len(val):
        log.warning("no validation images: the probabilities are not calibrated and there is no unknown threshold")
        return None
    truth = np.asarray(val.labels, int)
    before, features, reference = _outputs(model, train, val, recipe, base, batch_size or recipe.batch_size)
    if not np.isfinite(before).all():  # a run whose loss went to nan still ends with its files, uncalibrated
        log.warning("not calibrated: the model's probabilities on the validation split are not finite numbers "
                    "(its training diverged: see val_loss in history.json; try a lower learning rate)")
        return None
    temperature = cal.fit_temperature(before, truth)
    calibrated = cal.with_temperature(model, temperature) if recipe.calibrate else None
    if recipe.calibrate and calibrated is None:
        log.warning("not calibrated: the model's last layer is not a softmax, so it has no logits to divide")
    after = cal.scaled(before, temperature)
    summary = {"temperature": temperature, "calibrated": calibrated is not None,
               "ece_before": cal.ece(before, truth), "ece_after": cal.ece(after, truth),
               "nll_before": cal.nll(before, truth), "nll_after": cal.nll(after, truth)}
    if calibrated is not None:
        log.info("calibration: temperature %.3f; on the validation split ECE %.4f -> %.4f, NLL %.4f -> %.4f",
                 temperature, summary["ece_before"], summary["ece_after"], summary["nll_before"], summary["nll_after"])
    if features is not None:
        scores = cal.nearest_distance(features, reference)
        threshold = cal.threshold_for(scores, recipe.keep)
        summary |= {"unknown_score": "nearest training features: 1 - cosine similarity", "keep": recipe.keep,
                    "threshold": threshold}
        write_atomic(run.reference, lambda tmp: np.save(tmp, reference.astype(np.float16), allow_pickle=False))
        log.info("unknown threshold %.4f: above it is `unknown` (%.0f%% of the validation images are below)",
                 threshold, 100 * float((scores <= threshold).mean()))
    write_json_atomic(run.calibration, summary)
    plot_reliability(before, after, truth, temperature, run.calibration_plot)
    return calibrated


def _outputs(model: keras.Model, train, val, recipe, base: Base | None, batch: int):
    """(the probabilities of the validation images, their pooled features, the reference: the
    normalized pooled features of the training images `_spread` picks, rounded to float16 as
    reference.npy keeps them, so that the threshold is set on the scores predict gives); neither
    features nor reference for a model without pooled features."""
    size, channels = tuple(model.input_shape[1:3]), model.input_shape[-1]
    two = cal.with_features(model)
    if two is None:
        return model.predict(make_dataset(val, size, batch, channels=channels), verbose=0), None, None
    spread = _spread(len(train))
    # only an extract stage writes the cache: no other run pays for hashing every file to look there
    found = (frozen.cached(base, train.files + val.files, size, pooling=recipe.pooling, cache=recipe.cache)
             if base is not None and any(stage.kind == "extract" for stage in recipe.stages) else None)
    if found is not None:
        log.info("calibration: the pooled features of the training and validation images from the feature cache")
        features, reference = found[len(train):], found[spread]
        before = frozen.feature_head(model).predict(features, batch_size=batch, verbose=0)
    else:
        before, features = two.predict(make_dataset(val, size, batch, channels=channels), verbose=0)
        _, reference = two.predict(make_dataset(train.subset(spread), size, batch, channels=channels), verbose=0)
    return before, features, cal.normalized(reference).astype(np.float16).astype(np.float32)


def _spread(images: int) -> np.ndarray:
    """The training images whose features are the reference: all, or MAX_REFERENCE spread over them."""
    if images <= MAX_REFERENCE:
        return np.arange(images)
    return np.linspace(0, images - 1, MAX_REFERENCE).round().astype(int)
