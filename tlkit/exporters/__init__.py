"""Exports of a run for other runtimes: a SavedModel for TF Serving, TFLite, ONNX and OpenVINO IR.

One module per format, each adding itself to `FORMATS`; `export` writes any of them and checks
it in its own runtime (`check_export` does that check alone).
"""
# each registers its format, in the order `tlkit export --help` lists them
from tlkit.exporters import savedmodel, tflite, onnx, openvino  # noqa: F401, I001
from tlkit.exporters._export import Check, check_export, export
from tlkit.exporters._registry import FORMATS, Format

__all__ = ["FORMATS", "Check", "Format", "check_export", "export"]
