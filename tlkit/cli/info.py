"""The commands that describe what tlkit has: bases (and bases import), recipes, inspect.
"""
from __future__ import annotations

import click

from tlkit.cli._app import cli, import_tensorflow
from tlkit.errors import TlkitError
from tlkit.recipe.schema import Recipe, Stage, builtin_recipes


@cli.command()
@click.option("--arch", help="A zoo architecture or any base name.")
@click.option("--model", type=click.Path(), help="Or a run directory / .keras file.")
@click.option("--image-size", type=int, help="Square input side (default: the network's own).")
@click.option("--batch-size", default=1, show_default=True, help="For the training-step memory estimate.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(arch, model, image_size, batch_size, as_json):
    """Per-layer shapes, parameters, MACs/FLOPs and memory; the memory of one training step."""
    import_tensorflow()
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


@cli.group(invoke_without_command=True)
@click.pass_context
def bases(ctx):
    """List every base: source, default input size, blocks, parameters, and whether its weights are here."""
    import_tensorflow()
    if ctx.invoked_subcommand is None:
        from tlkit.bases.listing import format_bases, list_bases

        click.echo(format_bases(list_bases()))


@bases.command("import")
@click.argument("name")
@click.argument("file", type=click.Path())
def bases_import(name, file):
    """Put FILE, the ImageNet weights of base NAME obtained elsewhere, where Keras' cache expects
    them, after checking its hash (for machines with no network)."""
    import_tensorflow()
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
