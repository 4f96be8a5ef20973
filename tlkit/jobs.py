"""The jobs: fine-tune, extract, train from scratch, pretrain. Each resolves its recipe (with the
settings and per-stage parameters given) and runs it through `tlkit.core.run.run_recipe`, so
every job writes the same run directory, whose `recipe.toml` repeats it.

Settings are recipe fields (`weights`, `image_size`, `batch_size`, `seed`, ...); `stages` sets
stage parameters, keyed by kind or by stage number: `stages={"finetune": {"unfreeze": 2}}`.
"""
from __future__ import annotations

import time
from pathlib import Path

import tlkit.stages  # noqa: F401  (registers the stage kinds)
from tlkit.bases import Base
from tlkit.bases.zoo import zoo_input
from tlkit.blocks import build_block_map
from tlkit.core.kinds import StageOverrides, resolve  # noqa: F401  (tlkit.resolve)
from tlkit.core.run import RunContext, run_recipe
from tlkit.errors import TlkitError
from tlkit.models import ZOO


def default_out(name: str) -> Path:
    return Path("runs") / f"{name.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"


def finetune(base: str | None = None, data: str | None = None, recipe=None, out: str | Path | None = None, *,
             stages: StageOverrides | None = None, verbose: str | int = "auto", **settings) -> RunContext:
    """Fine-tune a pretrained base on a folder of images; returns the finished run.

    `recipe` is a Recipe, a built-in name or a TOML path (default: classic). A recipe whose first
    stage is `autoencoder` needs no base: it pretrains its own.
    """
    recipe = resolve(recipe, base=base, data=data, stages=stages, **settings)
    return run_recipe(recipe, None, Path(out) if out else default_out(recipe.base or "run"), verbose=verbose)


def extract(base: str | None = None, data: str | None = None, recipe="extract", out: str | Path | None = None, *,
            stages: StageOverrides | None = None, verbose: str | int = "auto", **settings) -> RunContext:
    """Feature-extraction mode: the frozen base runs once over the images (or its cached features
    are reused, see tlkit.features), a head is trained on the features and attached to the base.
    The run directory is the same as `finetune`'s; `cache=DIR` sets the cache folder."""
    return finetune(base, data, recipe, out, stages=stages, verbose=verbose, **settings)


def train(arch: str, data: str | None = None, recipe="scratch", out: str | Path | None = None, *,
          stages: StageOverrides | None = None, verbose: str | int = "auto", **settings) -> RunContext:
    """Train a zoo architecture from scratch, with its own top, through the same engine and run
    directory as `finetune` (so the result evaluates, predicts and exports the same way)."""
    spec = ZOO.get(arch)
    recipe = resolve(recipe, base=arch, weights="none", data=data, stages=stages, **settings)
    size = (recipe.image_size, recipe.image_size) if recipe.image_size else None

    def build(classes: list[str]):
        inputs, x = zoo_input(spec, size)
        try:
            model = spec.build(include_top=True, classes=len(classes), input_tensor=x)
        except ValueError as err:
            raise TlkitError(f"{arch} cannot take images of {inputs.shape[1]}x{inputs.shape[2]}: {err}") from err
        # the trained top is a block of its own (every layer after the arch's blocks but the input
        # and its scaling), so a later finetune can start from this model
        blocks = build_block_map(model, [*spec.blocks, ("top", r"(?!image$|preprocessing$)")])
        return Base(arch, model, blocks, spec.input_shape[:2], "zoo", "none"), model

    return run_recipe(recipe, None, Path(out) if out else default_out(arch), build=build, verbose=verbose)


def pretrain(data: str | None = None, out: str | Path | None = None, recipe="autoencoder", *,
             stages: StageOverrides | None = None, verbose: str | int = "auto", **settings) -> RunContext:
    """Pretrain a convolutional autoencoder on a folder of unlabeled images (with or without class
    sub-folders); its run directory is a base for `finetune(base=RUN)`."""
    recipe = resolve(recipe, data=data, stages=stages, **settings)
    if [s.kind for s in recipe.stages] != ["autoencoder"]:
        raise TlkitError(f"recipe {recipe.name} is not one autoencoder stage: run recipes with more stages "
                         "through `tlkit finetune --recipe`")
    return run_recipe(recipe, None, Path(out) if out else default_out("autoencoder"), verbose=verbose)
