"""The `tlkit` command line: thin click commands over the library's functions.

Commands import the library inside their function, so that `tlkit --help` and the commands that
need no TensorFlow answer at once.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import signal
import sys
import typing
import warnings
from pathlib import Path

import click

from tlkit import __version__
from tlkit.errors import TlkitError
from tlkit.exporters import FORMATS as EXPORT_FORMATS  # no TensorFlow until an export runs
from tlkit.exporters.tflite import QUANTIZATIONS
from tlkit.recipe.kinds import StageParams
from tlkit.recipe.schema import AUGMENT_PRESETS, POOLINGS, Distribute, Recipe, Stage, builtin_recipes, tomllib
from tlkit.rundir import guard as runguard
from tlkit.stages.autoencoder import Autoencoder


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


def _tensorflow(distribute: str = "none") -> None:
    """Import TensorFlow for a command, its start-up chatter silenced unless --debug."""
    if distribute in ("mirrored", "multiworker"):
        # oneDNN is read once, as TensorFlow loads; its CPU kernels get the empty batch wrong that a
        # replica has when a last batch is smaller than the replicas (core.run.check_replica_batches).
        # A GPU's kernels do not use it.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if not click.get_current_context().obj["debug"]:
        _quiet_tensorflow()


class _Lines(logging.Formatter):
    """The library's messages as the lines the CLI prints: as they are, warnings marked."""

    def format(self, record):
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _install_logging(level: int) -> None:
    logger = logging.getLogger("tlkit")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Lines())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's warnings (a glyph missing from a font, Pillow's decompression-bomb check) as the
    CLI's one `warning:` line, without the source line of the library that raised them."""
    logging.getLogger("tlkit").warning("%s", message)


def _stage_options(values: tuple[str, ...]) -> dict:
    """--stage-option STAGE:KEY=VALUE (STAGE a kind or a stage number; VALUE as in TOML)."""
    stages: dict = {}
    for text in values:
        stage, _, assignment = text.partition(":")
        key, equals, value = assignment.partition("=")
        if not (stage and key and equals and value):
            raise TlkitError(f"--stage-option {text}: write STAGE:KEY=VALUE, e.g. 2:unfreeze=3 or finetune:epochs=4")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare word: a string
        stages.setdefault(int(stage) if stage.isdigit() else stage, {})[key.strip()] = parsed
    return stages


def _with_stage(stages: dict, kind: str, **params) -> dict:
    """`stages` with the given (not None) parameters of the stage(s) of `kind` added."""
    given = {k: v for k, v in params.items() if v is not None}
    if given:
        stages = {**stages, kind: {**stages.get(kind, {}), **given}}
    return stages


DISTRIBUTE = click.option(
    "--distribute", type=click.Choice(typing.get_args(Distribute)),
    help="Spread training over devices: mirrored (every GPU of this machine), multiworker (several machines, from "
         "TF_CONFIG; see the README), none, or auto (default: mirrored when more than one GPU is visible). "
         "--batch-size is the global batch, split over the devices; learning rates are not rescaled.")
OVERWRITE = click.option("--overwrite", is_flag=True, default=None,
                         help="Replace the run already in --out (refused without it).")


def training_options(command):
    """Options every training command shares; they override the recipe's settings."""
    options = [
        click.option("--data", type=click.Path(), help="Folder with one sub-folder of images per class."),
        click.option("--recipe", help="A built-in recipe name (see `tlkit recipes`) or a .toml file."),
        click.option("--out", type=click.Path(), help="Run directory (default runs/<name>-<time>)."),
        OVERWRITE,
        click.option("--val-split", type=float, help="Fraction of each class held out for validation."),
        click.option("--val-data", type=click.Path(), help="A separate validation folder instead of a split."),
        click.option("--skip-bad", is_flag=True, default=None, help="Skip corrupt or unreadable images and report them."),
        click.option("--augment", type=click.Choice(AUGMENT_PRESETS), is_flag=False, flag_value="light", default=None,
                     help="Augmentation preset of the training images: none, light (flip, zoom, brightness; "
                          "--augment alone), standard (+ rotation), strong (RandAugment, erasing, MixUp/CutMix). "
                          "Default: the recipe's (none)."),
        click.option("--no-augment", is_flag=True, default=None, help="The same as --augment none."),
        click.option("--rotate", type=float, metavar="DEG", help="Random rotation up to DEG degrees either way "
                     "(default: the preset's; standard 10)."),
        click.option("--randaugment", metavar="N,M", help="RandAugment: N ops per image at magnitude M of 10 "
                     "(default: the preset's; strong 2,9; 0 is off)."),
        click.option("--erasing", type=float, metavar="P", help="Random erasing of a rectangle with probability P "
                     "(default: the preset's; strong 0.25)."),
        click.option("--mixup", type=float, metavar="ALPHA", help="MixUp with Beta(ALPHA, ALPHA) weights (default: "
                     "the preset's; strong 0.2; 0 is off)."),
        click.option("--cutmix", type=float, metavar="ALPHA", help="CutMix with Beta(ALPHA, ALPHA) areas (default: "
                     "the preset's; strong 1; 0 is off). With MixUp too, each batch gets one of them."),
        click.option("--label-smoothing", type=float, metavar="A", help="Cross-entropy against (1 - A) y + A / K "
                     "(default 0)."),
        click.option("--class-weight", metavar="balanced|none|FILE", help="Weigh the loss per class: balanced "
                     "(n / (K n_c)), none, or a TOML/JSON file of class = weight (default none)."),
        click.option("--schedule", type=click.Choice(typing.get_args(typing.get_type_hints(StageParams)["schedule"])),
                     help="Learning-rate schedule of every stage: "
                     "constant, cosine (decay to 0) or onecycle (fastai's) (default: the recipe's; constant)."),
        click.option("--warmup-epochs", type=float, metavar="E", help="Every stage's rate rises to its value "
                     "over its first E epochs (default: the recipe's; 0)."),
        click.option("--batch-size", type=int),
        click.option("--image-size", type=int, help="Square input side in pixels (default: the base's)."),
        click.option("--seed", type=int),
        click.option("--early-stopping", type=int, metavar="PATIENCE", help="Stop a stage after PATIENCE epochs without a better val_loss."),
        click.option("--mixed-precision", is_flag=True, default=None, help="mixed_float16 compute, float32 output (GPU)."),
        click.option("--dropout", type=float, help="Dropout before the new head's dense layer."),
        click.option("--cache-images", type=click.Choice(typing.get_args(typing.get_type_hints(Recipe)["cache_images"])),
                     help="Keep the decoded, resized images for later epochs: in memory when they fit a budget, on "
                          "disk (under $TLKIT_CACHE), or not (default auto)."),
        DISTRIBUTE,
        click.option("--jit/--no-jit", default=None, help="XLA-compile the train step (jit_compile; off by default)."),
        click.option("--pooling", type=click.Choice(POOLINGS),
                     help="How the new head reduces the base's feature map: avg, or flatten, which keeps the layout "
                          "(default: what the base asks for, flatten for an autoencoder's encoder, else avg)."),
        click.option("--stage-option", "stage_option", multiple=True, metavar="STAGE:KEY=VALUE",
                     help="Set a parameter of one stage, named by kind or number: 3:unfreeze=2, finetune:epochs=4."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def _settings(options: dict) -> dict:
    """The library's keyword arguments from click's: the options the user gave, with the
    --stage-option values as the `stages` mapping."""
    stages = _stage_options(options.pop("stage_option", ()) or ())
    if options.pop("no_augment", None):
        options["augment"] = "none"
    every = {k: options.pop(k, None) for k in ("schedule", "warmup_epochs")}
    stages = _with_stage(stages, "*", **every)
    settings = {k: v for k, v in options.items() if v is not None}
    return {**settings, "stages": stages}


JOB_RECIPES = {"finetune": "classic", "extract": "extract", "train": "scratch", "pretrain": "autoencoder"}


def _check_folders(settings: dict) -> None:
    """Refuse a missing --data/--val-data folder at once: tlkit.data.pipeline, which checks them in the
    same words, imports TensorFlow (seconds) first."""
    for name in ("data", "val_data"):
        path = settings.get(name)
        if path is not None and not os.path.exists(path):
            raise TlkitError(f"data folder '{path}' does not exist")


def _check_model(model: str) -> None:
    """Refuse a missing --model at once, before TensorFlow loads (tlkit.rundir.load says the same after)."""
    if not os.path.exists(model):
        raise TlkitError(f"no model at {model}: pass a run directory made by `tlkit finetune` or `tlkit train`")


def _run_job(job: str, obj: dict, *args, recipe=None, stages=None, out=None, resume=None, overwrite=None,
             **settings) -> None:
    """Check the job's recipe and every option over it (tlkit.recipe.kinds.resolve: no TensorFlow,
    so a mistake is told at once), then import TensorFlow and run the job on the result."""
    import tlkit.stages  # noqa: F401  (registers the stage kinds; imports no TensorFlow)
    from tlkit.recipe.kinds import needs_base, resolve
    from tlkit.rundir.guard import check_out

    if resume:
        given = [name for name, value in {"recipe": recipe, "out": out, "overwrite": overwrite, **settings}.items()
                 if value is not None]
        if stages or any(args) or given:
            options = ", ".join(f"--{name.replace('_', '-')}" for name in given) or "stage options"
            raise TlkitError(f"--resume goes on with the run as its recipe.toml says: drop {options}")
        check_out(resume, resume=True)
        saved = Path(resume) / "recipe.toml"  # a worker's copy of the run may be all its machine has
        _tensorflow(Recipe.load(saved).distribute if saved.is_file() else "none")
        from tlkit import jobs

        with _run_faults(obj):
            jobs.resume(resume, verbose=obj["fit_verbose"])
        return
    if job == "train" and not args[0]:
        raise TlkitError("pass --arch NAME (a zoo architecture: lenet5, alexnet, vgg16, resnet18, ...)")
    if job == "train":
        settings.update(base=args[0], weights="none")
    resolved = resolve(recipe or JOB_RECIPES[job], stages=stages, **settings)
    if job in ("finetune", "extract") and not resolved.base and needs_base(resolved):
        raise TlkitError("no base: pass --base NAME (see `tlkit bases`)")
    _check_folders(settings)
    if out:
        check_out(out, overwrite=bool(overwrite))
    _tensorflow(resolved.distribute)
    from tlkit import jobs

    with _run_faults(obj):
        getattr(jobs, job)(*args, recipe=recipe or JOB_RECIPES[job], stages=stages, out=out,
                           verbose=obj["fit_verbose"], overwrite=bool(overwrite),
                           **{k: v for k, v in settings.items() if job != "train" or k not in ("base", "weights")})


@contextlib.contextmanager
def _run_faults(obj: dict):
    """A full disk during a run: its error line says too what the run saved and how to go on
    from there (--resume only when there is something to resume). It and an interruption start
    on a line of their own, not after the progress bar they cut short."""
    claimed = len(runguard.CLAIMED)
    try:
        yield
    except Exception as err:
        full, runs = _disk_full(err), runguard.CLAIMED[claimed:]
        interrupted = type(err).__name__ == "RunInterrupted"
        if (interrupted or full is not None and runs) and obj["fit_verbose"]:
            click.echo()
        if full is None or not runs:
            raise
        raise TlkitError(f"{os_error_line(full)}; {_what_was_saved(runs[-1])}") from err


def _disk_full(err: Exception) -> OSError | None:
    """`err` as an OSError when it says that the disk is full, else None. TensorFlow's own file
    writes (TensorBoard's event files, a SavedModel) raise its error with the path in the text."""
    if isinstance(err, OSError):
        return err if err.errno in (errno.ENOSPC, errno.EDQUOT) else None
    if not type(err).__module__.startswith("tensorflow"):
        return None
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", str(err))  # the op that failed
    for code in (errno.ENOSPC, errno.EDQUOT):
        found = re.match(rf"(.+?); {re.escape(os.strerror(code))}", text)
        if found:
            return OSError(code, os.strerror(code), found[1])
    return None


def _what_was_saved(run: Path) -> str:
    from tlkit.engine.resume import ResumeState  # loaded: a run was writing

    state = ResumeState.read(run)
    if state is not None:
        return f"{run} is saved at {state.where}: go on with `tlkit {state.job} --resume {run}` once there is space"
    if (run / "model.keras").is_file():
        return f"the trained model is saved in {run / 'model.keras'}, the run's report files are not"
    return (f"nothing of {run} was saved to resume from: run it again once there is space (--out {run} --overwrite "
            "reuses its folder)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tlkit")
@click.option("--debug", is_flag=True, help="Show the full stack trace of an error, and TensorFlow's start-up messages.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors (no progress bars).")
@click.option("-v", "--verbose", is_flag=True, help="Print more detail.")
@click.pass_context
def cli(ctx, debug, quiet, verbose):
    """Transfer learning on a folder of images: fine-tune, extract, pretrain, evaluate, export."""
    ctx.obj = {"debug": debug, "fit_verbose": 0 if quiet else "auto"}
    _install_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    # Commands import TensorFlow (`_tensorflow`) only after checking their options, so that a
    # mistake is told at once.


def finetune_options(command):
    """The options of `tlkit finetune`, which `tlkit lr-find` takes too."""
    options = [
        click.option("--base", help="A base name (see `tlkit bases`), hub:HANDLE, a .keras file or a run directory."),
        click.option("--weights", help="imagenet (default), none, or a weights file."),
        click.option("--base-layer", help="Cut the base at this layer: its output becomes the features."),
        click.option("--hub-range", help="Pixel range a hub: base expects: 0,1 (default), -1,1 or 0,255."),
        training_options,
        click.option("--epochs-head", type=int, help="Epochs of the head stage."),
        click.option("--epochs-finetune", type=int, help="Epochs of the finetune stage."),
        click.option("--unfreeze", type=int, metavar="N", help="Blocks of the base to unfreeze in the finetune stage."),
        click.option("--lr-head", type=float, help="Learning rate of the head stage (`tlkit lr-find` suggests one)."),
        click.option("--lr-finetune", type=float, help="Learning rate of the finetune stage."),
        click.option("--layer-decay", type=float, metavar="F", help="In the finetune stage each unfrozen block "
                     "trains at F times the rate of the one above it (the top one and the head at the stage's "
                     "rate) (default 1: one rate)."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


@cli.command()
@finetune_options
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN",
              help="Go on with the run in RUN from its last saved epoch (after a crash or Ctrl-C).")
@click.pass_obj
def finetune(obj, **options):
    """Fine-tune a pretrained base: train a new head, then unfreeze the top blocks."""
    _run_job("finetune", obj, **_finetune_settings(options))


def _finetune_settings(options: dict) -> dict:
    """finetune's options (and lr-find's) as the library's arguments."""
    head = dict(epochs=options.pop("epochs_head"), learning_rate=options.pop("lr_head"))
    tune = dict(epochs=options.pop("epochs_finetune"), learning_rate=options.pop("lr_finetune"),
                unfreeze=options.pop("unfreeze"), layer_decay=options.pop("layer_decay"))
    settings = _settings(options)
    stages = _with_stage(settings.pop("stages"), "head", **head)
    settings["stages"] = _with_stage(stages, "finetune", **tune)
    return settings


@cli.command("lr-find")
@finetune_options
@click.option("--stage", type=int, default=1, show_default=True, help="The stage of the recipe to sweep (1-based).")
@click.option("--start-lr", type=float, default=1e-7, show_default=True, help="The first learning rate of the sweep.")
@click.option("--end-lr", type=float, default=10.0, show_default=True, help="The last, if the loss has not blown up.")
@click.option("--steps", type=int, default=100, show_default=True, help="Training steps of the sweep.")
@click.pass_obj
def lr_find(obj, stage, start_lr, end_lr, steps, **options):
    """Sweep the learning rate of one stage; plot the loss (OUT/lr_find.png) and print the flag to use.

    The model is the one the stage trains (the same frozen blocks, optimizer, loss and
    augmentation), from the base's weights; nothing is written but the plot (OUT defaults to the
    current folder)."""
    settings = _finetune_settings(options)
    _check_folders(settings)
    settings["out"] = settings.get("out") or "."
    _tensorflow()
    from tlkit.lrfind import lr_find as run

    result = run(stage=stage, start_lr=start_lr, end_lr=end_lr, steps=steps, verbose=obj["fit_verbose"], **settings)
    click.echo(result.flag)


# lr-find takes finetune's options, but its --out holds only the plot
for _param in lr_find.params:
    if _param.name == "out":
        _param.help = "Folder for lr_find.png (default: the current folder)."
    elif _param.name == "overwrite":
        _param.help = "No effect: lr-find always replaces the lr_find.png in --out (it writes nothing else)."


@cli.command()
@click.option("--arch", help="A zoo architecture: lenet5, alexnet, vgg16, googlenet, resnet18, ...")
@training_options
@click.option("--epochs", type=int, help="Epochs of the train stage.")
@click.option("--lr", "learning_rate", type=float, help="Learning rate of the train stage.")
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN",
              help="Go on with the run in RUN from its last saved epoch (after a crash or Ctrl-C).")
@click.pass_obj
def train(obj, arch, epochs, learning_rate, **options):
    """Train a classic CNN from scratch (recipe: scratch)."""
    settings = _settings(options)
    stages = _with_stage(settings.pop("stages"), "train", epochs=epochs, learning_rate=learning_rate)
    _run_job("train", obj, arch, stages=stages, **settings)


@cli.command()
@click.option("--base", help="A base name (see `tlkit bases`), hub:HANDLE, a .keras file or a run directory.")
@click.option("--weights", help="imagenet (default), none, or a weights file.")
@training_options
@click.option("--epochs", type=int, help="Epochs of the extract stage.")
@click.option("--lr", "learning_rate", type=float, help="Learning rate of the extract stage.")
@click.option("--cache", type=click.Path(), help="Feature cache folder (default $TLKIT_CACHE/features, "
              "else ~/.cache/tlkit/features).")
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN",
              help="Go on with the run in RUN from its last saved epoch (after a crash or Ctrl-C).")
@click.pass_obj
def extract(obj, epochs, learning_rate, **options):
    """Feature extraction: run the frozen base once (features cached on disk), train a head on them."""
    settings = _settings(options)
    stages = _with_stage(settings.pop("stages"), "extract", epochs=epochs, learning_rate=learning_rate)
    _run_job("extract", obj, stages=stages, **settings)


@cli.command()
@click.option("--data", type=click.Path(), help="Folder of images, with or without sub-folders (labels are not used).")
@click.option("--recipe", help="A built-in recipe name or a .toml file (default: autoencoder).")
@click.option("--out", type=click.Path(), help="Run directory (default runs/autoencoder-<time>).")
@OVERWRITE
@click.option("--decoder", type=click.Choice(typing.get_args(typing.get_type_hints(Autoencoder)["decoder"])),
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
@DISTRIBUTE
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN",
              help="Go on with the run in RUN from its last saved epoch (after a crash or Ctrl-C).")
@click.pass_obj
def pretrain(obj, decoder, noise, channels, epochs, learning_rate, **options):
    """Pretrain a convolutional autoencoder on unlabeled images; its encoder becomes a base."""
    stages = _with_stage({}, "autoencoder", decoder=decoder, noise=noise, channels=int(channels) if channels else None,
                         epochs=epochs, learning_rate=learning_rate)
    _run_job("pretrain", obj, stages=stages, **{k: v for k, v in options.items() if v is not None})


@cli.command()
@click.option("--arch", help="A zoo architecture or any base name.")
@click.option("--model", type=click.Path(), help="Or a run directory / .keras file.")
@click.option("--image-size", type=int, help="Square input side (default: the network's own).")
@click.option("--batch-size", default=1, show_default=True, help="For the training-step memory estimate.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(arch, model, image_size, batch_size, as_json):
    """Per-layer shapes, parameters, MACs/FLOPs and memory; the memory of one training step."""
    _tensorflow()
    from tlkit.bases.inspect import build_for_inspect, format_report, inspect_model

    if bool(arch) == bool(model):
        raise TlkitError("pass one of --arch NAME or --model RUN")
    if arch:
        network = build_for_inspect(arch, image_size)
    else:
        from tlkit.rundir.load import load_run

        network = load_run(model).model
    report = inspect_model(network, batch_size=batch_size)
    click.echo(report.to_json() if as_json else format_report(report))


def checkpoint_option(command):
    return click.option(
        "--checkpoint", type=click.Choice(["final", "best"]), default="final", show_default=True,
        help="Which weights of a run directory: final = RUN/model.keras (as the run ended; with early stopping, "
             "its best epoch), best = RUN/checkpoints/best.keras (lowest validation loss of all epochs).")(command)


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
    _tensorflow()
    from tlkit.evaluation.visualize import plot_filters

    click.echo(f"wrote {plot_filters(_load(model, checkpoint).model, out)}")


@visualize.command("activations")
@click.option("--model", required=True, type=click.Path(), help="A run directory or .keras file.")
@click.option("--image", required=True, type=click.Path(), help="One image.")
@click.option("--out", required=True, type=click.Path(), help="Folder for one PNG per stage.")
@checkpoint_option
def visualize_activations(model, image, out, checkpoint):
    """The feature maps after each stage (block) of the network, for one image."""
    _tensorflow()
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
    _tensorflow()
    from tlkit.evaluation.predict import image_files
    from tlkit.evaluation.visualize import plot_gradcam

    for path in plot_gradcam(_load(model, checkpoint), image_files(images), out, class_name):
        click.echo(f"wrote {path}")


@cli.group(invoke_without_command=True)
@click.pass_context
def bases(ctx):
    """List every base: source, default input size, blocks, parameters, and whether its weights are here."""
    _tensorflow()
    if ctx.invoked_subcommand is None:
        from tlkit.bases.listing import format_bases, list_bases

        click.echo(format_bases(list_bases()))


@bases.command("import")
@click.argument("name")
@click.argument("file", type=click.Path())
def bases_import(name, file):
    """Put FILE, the ImageNet weights of base NAME obtained elsewhere, where Keras' cache expects
    them, after checking its hash (for machines with no network)."""
    _tensorflow()
    from tlkit.bases.listing import import_weights

    click.echo(f"wrote {import_weights(name, file)}")


@cli.command()
@click.argument("what", required=False, type=click.Choice(["list"]), default="list")
def recipes(what):
    """List the built-in recipes."""
    for name, recipe in builtin_recipes().items():
        stages = " -> ".join(_describe_stage(stage) for stage in recipe.stages)
        settings = _describe_training(recipe)
        click.echo(f"{name:12s} {stages}" + (f"; {settings}" if settings else ""))
        click.echo(f"{'':12s} {recipe.description}")


def _describe_stage(stage: Stage) -> str:
    p = stage.params
    parts = [f"{p['epochs']} ep" if "epochs" in p else None, f"lr {p['learning_rate']:g}" if "learning_rate" in p else None,
             f"top {p['unfreeze']}" if p.get("unfreeze") else None,
             p["schedule"] if p.get("schedule", "constant") != "constant" else None,
             f"warmup {p['warmup_epochs']:g}" if p.get("warmup_epochs") else None,
             f"layer decay {p['layer_decay']:g}" if p.get("layer_decay", 1) != 1 else None]
    return f"{stage.kind}({', '.join(part for part in parts if part)})"


def _describe_training(recipe: Recipe) -> str:
    """The recipe's training settings that differ from plain training, in a few words."""
    parts = [f"augment {recipe.augment}" if recipe.augment != "none" else None,
             f"label smoothing {recipe.label_smoothing:g}" if recipe.label_smoothing else None,
             f"class weight {recipe.class_weight}" if recipe.class_weight != "none" else None,
             *(f"{key} {getattr(recipe, key)}" for key in ("rotate", "randaugment", "erasing", "mixup", "cutmix")
               if getattr(recipe, key) is not None)]
    return ", ".join(part for part in parts if part)


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
    _check_model(model)
    if out and Path(out).suffix.lower() not in (".csv", ".json"):
        raise TlkitError(f"--out '{out}': give a .csv or .json file name")
    _tensorflow()
    from tlkit.evaluation.predict import predict as run

    results = run(_load(model, checkpoint), list(paths), top=top, batch_size=batch_size, skip_bad=skip_bad,
                  tta=tta, out=out, progress=True)
    for path, why in results.skipped:
        click.echo(f"skipped {path}: {why}")
    for result in results:
        ranked = ", ".join(f"{label} {p:.3f}" for label, p in result.top)
        click.echo(f"{result.path}: {ranked}")
    if out:
        click.echo(f"wrote {len(results)} predictions to {out}")


@cli.command()
@click.option("--model", required=True, type=click.Path(), help="A run directory.")
@click.option("--data", required=True, type=click.Path(), help="A labelled folder (one sub-folder per class).")
@click.option("--out", type=click.Path(), help="Folder for the report (default RUN/eval-<data folder name>).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--tta", default=1, show_default=True, metavar="N", type=click.IntRange(1, 12),
              help="Test-time augmentation: average over N views (mirror, crops), at most 12.")
@click.option("--top-losses", default=9, show_default=True, type=click.IntRange(min=0),
              help="Images in top_losses.png.")
@click.option("--min-accuracy", type=float, metavar="X", help="Exit with status 1 when the accuracy is below X (CI).")
@click.option("--skip-bad", is_flag=True)
@checkpoint_option
def evaluate(model, data, out, batch_size, tta, top_losses, min_accuracy, skip_bad, checkpoint):
    """Evaluate a run on a labelled folder: per-class precision, recall, F1; confusion matrix,
    the images with the highest loss and their Grad-CAM, every prediction as CSV."""
    _check_model(model)
    _check_folders({"data": data})
    _tensorflow()
    from tlkit.evaluation.predict import evaluate as run
    from tlkit.evaluation.report import format_report

    report = run(_load(model, checkpoint), data, out, batch_size=batch_size, skip_bad=skip_bad, tta=tta,
                 progress=True, top_losses=top_losses)
    for path, why in report["skipped"]:
        click.echo(f"skipped {path}: {why}")
    click.echo(format_report(report))
    click.echo(f"wrote report.json, predictions.csv, confusion.png, top_losses.png to {report['out']}")
    if min_accuracy is not None and report["accuracy"] < min_accuracy:
        click.echo(f"error: accuracy {report['accuracy']:.4f} is below --min-accuracy {min_accuracy}", err=True)
        sys.exit(1)


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
    _tensorflow()
    from tlkit.exporters import export as run

    run(model, out, fmt, version, quantize=quantize, calibration_images=calibration_images, check=check,
        verbose=verbose, checkpoint=checkpoint)  # logs its lines: the model used; path, size, agreement


# What to do about an operating-system error, by errno; the line names the path first.
_OS_ADVICE = {
    errno.EACCES: "permission denied: check its permissions, or choose another path",
    errno.EPERM: "operation not permitted: check its permissions, or choose another path",
    errno.ENOENT: "does not exist: check the path",
    errno.EISDIR: "is a folder where a file is expected: pass a file, or remove the folder",
    errno.ENOTDIR: "part of the path is a file where a folder is expected: choose another path",
    errno.EROFS: "is on a read-only file system: choose a writable place (--out, $TLKIT_CACHE)",
    errno.ENOSPC: "no space left on its device: free some space or choose another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another disk",
    errno.ELOOP: "is a symbolic link loop: fix or remove the link",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EEXIST: "already exists: choose another path",
}


def os_error_line(err: OSError) -> str:
    """One line for an OSError: the path(s) it names, what went wrong and what to do."""
    paths = " -> ".join(os.fsdecode(p) for p in (err.filename, err.filename2) if p is not None)
    what = _OS_ADVICE.get(err.errno) or (err.strerror or str(err) or type(err).__name__)
    return f"{paths}: {what}" if paths else f"{what}"


def unicode_error_line(err: UnicodeEncodeError | UnicodeDecodeError) -> str:
    text = err.object if isinstance(err.object, str) else os.fsdecode(bytes(err.object))
    verb = "encoded" if isinstance(err, UnicodeEncodeError) else "decoded"
    return (f"{text[max(0, err.start - 40):err.end + 40]!r} cannot be {verb} as {err.encoding}: rename the file or "
            "folder of that name, or convert the file to UTF-8")


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="tlkit", standalone_mode=False)
    except OSError as err:
        if debug:
            raise
        click.echo(f"error: {os_error_line(err)}", err=True)
        sys.exit(2)
    except (UnicodeEncodeError, UnicodeDecodeError) as err:  # a file or folder name not valid in its encoding
        if debug:
            raise
        click.echo(f"error: {unicode_error_line(err)}", err=True)
        sys.exit(2)
    except TlkitError as err:
        if type(err).__name__ == "RunInterrupted":  # Ctrl-C or SIGTERM in a run: saved, and how to go on
            click.echo(str(err), err=True)
            sys.exit(_interrupted_status(err))
        if debug:
            raise
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as err:
        status = _interrupted_status(err)
        click.echo("terminated" if status != 130 else "aborted", err=True)
        sys.exit(status)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except Exception as err:
        full = _disk_full(err)  # TensorFlow's error for a full disk
        if full is None or debug:
            raise
        click.echo(f"error: {os_error_line(full)}", err=True)
        sys.exit(2)


def _interrupted_status(err: BaseException) -> int:
    """The shell's status of a command stopped by a signal: 128 + SIGTERM (143) or SIGINT (130)."""
    cause = err.__cause__ or err.__context__
    return 128 + (signal.SIGTERM if isinstance(cause, runguard.Terminated) else signal.SIGINT)


if __name__ == "__main__":
    main()
