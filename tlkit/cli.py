"""The `tlkit` command line: thin click commands over the library's functions."""
from __future__ import annotations

import functools
import os
import sys

import click

from tlkit.errors import TlkitError
# Light to import (TensorFlow is loaded only when exporting): the --format and --quantize choices.
from tlkit.exporters import FORMATS as EXPORT_FORMATS
from tlkit.exporters.tflite import QUANTIZATIONS


def _quiet_tensorflow() -> None:
    """Import TensorFlow and probe for a GPU with stderr closed.

    Its C++ start-up chatter (oneDNN notices, CUDA probing on a machine without a GPU) is noise
    to a user, and part of it is printed before TF_CPP_MIN_LOG_LEVEL is read, so only closing
    the file descriptor silences it. `--debug` keeps it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def training_options(command):
    """Options every training command shares; they override the recipe's settings."""
    options = [
        click.option("--data", type=click.Path(), help="Folder with one sub-folder of images per class."),
        click.option("--recipe", help="A built-in recipe name (see `tlkit recipes`) or a .toml file."),
        click.option("--out", type=click.Path(), help="Run directory (default runs/<name>-<time>)."),
        click.option("--val-split", type=float, help="Fraction of each class held out for validation."),
        click.option("--val-data", type=click.Path(), help="A separate validation folder instead of a split."),
        click.option("--skip-bad", is_flag=True, default=None, help="Skip corrupt or unreadable images and report them."),
        click.option("--augment/--no-augment", default=None, help="Random flips, crops and brightness in training."),
        click.option("--batch-size", type=int),
        click.option("--image-size", type=int, help="Square input side in pixels (default: the base's)."),
        click.option("--seed", type=int),
        click.option("--early-stopping", type=int, metavar="PATIENCE", help="Stop a stage after PATIENCE epochs without a better val_loss."),
        click.option("--mixed-precision", is_flag=True, default=None, help="mixed_float16 compute, float32 output (GPU)."),
        click.option("--dropout", type=float, help="Dropout before the new head's dense layer."),
        click.option("--pooling", type=click.Choice(["avg", "max", "flatten"]),
                     help="How the new head reduces the base's feature map (default avg; flatten keeps the layout)."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full stack trace of an error.")
@click.pass_context
def cli(ctx, debug):
    """Transfer learning on a folder of images: fine-tune, extract, pretrain, evaluate, export."""
    ctx.obj = {"debug": debug}
    if not debug:
        _quiet_tensorflow()


@cli.command()
@click.option("--base", help="A base name (see `tlkit bases`), hub:HANDLE, a .keras file or a run directory.")
@click.option("--weights", help="imagenet (default), none, or a weights file.")
@click.option("--base-layer", help="Cut the base at this layer: its output becomes the features.")
@click.option("--hub-range", help="Pixel range a hub: base expects: 0,1 (default), -1,1 or 0,255.")
@training_options
@click.option("--epochs-head", type=int, help="Epochs of the head stage(s).")
@click.option("--epochs-finetune", type=int, help="Epochs of the finetune stage(s).")
@click.option("--unfreeze", type=int, metavar="N", help="Blocks of the base to unfreeze in finetune stages.")
@click.option("--lr-head", type=float)
@click.option("--lr-finetune", type=float)
def finetune(**options):
    """Fine-tune a pretrained base: train a new head, then unfreeze the top blocks."""
    from tlkit.engine import finetune as run

    run(**_given(options))


def _given(options: dict) -> dict:
    """The library's keyword arguments from click's, dropping options the user did not give."""
    return {k: v for k, v in options.items() if v is not None}


@cli.command()
@click.option("--arch", required=True, help="A zoo architecture: lenet5, alexnet, vgg16, googlenet, resnet18, ...")
@training_options
@click.option("--epochs", type=int, help="Epochs of the train stage.")
@click.option("--lr", "learning_rate", type=float, help="Learning rate of the train stage.")
def train(arch, **options):
    """Train a classic CNN from scratch (recipe: scratch)."""
    from tlkit.engine import train as run

    run(arch, **_given(options))


@cli.command()
@click.option("--base", help="A base name (see `tlkit bases`), hub:HANDLE, a .keras file or a run directory.")
@click.option("--weights", help="imagenet (default), none, or a weights file.")
@training_options
@click.option("--epochs", type=int, help="Epochs of the extract stage(s).")
@click.option("--lr", "learning_rate", type=float, help="Learning rate of the extract stage(s).")
@click.option("--cache", type=click.Path(), help="Feature cache folder (default $TLKIT_CACHE/features, "
              "else ~/.cache/tlkit/features).")
def extract(**options):
    """Feature extraction: run the frozen base once (features cached on disk), train a head on them."""
    from tlkit.engine import extract as run

    run(**_given(options))


@cli.command()
@click.option("--data", type=click.Path(), help="Folder of images, with or without sub-folders (labels are not used).")
@click.option("--recipe", help="A built-in recipe name or a .toml file (default: autoencoder).")
@click.option("--out", type=click.Path(), help="Run directory (default runs/autoencoder-<time>).")
@click.option("--decoder", type=click.Choice(["unpool", "transpose"]),
              help="Max-unpooling with the pooling switches (default), or transposed convolutions.")
@click.option("--noise", type=float, metavar="STD",
              help="Denoising: Gaussian noise of this std on [0, 1]-scaled inputs.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Gray or RGB input (default 3).")
@click.option("--image-size", type=int, help="Square input side, a multiple of 8 (default 64).")
@click.option("--epochs", type=int)
@click.option("--lr", "learning_rate", type=float)
@click.option("--batch-size", type=int)
@click.option("--val-split", type=float)
@click.option("--seed", type=int)
@click.option("--skip-bad", is_flag=True, default=None, help="Skip corrupt or unreadable images and report them.")
def pretrain(channels, **options):
    """Pretrain a convolutional autoencoder on unlabeled images; its encoder becomes a base."""
    from tlkit.pretrain import pretrain as run

    run(channels=int(channels) if channels else None, **_given(options))


@cli.command()
@click.option("--arch", help="A zoo architecture or any base name.")
@click.option("--model", type=click.Path(), help="Or a run directory / .keras file.")
@click.option("--image-size", type=int, help="Square input side (default: the network's own).")
@click.option("--batch-size", default=1, show_default=True, help="For the training-step memory estimate.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(arch, model, image_size, batch_size, as_json):
    """Per-layer shapes, parameters, MACs/FLOPs and memory; the memory of one training step."""
    from tlkit.inspect import build_for_inspect, format_report, inspect_model

    if bool(arch) == bool(model):
        raise TlkitError("pass one of --arch NAME or --model RUN")
    if arch:
        network = build_for_inspect(arch, image_size)
    else:
        from tlkit.rundir import load_run

        network = load_run(model).model
    report = inspect_model(network, batch_size=batch_size)
    click.echo(report.to_json() if as_json else format_report(report))


@cli.group()
def visualize():
    """Pictures of what a model learned."""


@visualize.command("filters")
@click.option("--model", required=True, type=click.Path(), help="A run directory or .keras file.")
@click.option("--out", required=True, type=click.Path(), help="The PNG to write.")
def visualize_filters(model, out):
    """The first convolution's kernels as an image grid."""
    from tlkit.rundir import load_run
    from tlkit.visualize import plot_filters

    click.echo(f"wrote {plot_filters(load_run(model).model, out)}")


@visualize.command("activations")
@click.option("--model", required=True, type=click.Path(), help="A run directory or .keras file.")
@click.option("--image", required=True, type=click.Path(), help="One image.")
@click.option("--out", required=True, type=click.Path(), help="Folder for one PNG per stage.")
def visualize_activations(model, image, out):
    """The feature maps after each stage (block) of the network, for one image."""
    from tlkit.visualize import plot_run_activations

    for path in plot_run_activations(model, image, out):
        click.echo(f"wrote {path}")


@cli.group(invoke_without_command=True)
@click.pass_context
def bases(ctx):
    """List every base: source, default input size, blocks, parameters, and whether its weights are here."""
    if ctx.invoked_subcommand is None:
        from tlkit.bases.catalog import format_bases, list_bases

        click.echo(format_bases(list_bases()))


@bases.command("import")
@click.argument("name")
@click.argument("file", type=click.Path())
def bases_import(name, file):
    """Put FILE, the ImageNet weights of base NAME obtained elsewhere, where Keras' cache expects
    them, after checking its hash (for machines with no network)."""
    from tlkit.bases.catalog import import_weights

    click.echo(f"wrote {import_weights(name, file)}")


@cli.command()
@click.argument("what", required=False, type=click.Choice(["list"]), default="list")
def recipes(what):
    """List the built-in recipes."""
    from tlkit.recipe import builtin_recipes

    for name, recipe in builtin_recipes().items():
        stages = " -> ".join(
            f"{s.kind}({s.epochs} ep, lr {s.learning_rate:g}{f', top {s.unfreeze}' if s.unfreeze else ''})"
            for s in recipe.stages
        )
        click.echo(f"{name:12s} {stages}")
        click.echo(f"{'':12s} {recipe.description}")


@cli.command()
@click.option("--model", required=True, type=click.Path(), help="A run directory.")
@click.option("--top", default=3, show_default=True, help="How many classes to show per image.")
@click.argument("images", nargs=-1, required=True, type=click.Path())
def predict(model, top, images):
    """Print the most probable classes of each IMAGE."""
    from tlkit.inference import predict as run

    for result in run(model, list(images), top=top):
        ranked = ", ".join(f"{label} {p:.3f}" for label, p in result.top)
        click.echo(f"{result.path}: {ranked}")


@cli.command()
@click.option("--model", required=True, type=click.Path(), help="A run directory.")
@click.option("--data", required=True, type=click.Path(), help="A labelled folder (one sub-folder per class).")
@click.option("--out", type=click.Path(), help="Metrics file (default RUN/evaluation.json).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--skip-bad", is_flag=True)
def evaluate(model, data, out, batch_size, skip_bad):
    """Accuracy of a run on a labelled folder; writes a metrics file."""
    from tlkit.inference import evaluate as run

    metrics = run(model, data, out, batch_size=batch_size, skip_bad=skip_bad)
    click.echo(f"accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}  on {metrics['images']} images")
    for label, accuracy in metrics["per_class_accuracy"].items():
        click.echo(f"  {label:20s} {accuracy:.4f}")


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
def export(model, out, fmt, version, quantize, calibration_images, check, verbose):
    """Export a run as a SavedModel for TF Serving, TFLite or ONNX, and check it."""
    from tlkit.exporters import export as run

    done = run(model, out, fmt, version, quantize=quantize, calibration_images=calibration_images,
               check=check, verbose=verbose)
    click.echo(done.summary())


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="tlkit", standalone_mode=False)
    except TlkitError as err:
        if debug:
            raise
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
