"""ONNX through Keras' own `model.export(format="onnx")`.

Why that path: tf2onnx's `from_keras` fails on TensorFlow 2.16 and later, and tf2onnx itself is
barely maintained, while Keras' exporter traces the model the way Keras serves it and patches
tf2onnx's converter (`keras.src.export.tf2onnx_lib`) for current TensorFlow and NumPy 2. It
still runs tf2onnx underneath, so the `onnx` extra installs tf2onnx, onnx and onnxruntime.
Afterwards the graph gets names a runtime user can read: input `images`, output
`probabilities`, batch dimension `batch`, and the labels and value range in `metadata_props`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlkit._util.io import write_atomic
from tlkit.errors import TlkitError
from tlkit.exporters._export import calibration_note, label_thresholds, output_note
from tlkit.exporters._registry import FORMATS, Format

if TYPE_CHECKING:
    from tlkit.rundir.load import Run

OPSET = 17  # ONNX 1.12 (2022): every current onnxruntime, OpenCV DNN and TensorRT reads it


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TlkitError(f"ONNX export needs {module}: pip install 'tlkit[onnx]', then export again") from err


def write(run: Run, target: Path, quantize: str, calibration) -> None:
    import tensorflow as tf

    onnx = _require("onnx")
    _require("tf2onnx")
    spec = tf.TensorSpec([None, *run.image_size, run.channels], tf.float32, name="images")

    def export(tmp: Path) -> None:
        run.model.export(str(tmp), format="onnx", input_signature=[spec], opset_version=OPSET, verbose=False)
        proto = onnx.load(str(tmp))
        _rename_output(proto.graph, proto.graph.output[0].name, "probabilities")
        for value in (*proto.graph.input, *proto.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
        height, width = run.image_size
        onnx.helper.set_model_props(proto, {
            "labels": json.dumps(run.labels),
            "input": f"images: float32 (batch, {height}, {width}, {run.channels}), channels last, "
                     f"{'RGB' if run.channels == 3 else 'greyscale'} pixels in [0, 255] (not [0, 1], not centred), "
                     "resized bilinearly (half-pixel centres, no antialiasing) without keeping the aspect ratio",
            "input_range": "[0, 255]",
            "output": f"probabilities: float32 (batch, classes). {output_note(run)}",
            "source": f"tlkit run {run.path.name}, base {run.recipe.base}",
            "calibration": calibration_note(run),
            **({"temperature": str((run.calibration or {}).get("temperature"))} if run.calibration else {}),
            **({"thresholds": json.dumps(label_thresholds(run))} if run.recipe.task == "multilabel" else {}),
            **({"unknown_threshold": str(run.unknown_threshold)} if run.unknown_threshold is not None else {}),
        })
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    write_atomic(target, export)


def _rename_output(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
    graph.output[0].name = new


def predict(target: Path, images: np.ndarray) -> np.ndarray:
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"images": images})[0]


FORMATS.add("onnx", Format("model.onnx", write, predict))
