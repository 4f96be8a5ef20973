"""`tlkit export`: a run for other runtimes (SavedModel, TFLite, ONNX), checked against Keras.
"""
from __future__ import annotations

import click

from tlkit.cli._app import cli, import_tensorflow
from tlkit.cli._options import checkpoint_option
from tlkit.exporters import FORMATS as EXPORT_FORMATS  # no TensorFlow until an export runs
from tlkit.exporters.tflite import QUANTIZATIONS


@cli.command()
@click.option("--model", required=True, type=click.Path(), help="A run directory.")
@click.option("--out", required=True, type=click.Path(), help="Export folder.")
@click.option("--format", "fmt", default="savedmodel", show_default=True, type=click.Choice(list(EXPORT_FORMATS)))
@click.option("--version", default=1, show_default=True, help="SavedModel version folder (TF Serving).")
@click.option("--quantize", default="none", show_default=True, type=click.Choice(QUANTIZATIONS),
              help="TFLite only: int8 weights (dynamic), float16 weights, or int8 weights and activations.")
@click.option("--calibration-images", default=100, show_default=True,
              help="Training images of the run that int8 calibrates its activation ranges on.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run the export in its own runtime on the run's validation images and compare with Keras.")
@click.option("--verbose", is_flag=True, help="Show the converters' own output.")
@checkpoint_option
def export(model, out, fmt, version, quantize, calibration_images, check, verbose, checkpoint):
    """Export a run as a SavedModel for TF Serving, TFLite or ONNX, and check it."""
    import_tensorflow()
    from tlkit.exporters import export as run

    run(model, out, fmt, version, quantize=quantize, calibration_images=calibration_images, check=check,
        verbose=verbose, checkpoint=checkpoint)  # logs its lines: the model used; path, size, agreement
