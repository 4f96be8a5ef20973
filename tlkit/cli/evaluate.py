"""The commands that read a run: predict, evaluate, visualize (filters, activations, gradcam).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from tlkit.cli._app import cli, import_tensorflow
from tlkit.cli._options import check_folders, check_model, checkpoint_option, manifest_options
from tlkit.errors import TlkitError


def _load(model: str, checkpoint: str):
    """Load a run and say which model file is used."""
    from tlkit.rundir.load import load_run

    run = load_run(model, checkpoint)
    click.echo(f"model: {run.describe()}")
    return run


@cli.group()
def visualize():
    """Pictures of what a model learned, and where it looks (Grad-CAM)."""


@visualize.command("filters")
@click.option("--model", required=True, type=click.Path(), help="A run directory or .keras file.")
@click.option("--out", required=True, type=click.Path(), help="The PNG to write.")
@checkpoint_option
def visualize_filters(model, out, checkpoint):
    """The first convolution's kernels as an image grid."""
    import_tensorflow()
    from tlkit.evaluation.visualize import plot_filters

    click.echo(f"wrote {plot_filters(_load(model, checkpoint).model, out)}")


@visualize.command("activations")
@click.option("--model", required=True, type=click.Path(), help="A run directory or .keras file.")
@click.option("--image", required=True, type=click.Path(), help="One image.")
@click.option("--out", required=True, type=click.Path(), help="Folder for one PNG per stage.")
@checkpoint_option
def visualize_activations(model, image, out, checkpoint):
    """The feature maps after each stage (block) of the network, for one image."""
    import_tensorflow()
    from tlkit.evaluation.visualize import plot_run_activations

    for path in plot_run_activations(_load(model, checkpoint), image, out):
        click.echo(f"wrote {path}")


@visualize.command("gradcam")
@click.option("--model", required=True, type=click.Path(), help="A run directory.")
@click.option("--class", "class_name", help="Show the evidence for this class (default: the predicted one).")
@click.option("--out", required=True, type=click.Path(), help="Folder for one PNG per image.")
@checkpoint_option
@click.argument("images", nargs=-1, required=True, type=click.Path())
def visualize_gradcam(model, class_name, out, checkpoint, images):
    """Grad-CAM: where in each IMAGE (files or folders) the evidence for a class lies, at the last
    block of the base."""
    import_tensorflow()
    from tlkit.evaluation.gradcam import plot_gradcam
    from tlkit.evaluation.predict import image_files

    for path in plot_gradcam(_load(model, checkpoint), image_files(images), out, class_name):
        click.echo(f"wrote {path}")


@cli.command()
@click.option("--model", required=True, type=click.Path(), help="A run directory.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(min=1),
              help="How many classes to show per image.")
@click.option("--out", type=click.Path(), help="Also write the predictions to FILE.csv or FILE.json.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--tta", default=1, show_default=True, metavar="N", type=click.IntRange(1, 12),
              help="Test-time augmentation: average over N views (mirror, crops), at most 12.")
@click.option("--skip-bad", is_flag=True, help="Skip (and name) files that do not decode; predict the others.")
@checkpoint_option
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def predict(model, top, out, batch_size, tta, skip_bad, checkpoint, paths):
    """Print the most probable classes of each image in PATHS (image files, or folders searched
    recursively)."""
    check_model(model)
    if out and Path(out).suffix.lower() not in (".csv", ".json"):
        raise TlkitError(f"--out '{out}': give a .csv or .json file name")
    import_tensorflow()
    from tlkit.evaluation.predict import predict as run

    results = run(_load(model, checkpoint), list(paths), top=top, batch_size=batch_size, skip_bad=skip_bad,
                  tta=tta, out=out, progress=True)
    for path, why in results.skipped:
        click.echo(f"skipped {path}: {why}")
    for result in results:
        ranked = ", ".join(f"{label} {p:.3f}" for label, p in result.top) or "(no label above its threshold)"
        if result.unknown:
            ranked = f"unknown (score {result.unknown_score:.3f}; {ranked})"
        click.echo(f"{result.path}: {ranked}")
    if out:
        click.echo(f"wrote {len(results)} predictions to {out}")


@cli.command()
@click.option("--model", required=True, type=click.Path(), help="A run directory.")
@click.option("--data", required=True, type=click.Path(), help="A labelled folder (one sub-folder per class), or "
              "a manifest (.csv, .tsv, .jsonl): its test rows, or all its rows when none is marked test.")
@click.option("--out", type=click.Path(), help="Folder for the report (default RUN/eval-<data folder name>).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--tta", default=1, show_default=True, metavar="N", type=click.IntRange(1, 12),
              help="Test-time augmentation: average over N views (mirror, crops), at most 12.")
@click.option("--top-losses", default=9, show_default=True, type=click.IntRange(min=0),
              help="Images in top_losses.png.")
@click.option("--min-accuracy", type=float, metavar="X", help="Exit with status 1 when the accuracy (of a "
              "multi-label run: the exact-match ratio) is below X (CI).")
@click.option("--skip-bad", is_flag=True)
@click.option("--unknown-data", type=click.Path(), metavar="DIR", help="Images of none of the run's classes: how "
              "well the unknown score tells them from --data (AUROC, false positives, how many get a class).")
@checkpoint_option
@manifest_options
def evaluate(model, data, out, batch_size, tta, top_losses, min_accuracy, skip_bad, unknown_data, checkpoint,
             **manifest):
    """Evaluate a run on a labelled folder: per-class precision, recall, F1; confusion matrix,
    the images with the highest loss and their Grad-CAM, every prediction as CSV."""
    check_model(model)
    check_folders({"data": data})
    if unknown_data is not None and not Path(unknown_data).exists():
        raise TlkitError(f"--unknown-data '{unknown_data}' does not exist: pass a folder of images of none of the "
                         "run's classes")
    import_tensorflow()
    from tlkit.data.manifest import Columns
    from tlkit.evaluation.metrics import format_report
    from tlkit.evaluation.multilabel import format_report as format_multilabel
    from tlkit.evaluation.predict import evaluate as run

    columns = Columns(**{key.removesuffix("_column"): value for key, value in manifest.items()
                         if key.endswith("_column") and value})
    report = run(_load(model, checkpoint), data, out, batch_size=batch_size, skip_bad=skip_bad, tta=tta,
                 progress=True, top_losses=top_losses, unknown_data=unknown_data, image_root=manifest["image_root"],
                 columns=columns)
    for path, why in report["skipped"]:
        click.echo(f"skipped {path}: {why}")
    if report.get("task") == "multilabel":
        click.echo(format_multilabel(report))
        click.echo(f"wrote report.json, predictions.csv to {report['out']}")
    else:
        click.echo(format_report(report))
        click.echo(f"wrote report.json, predictions.csv, confusion.png, top_losses.png to {report['out']}")
    if min_accuracy is not None and report.get("accuracy", report.get("exact_match")) < min_accuracy:
        click.echo(f"error: accuracy {report['accuracy']:.4f} is below --min-accuracy {min_accuracy}", err=True)
        sys.exit(1)
