"""Export a run for serving: a SavedModel in TF Serving's layout, TFLite, ONNX."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from tlkit.data import decode_image
from tlkit.errors import TlkitError, unknown_name
from tlkit.io import write_atomic
from tlkit.rundir import Run, load_run

FORMATS = ("savedmodel", "tflite", "onnx")


def _serving_archive(run: Run) -> keras.export.ExportArchive:
    """Two endpoints: `serving_default` takes a batch of encoded JPEG/PNG/GIF/BMP bytes,
    `serve_images` float32 images in [0, 255] of the model's size; both return `classes` (the
    label strings, most probable first) and `probabilities` (in that same order)."""
    model, labels = run.model, tf.constant(run.labels)
    height, width = run.image_size
    channels = run.channels

    def outputs(probabilities):
        probabilities = tf.cast(probabilities, tf.float32)
        top = tf.argsort(probabilities, axis=-1, direction="DESCENDING", stable=True)
        return {"classes": tf.gather(labels, top), "probabilities": tf.gather(probabilities, top, batch_dims=1)}

    def serve_images(images):
        return outputs(model(images, training=False))

    def serve_bytes(image_bytes):
        images = tf.map_fn(lambda b: decode_image(b, (height, width), channels), image_bytes,
                           fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32))
        return serve_images(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes,
                         [tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("serve_images", serve_images,
                         [tf.TensorSpec([None, height, width, channels], tf.float32, name="images")])
    return archive


def export(model: str | Path, out: str | Path, format: str = "savedmodel", version: int = 1) -> Path:
    """Export the run at `model` to `out`; returns the path written.

    savedmodel: `out/<version>/` as TF Serving expects, plus labels.txt beside the versions.
    tflite: `out/model.tflite` (float32 images in, probabilities in label order out) and labels.txt.
    onnx: `out/model.onnx` and labels.txt, through tf2onnx when it is installed.
    """
    if format not in FORMATS:
        raise unknown_name("export format", format, FORMATS)
    run = load_run(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.path / "labels.txt", out / "labels.txt")
    if format == "savedmodel":
        target = out / str(version)
        if target.exists():
            raise TlkitError(f"{target} exists: pass --version N for a new version, or another --out")
        with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
            _serving_archive(run).write_out(tmp, verbose=False)
            Path(tmp).rename(target)
        return target
    if format == "tflite":
        converter = tf.lite.TFLiteConverter.from_keras_model(run.model)
        target = out / "model.tflite"
        data = converter.convert()
    else:
        target = out / "model.onnx"
        data = _to_onnx(run)
    write_atomic(target, lambda tmp: tmp.write_bytes(data))
    return target


def _to_onnx(run: Run) -> bytes:
    try:
        import tf2onnx
    except ImportError as err:
        raise TlkitError("ONNX export needs tf2onnx: pip install tf2onnx, then export again") from err
    spec = (tf.TensorSpec((None, *run.image_size, run.channels), tf.float32, name="images"),)
    proto, _ = tf2onnx.convert.from_keras(run.model, input_signature=spec)
    return proto.SerializeToString()
