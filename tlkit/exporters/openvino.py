"""OpenVINO IR through Keras' own `model.export(format="openvino")`: `<out>/openvino/model.xml`
(the graph) and `model.bin` (the weights), which OpenVINO reads as a pair, so they are written as
one folder. Input `images`: float32 (batch, h, w, c) in [0, 255]; one output, the probabilities in
label order.

The check runs the IR at float32 inference precision: on CPUs with bf16 support (AMX, AVX512-BF16)
OpenVINO's CPU plugin otherwise infers in bf16, which moved the quick-start run's probabilities by
0.065 and flipped a top-1 on the sample photos. A user gets float32 the same way:
`core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlkit._util.io import write_dir_atomic
from tlkit.errors import TlkitError
from tlkit.exporters._registry import FORMATS, Format

if TYPE_CHECKING:
    from tlkit.rundir.load import Run

GRAPH = "model.xml"
FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _openvino():
    try:
        import openvino
    except ImportError as err:
        raise TlkitError("OpenVINO export needs openvino: pip install 'tlkit[openvino]', then export again") from err
    return openvino


def write(run: Run, target: Path, quantize: str, calibration) -> None:
    import tensorflow as tf

    _openvino()
    spec = tf.TensorSpec([None, *run.image_size, run.channels], tf.float32, name="images")
    write_dir_atomic(target, lambda tmp: run.model.export(str(tmp / GRAPH), format="openvino",
                                                          input_signature=[spec], verbose=False))


def predict(target: Path, images: np.ndarray) -> np.ndarray:
    core = _openvino().Core()
    compiled = core.compile_model(core.read_model(target / GRAPH), "CPU", FLOAT32)
    return compiled(images)[compiled.output(0)]


FORMATS.add("openvino", Format("openvino", write, predict))
