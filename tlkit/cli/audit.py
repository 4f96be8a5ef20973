"""`tlkit audit`: label issues, near-duplicates, leaks and outliers of a labelled folder."""
from __future__ import annotations

import click

from tlkit.cli._app import cli, import_tensorflow
from tlkit.cli._options import check_folders, check_model, manifest_options
from tlkit.errors import TlkitError


@cli.command()
@click.option("--data", type=click.Path(), required=True, help="Folder with one sub-folder of images per class, or a "
              "manifest: a .csv, .tsv or .jsonl table of path,label[,split].")
@click.option("--base", help="A base name (see `tlkit bases`), hub:HANDLE or a .keras file: its pooled features.")
@click.option("--model", type=click.Path(), metavar="RUN", help="A trained run: its base's features instead.")
@click.option("--out", type=click.Path(file_okay=False), default="audit", show_default=True,
              help="Folder for issues.csv, summary.json and the galleries.")
@click.option("--val-data", type=click.Path(), help="A separate validation folder (else the split training makes).")
@click.option("--val-split", type=float, default=0.2, show_default=True, help="Validation fraction of that split.")
@click.option("--folds", type=int, default=5, show_default=True, help="Folds of the out-of-fold heads.")
@click.option("--image-size", type=int, help="Square input side in pixels (default: the base's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Skip corrupt or unreadable images and report them.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--task", type=click.Choice(["single", "multilabel"]), default="single", show_default=True,
              help="multilabel: any number of labels an image, audited with cleanlab's multi-label functions.")
@click.option("--label-delimiter", default="|", show_default=True, metavar="TEXT",
              help="Between the labels of a multi-label manifest's label cell.")
@click.option("--cache", type=click.Path(), help="Feature cache folder (default $TLKIT_CACHE/features, "
              "else ~/.cache/tlkit/features).")
@manifest_options
@click.pass_obj
def audit(obj, data, base, model, task, **options):
    """Find mislabelled images, near-duplicates (across the split first), outliers and blank images."""
    if bool(base) == bool(model):
        raise TlkitError("pass --base NAME (see `tlkit bases`) or --model RUN (a trained run's base), one of them")
    if base:
        from tlkit.recipe.kinds import check_base
        from tlkit.recipe.schema import Recipe

        check_base(Recipe(base=base))  # a misspelt name before TensorFlow loads
    else:
        check_model(model)
    check_folders({"data": data, "val_data": options["val_data"]})
    import_tensorflow()
    from tlkit.audit import audit as run
    from tlkit.data.manifest import Columns
    from tlkit.data.report import console_progress

    named = {key.removesuffix("_column"): options.pop(key) for key in ("path_column", "label_column", "split_column")}
    columns = Columns(**{key: value for key, value in named.items() if value})
    progress = console_progress() if obj["fit_verbose"] else None
    result = run(data, base=base, model=model, multilabel=task == "multilabel", columns=columns,
                 verbose=obj["fit_verbose"], progress=progress, **options)
    click.echo("\n".join(result.table()))
