"""TFLite, float32 or quantized, with the metadata MediaPipe Tasks' ImageClassifier reads.

The signature `serving_default` takes `images` (float32, (1, h, w, c), pixels in [0, 255]) and
gives `probabilities` in label order; every quantization keeps that float32 interface, so one
input contract holds for every file (int8 quantizes and dequantizes inside the model).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlkit._util.io import write_atomic
from tlkit.errors import TlkitError
from tlkit.exporters._export import calibration_note, output_note
from tlkit.exporters._registry import FORMATS, Format
from tlkit.exporters._tflite_metadata import image_classifier_metadata, with_metadata

if TYPE_CHECKING:
    from tlkit.rundir.load import Run

# none: float32. dynamic: int8 weights, float activations. float16: float16 weights.
# int8: int8 weights and activations, their ranges calibrated on training images.
QUANTIZATIONS = ("none", "dynamic", "float16", "int8")


def convert(run: Run, quantize: str, calibration) -> bytes:
    """The run's model as a TFLite flatbuffer (without metadata)."""
    import keras
    import tensorflow as tf

    model = run.model
    spec = tf.TensorSpec([None, *run.image_size, run.channels], tf.float32, name="images")
    archive = keras.export.ExportArchive()  # the SavedModel path, as `from_keras_model` takes too
    # no `archive.track(model)`: the endpoints track the variables they use, and Keras 3.15
    # saves a tracked model's weights a second time, doubling the SavedModel
    archive.add_endpoint("serving_default", lambda images: {"probabilities": model(images, training=False)}, [spec])
    with tempfile.TemporaryDirectory() as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serving_default"])
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            images = calibration()
            converter.representative_dataset = lambda: ([image[None]] for image in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            return converter.convert()
        except Exception as err:  # ConverterError (not public API); RuntimeError from int8 calibration
            advice = "; try --quantize dynamic" if quantize == "int8" else ""
            raise TlkitError(f"the TFLite converter failed ({str(err).strip().splitlines()[0]}){advice}; "
                             "--verbose shows its output") from err


def write(run: Run, target: Path, quantize: str, calibration) -> None:
    height, width = run.image_size
    colour = "RGB" if run.channels == 3 else "greyscale"
    metadata = image_classifier_metadata(
        name=f"tlkit {run.path.name}",
        description=(f"Classifies {width}x{height} {colour} images into {len(run.labels)} classes "
                     f"({', '.join(run.labels[:10])}{', ...' if len(run.labels) > 10 else ''}); "
                     f"base {run.recipe.base}, made with tlkit, quantization {quantize}. {calibration_note(run)}"),
        version=run.path.name,
        labels=run.labels,
        channels=run.channels,
        input_description=(f"{colour} image, float32 pixels in [0, 255] (not [0, 1], not centred), "
                           f"{width}x{height}, resized bilinearly without keeping the aspect ratio."),
        output_description=output_note(run),
    )
    data = with_metadata(convert(run, quantize, calibration), metadata, run.labels)
    write_atomic(target, lambda tmp: tmp.write_bytes(data))


def predict(target: Path, images: np.ndarray) -> np.ndarray:
    """Probabilities from the LiteRT interpreter, one image at a time (the input's batch is 1)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(target)).get_signature_runner()
    return np.concatenate([runner(images=image[None])["probabilities"] for image in images])


FORMATS.add("tflite", Format("model.tflite", write, predict, QUANTIZATIONS))
