"""The commands that make a run: finetune, train, extract, pretrain (each with --resume), lr-find.
"""
from __future__ import annotations

import contextlib
import typing
from pathlib import Path

import click

from tlkit.cli._app import cli, disk_full, import_tensorflow, os_error_line
from tlkit.cli._options import (
    DISTRIBUTE,
    OVERWRITE,
    TRACK,
    check_folders,
    finetune_options,
    finetune_settings,
    settings_of,
    training_options,
    with_stage,
)
from tlkit.errors import TlkitError
from tlkit.recipe.schema import Recipe
from tlkit.rundir import guard as runguard
from tlkit.rundir.files import RunDir
from tlkit.stages.autoencoder import Autoencoder

JOB_RECIPES = {"finetune": "classic", "extract": "extract", "train": "scratch", "pretrain": "autoencoder"}


def _run_job(job: str, obj: dict, *args, recipe=None, stages=None, out=None, resume=None, overwrite=None,
             track=None, **settings) -> None:
    """Resolve the job's recipe with every option over it (tlkit.recipe.kinds.resolve: no
    TensorFlow, so a mistake is told at once), then import TensorFlow and run that recipe."""
    import tlkit.stages  # noqa: F401  (registers the stage kinds; imports no TensorFlow)
    from tlkit._util.track import tracker_name
    from tlkit.recipe.kinds import needs_base, resolve
    from tlkit.rundir.guard import check_out

    if resume:
        given = [name for name, value in {"recipe": recipe, "out": out, "overwrite": overwrite, **settings}.items()
                 if value is not None]
        if stages or any(args) or given:
            options = ", ".join(f"--{name.replace('_', '-')}" for name in given) or "stage options"
            raise TlkitError(f"--resume goes on with the run as its recipe.toml says: drop {options}")
        check_out(resume, resume=True)
        saved = RunDir(resume).recipe  # a worker's copy of the run may be all its machine has
        import_tensorflow(Recipe.load(saved).distribute if saved.is_file() else "none")
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
    check_folders(settings)
    if out:
        check_out(out, overwrite=bool(overwrite))
    tracker_name(track)  # MLflow missing: told before TensorFlow loads
    import_tensorflow(resolved.distribute)
    from tlkit import jobs

    with _run_faults(obj):  # the recipe as resolved above: once per command
        jobs.run(resolved, out, job=job, verbose=obj["fit_verbose"], overwrite=bool(overwrite), track=track)


@contextlib.contextmanager
def _run_faults(obj: dict):
    """A full disk during a run: its error line says too what the run saved and how to go on
    from there (--resume only when there is something to resume). It and an interruption start
    on a line of their own, not after the progress bar they cut short."""
    claimed = len(runguard.CLAIMED)
    try:
        yield
    except Exception as err:
        full, runs = disk_full(err), runguard.CLAIMED[claimed:]
        interrupted = type(err).__name__ == "RunInterrupted"
        if (interrupted or full is not None and runs) and obj["fit_verbose"]:
            click.echo()
        if full is None or not runs:
            raise
        raise TlkitError(f"{os_error_line(full)}; {_what_was_saved(runs[-1])}") from err


def _what_was_saved(run: Path) -> str:
    from tlkit.engine.resume import ResumeState  # loaded: a run was writing

    state = ResumeState.read(run)
    if state is not None:
        return f"{run} is saved at {state.where}: go on with `tlkit {state.job} --resume {run}` once there is space"
    if RunDir(run).model.is_file():
        return f"the trained model is saved in {RunDir(run).model}, the run's report files are not"
    return (f"nothing of {run} was saved to resume from: run it again once there is space (--out {run} --overwrite "
            "reuses its folder)")


@cli.command()
@finetune_options
@click.option("--resume", type=click.Path(file_okay=False), metavar="RUN",
              help="Go on with the run in RUN from its last saved epoch (after a crash or Ctrl-C).")
@TRACK
@click.pass_obj
def finetune(obj, **options):
    """Fine-tune a pretrained base: train a new head, then unfreeze the top blocks."""
    _run_job("finetune", obj, **finetune_settings(options))


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
    settings = finetune_settings(options)
    check_folders(settings)
    settings["out"] = settings.get("out") or "."
    import_tensorflow()
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
@TRACK
@click.pass_obj
def train(obj, arch, epochs, learning_rate, **options):
    """Train a classic CNN from scratch (recipe: scratch)."""
    settings = settings_of(options)
    stages = with_stage(settings.pop("stages"), "train", epochs=epochs, learning_rate=learning_rate)
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
@TRACK
@click.pass_obj
def extract(obj, epochs, learning_rate, **options):
    """Feature extraction: run the frozen base once (features cached on disk), train a head on them."""
    settings = settings_of(options)
    stages = with_stage(settings.pop("stages"), "extract", epochs=epochs, learning_rate=learning_rate)
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
@TRACK
@click.pass_obj
def pretrain(obj, decoder, noise, channels, epochs, learning_rate, **options):
    """Pretrain a convolutional autoencoder on unlabeled images; its encoder becomes a base."""
    stages = with_stage({}, "autoencoder", decoder=decoder, noise=noise, channels=int(channels) if channels else None,
                         epochs=epochs, learning_rate=learning_rate)
    _run_job("pretrain", obj, stages=stages, **{k: v for k, v in options.items() if v is not None})
