"""The commands that prepare data: pack (a folder of images to TFRecord shards).
"""
from __future__ import annotations

import click

from tlkit.cli._app import cli, import_tensorflow
from tlkit.cli._options import check_folders


@cli.command()
@click.option("--data", required=True, type=click.Path(), help="A folder of class folders (on this machine).")
@click.option("--out", required=True, help="A new or empty folder for the shards (gs://, ram://, ... too).")
@click.option("--skip-bad", is_flag=True, help="Leave bad images out (listed in the index's report) instead of stopping.")
@click.option("--seed", default=0, show_default=True, help="Seed of the shuffle.")
@click.option("--shard-mb", default=150, show_default=True, type=click.IntRange(1),
              help="Megabytes of images per shard.")
def pack(data, out, skip_bad, seed, shard_mb):
    """Checked, shuffled TFRecord shards of a folder, with an index (classes, labels, digests, data report)."""
    check_folders({"data": data})
    import_tensorflow()
    from tlkit.data.report import console_progress
    from tlkit.data.shards import pack as pack_shards

    index = pack_shards(data, out, skip_bad=skip_bad, seed=seed, shard_bytes=shard_mb << 20,
                        progress=console_progress())
    images, n = sum(len(shard["labels"]) for shard in index["shards"]), len(index["shards"])
    click.echo(f"packed {images} images of {len(index['classes'])} classes into {n} "
               f"{'shard' if n == 1 else 'shards'} in {out} (index.json lists them)")
