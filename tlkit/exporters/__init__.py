"""Exports of a run for other runtimes: a SavedModel for TF Serving, TFLite and ONNX.

One module per format, each adding itself to `FORMATS`; `export` writes any of them and checks
it in its own runtime.
"""
from tlkit.exporters import onnx, savedmodel, tflite  # noqa: F401  (each registers its format)
from tlkit.exporters._export import Check, Exported, export
from tlkit.exporters._registry import FORMATS, Format

__all__ = ["FORMATS", "Check", "Exported", "Format", "export"]
