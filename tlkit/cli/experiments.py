"""runs (the table, diff, plot) and tune (Optuna over finetune's options)."""
from __future__ import annotations

import json

import click

from tlkit.cli._app import cli, import_tensorflow
from tlkit.cli._options import TRACK, check_folders, finetune_options, finetune_settings


class _RunsGroup(click.Group):
    """`tlkit runs [DIR]` is the table; `tlkit runs diff A B` and `tlkit runs plot RUN...` its
    sub-commands: anything that is not a sub-command's name goes to the table."""

    def parse_args(self, ctx, args):
        if not args or args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_RunsGroup)
def runs():
    """The runs under a folder: a table (`tlkit runs [DIR]`), two side by side (`diff A B`), curves (`plot`)."""


@runs.command("list")
@click.argument("folder", default="runs", type=click.Path(file_okay=False))
@click.option("--sort", default="name", show_default=True,
              help="name, status, val_accuracy, val_loss, epochs, seconds, base or image_size.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def list_runs(folder, sort, as_json):
    """A table of the runs under FOLDER (default runs/), with their status and figures."""
    from tlkit.experiments.runs import table, table_lines

    rows = table(folder, sort)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=1))
    elif not rows:
        click.echo(f"no runs under {folder}")
    else:
        click.echo("\n".join(table_lines(rows)))


@runs.command("diff")
@click.argument("a", type=click.Path(file_okay=False))
@click.argument("b", type=click.Path(file_okay=False))
def diff_runs(a, b):
    """The recipe and data differences of runs A and B, and their figures side by side."""
    from tlkit.experiments.runs import diff

    click.echo("\n".join(diff(a, b).lines()))


@runs.command("plot")
@click.argument("paths", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="runs.png", show_default=True, type=click.Path(dir_okay=False),
              help="The picture to write.")
def plot_runs(paths, out):
    """runs.png: the validation curves of the runs given (or of every run under a folder) on one plot."""
    from tlkit.experiments.runs import find_runs, plot

    click.echo(f"wrote {plot([run for path in paths for run in find_runs(path)], out)}")


@cli.command()
@finetune_options
@click.option("--trials", type=int, default=20, show_default=True, help="Trials to run (more, with --resume).")
@click.option("--space", type=click.Path(dir_okay=False), help="The search space, a TOML file: a table per parameter "
              "with low, high (and log), or choices (default: learning rates, unfreeze, layer decay, augmentation, "
              "label smoothing, dropout; augment only in a space file).")
@click.option("--metric", type=click.Choice(["val_accuracy", "val_loss"]), default="val_accuracy", show_default=True,
              help="The objective: the last stage's validation figure.")
@click.option("--resume", type=click.Path(file_okay=False), metavar="STUDY",
              help="Add --trials trials to the study in STUDY, with its recipe, space and objective.")
@TRACK
@click.pass_obj
def tune(obj, trials, space, metric, resume, track, **options):
    """Search hyperparameters with Optuna: each trial a run in the study folder (--out), the best as recipe.toml."""
    import tlkit.stages  # noqa: F401  (registers the stage kinds; imports no TensorFlow)
    from tlkit._util.track import tracker_name
    from tlkit.errors import TlkitError
    from tlkit.recipe.kinds import resolve

    settings = finetune_settings(options)
    out, recipe, stages = settings.pop("out", None), settings.pop("recipe", None), settings.pop("stages")
    settings.pop("overwrite", None)
    tracker_name(track)
    if resume:
        if recipe or stages or settings or space or out:
            raise TlkitError("--resume goes on with the study as its tune.toml says: pass only --trials (and --track)")
        resolved = None
    else:
        resolved = resolve(recipe or "classic", stages=stages, **settings)
        if not resolved.base:
            raise TlkitError("no base: pass --base NAME (see `tlkit bases`)")
        check_folders(settings)
        from tlkit.experiments.space import read_space

        read_space(space, resolved)  # a mistake in it: told before TensorFlow loads
    import_tensorflow(resolved.distribute if resolved else "none")
    from tlkit.experiments.tune import summary_lines
    from tlkit.experiments.tune import tune as run_tune

    result = run_tune(resolved, resume or out, trials=trials, space=space, metric=metric, resume=bool(resume),
                      track=track)
    click.echo("\n".join(summary_lines(result)))
