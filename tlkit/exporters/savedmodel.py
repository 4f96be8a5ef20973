"""SavedModel in TF Serving's layout: `<out>/<version>/`, serving encoded image bytes.

TensorFlow is imported inside the functions, here and in every format module (see `_export`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlkit._util.io import write_dir_atomic
from tlkit.exporters._registry import FORMATS, Format

if TYPE_CHECKING:
    import keras

    from tlkit.rundir.load import Run


def serving_archive(run: Run) -> keras.export.ExportArchive:
    """Two endpoints: `serving_default` takes a batch of encoded images (`image_bytes`, see
    `_decode` for the formats), `serve_images` float32 images in [0, 255] of the model's size;
    both return `classes` (the label strings, most probable first) and `probabilities` (in that
    same order); of a multi-label run also `above_threshold` (in that order: whether each label's
    probability reaches its threshold, so the labels predicted are `classes[above_threshold]`). A run
    with an unknown threshold adds `unknown_score` (float32 per image: 1 - the cosine similarity of
    its pooled features to the nearest training image's, which the SavedModel holds) and `unknown`
    (bool per image: the score is above the run's threshold)."""
    import keras
    import tensorflow as tf

    from tlkit.exporters._decode import decode_batch
    from tlkit.models.calibration import with_features
    from tlkit.rundir.load import read_thresholds

    model, labels = run.model, tf.constant(run.labels)
    height, width = run.image_size
    channels = run.channels
    threshold = run.unknown_threshold
    scored = with_features(model) if threshold is not None else None
    if scored is not None:
        reference = tf.constant(run.reference.T.astype(np.float16))  # as reference.npy holds it: exact

    thresholds = tf.constant(read_thresholds(run)) if run.recipe.task == "multilabel" else None

    def outputs(probabilities):
        probabilities = tf.cast(probabilities, tf.float32)
        top = tf.argsort(probabilities, axis=-1, direction="DESCENDING", stable=True)
        out = {"classes": tf.gather(labels, top), "probabilities": tf.gather(probabilities, top, batch_dims=1)}
        if thresholds is not None:
            out["above_threshold"] = tf.gather(probabilities >= thresholds, top, batch_dims=1)
        return out

    def serve_images(images):
        if scored is None:
            return outputs(model(images, training=False))
        probabilities, features = scored(images, training=False)
        unit = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)
        score = 1.0 - tf.reduce_max(tf.matmul(unit, tf.cast(reference, tf.float32)), axis=-1)
        return {**outputs(probabilities), "unknown_score": score, "unknown": score > threshold}

    def serve_bytes(image_bytes):
        return serve_images(decode_batch(image_bytes, (height, width), channels))

    archive = keras.export.ExportArchive()
    # no `archive.track(model)`: the endpoints track the variables they use, and Keras 3.15
    # saves a tracked model's weights a second time, doubling the SavedModel
    archive.add_endpoint("serving_default", serve_bytes,
                         [tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("serve_images", serve_images,
                         [tf.TensorSpec([None, height, width, channels], tf.float32, name="images")])
    return archive


def write(run: Run, target: Path, quantize: str, calibration) -> None:
    write_dir_atomic(target, lambda tmp: serving_archive(run).write_out(str(tmp), verbose=False))


def predict(target: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities in label order, through `serve_images` (which sorts them by probability)."""
    import tensorflow as tf

    out = tf.saved_model.load(str(target)).signatures["serve_images"](images=tf.constant(images))
    labels = [line for line in (target.parent / "labels.txt").read_text(encoding="utf-8").splitlines() if line]
    column = {name: i for i, name in enumerate(labels)}
    probabilities = np.zeros(out["probabilities"].shape, np.float32)
    for row, (classes, values) in enumerate(zip(out["classes"].numpy(), out["probabilities"].numpy())):
        probabilities[row, [column[c.decode()] for c in classes]] = values
    return probabilities


FORMATS.add("savedmodel", Format(None, write, predict))
