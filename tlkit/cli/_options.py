"""Options several commands share: the training settings of a recipe, per-stage parameters,
--distribute, --overwrite, --checkpoint; and the checks of paths made before TensorFlow loads.
"""
from __future__ import annotations

import functools
import os
import typing

import click

from tlkit._util.urls import is_url
from tlkit.errors import TlkitError
from tlkit.recipe.kinds import StageParams
from tlkit.recipe.schema import AUGMENT_PRESETS, MANIFEST_SUFFIXES, POOLINGS, Distribute, Recipe, tomllib


def stage_options(values: tuple[str, ...]) -> dict:
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


def with_stage(stages: dict, kind: str, **params) -> dict:
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


MANIFEST_OPTIONS = [
    click.option("--image-root", type=click.Path(), help="Folder a manifest's paths are relative to "
                 "(default: the manifest's folder)."),
    click.option("--path-column", help="A manifest's column of image paths (default path)."),
    click.option("--label-column", help="A manifest's column of labels (default label)."),
    click.option("--split-column", help="A manifest's column of train/val/test (default split; optional)."),
]


def manifest_options(command):
    """--image-root and the column options, for a command whose --data may be a manifest."""
    return functools.reduce(lambda cmd, option: option(cmd), reversed(MANIFEST_OPTIONS), command)


TRACK = click.option("--track", type=click.Choice(["mlflow", "none"]), default=None,
                     help="Log the run to MLflow: parameters, per-epoch metrics, figures, files; the store is "
                          "$MLFLOW_TRACKING_URI, else runs-folder/mlflow.db (default $TLKIT_TRACK, else none).")


DATA_OPTIONS = [
    click.option("--data", type=click.Path(), help="Folder with one sub-folder of images per class, or a "
                 "manifest: a .csv, .tsv or .jsonl table of path,label[,split]."),
    *MANIFEST_OPTIONS,
    click.option("--task", type=click.Choice(typing.get_args(typing.get_type_hints(Recipe)["task"])),
                 help="single (one label an image, the default) or multilabel (any number: a sigmoid per label)."),
    click.option("--label-delimiter", metavar="TEXT", help="Between the labels of a multi-label manifest's "
                 "label cell (default |)."),
    click.option("--threshold", type=float, help="A multi-label run's one threshold for every label "
                 "(default: each label's, chosen on the validation split to maximise its F1)."),
    click.option("--recipe", help="A built-in recipe name (see `tlkit recipes`) or a .toml file."),
    click.option("--out", type=click.Path(), help="Run directory (default runs/<name>-<time>)."),
    OVERWRITE,
    click.option("--val-split", type=float, help="Fraction of each class held out for validation."),
    click.option("--val-data", type=click.Path(), help="A separate validation folder instead of a split."),
    click.option("--skip-bad", is_flag=True, default=None, help="Skip corrupt or unreadable images and report them."),
    click.option("--exclude", type=click.Path(dir_okay=False), metavar="CSV",
                 help="Leave out the files a CSV's `path` column names (e.g. `tlkit audit`'s issues.csv)."),
    click.option("--relabel", type=click.Path(dir_okay=False), metavar="CSV",
                 help="Give the files of a `path,label` CSV the class in its label column."),
]
AUGMENT_OPTIONS = [
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
]
FIT_OPTIONS = [
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
    click.option("--calibrate/--no-calibrate", default=None, help="After training, fit a temperature on the "
                 "validation split, inside the model, for probabilities that are right as often as they say "
                 "(default on)."),
    click.option("--keep", type=float, metavar="SHARE", help="The unknown threshold keeps this share of the "
                 "validation images (default 0.95); `predict` answers `unknown` above it."),
    click.option("--stage-option", "stage_option", multiple=True, metavar="STAGE:KEY=VALUE",
                 help="Set a parameter of one stage, named by kind or number: 3:unfreeze=2, finetune:epochs=4."),
]


def training_options(command):
    """Options every training command shares (data, augmentation, fitting); they override the recipe's settings."""
    options = [*DATA_OPTIONS, *AUGMENT_OPTIONS, *FIT_OPTIONS]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def settings_of(options: dict) -> dict:
    """The library's keyword arguments from click's: the options the user gave, with the
    --stage-option values as the `stages` mapping."""
    stages = stage_options(options.pop("stage_option", ()) or ())
    if options.pop("no_augment", None):
        options["augment"] = "none"
    every = {k: options.pop(k, None) for k in ("schedule", "warmup_epochs")}
    stages = with_stage(stages, "*", **every)
    settings = {k: v for k, v in options.items() if v is not None}
    return {**settings, "stages": stages}


def check_folders(settings: dict) -> None:
    """Refuse a missing --data/--val-data folder at once: tlkit.data.pipeline, which checks them in the
    same words, imports TensorFlow (seconds) first."""
    for name in ("data", "val_data"):
        path = settings.get(name)
        if path is not None and not is_url(path) and not os.path.exists(path):  # a bucket: when TensorFlow is in
            raise TlkitError(f"data {'manifest' if path.lower().endswith(MANIFEST_SUFFIXES) else 'folder'} '{path}' "
                             "does not exist")
    for name in ("exclude", "relabel"):
        path = settings.get(name)
        if path is not None and not os.path.isfile(path):
            raise TlkitError(f"--{name} file '{path}' does not exist: give a CSV with a path column")


def check_model(model: str) -> None:
    """Refuse a missing --model at once, before TensorFlow loads (tlkit.rundir.load says the same after)."""
    if not is_url(model) and not os.path.exists(model):
        raise TlkitError(f"no model at {model}: pass a run directory made by `tlkit finetune` or `tlkit train`")


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


def finetune_settings(options: dict) -> dict:
    """finetune's options (and lr-find's) as the library's arguments."""
    head = dict(epochs=options.pop("epochs_head"), learning_rate=options.pop("lr_head"))
    tune = dict(epochs=options.pop("epochs_finetune"), learning_rate=options.pop("lr_finetune"),
                unfreeze=options.pop("unfreeze"), layer_decay=options.pop("layer_decay"))
    settings = settings_of(options)
    stages = with_stage(settings.pop("stages"), "head", **head)
    settings["stages"] = with_stage(stages, "finetune", **tune)
    return settings


def checkpoint_option(command):
    return click.option(
        "--checkpoint", type=click.Choice(["final", "best"]), default="final", show_default=True,
        help="Which weights of a run directory: final = RUN/model.keras (as the run ended; with early stopping, "
             "its best epoch), best = RUN/checkpoints/best.keras (lowest validation loss of all epochs).")(command)
