"""Pretraining without labels: a convolutional autoencoder whose encoder becomes a base.

`tlkit pretrain --data DIR` trains one on a folder of images (with or without class
sub-folders) and writes a base directory, which `tlkit finetune --base RUN` takes:

    base.keras          the encoder: float32 [0, 255] images -> the code feature map ([0, 1]
                        scaling inside), reloadable in safe mode
    blocks.json         its block map ({block: [layer names]}, in order)
    autoencoder.keras   the whole autoencoder
    reconstructions.png validation images beside their reconstructions
    recipe.toml, history.json, metrics.json, logs/   as in every run directory

Inside a recipe, an `autoencoder` stage does the same into RUN/autoencoder/ and makes the encoder
the run's base, so the head and finetune stages that follow train on it.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from tlkit import data as tldata
from tlkit.bases import Base
from tlkit.blocks import build_block_map
from tlkit.engine import RunContext, StageResult, configure, default_out, resolve, write_results
from tlkit.errors import TlkitError
from tlkit.models.autoencoder import DEFAULT_SIZE, FILTERS, conv_autoencoder, encoder_blocks, encoder_model
from tlkit.recipe import Recipe, Stage
from tlkit.io import save_model_atomic, write_atomic, write_json_atomic

GRID_IMAGES = 8
GRID_TILE = 64  # smallest side of a tile in the grid, in pixels: small images are enlarged


def build_autoencoder(stage: Stage, image_size: tuple[int, int], channels: int) -> keras.Model:
    try:
        return conv_autoencoder((*image_size, channels), FILTERS, stage.decoder, stage.noise)
    except ValueError as err:
        raise TlkitError(f"{err}; pass --image-size N with N a multiple of {2 ** len(FILTERS)}") from err


def encoder_base(autoencoder: keras.Model, weights: str) -> Base:
    """The autoencoder's encoder as a `Base`, with its block map."""
    model = encoder_model(autoencoder)
    return Base("conv_encoder", model, build_block_map(model, encoder_blocks()), tuple(model.input_shape[1:3]),
                "autoencoder", weights)


def untrained_base(recipe: Recipe) -> Base:
    """The encoder of the recipe's first (autoencoder) stage with random weights: the base a run
    starts from when that stage will pretrain its own."""
    stage = recipe.stages[0]
    size = recipe.image_size or DEFAULT_SIZE
    return encoder_base(build_autoencoder(stage, (size, size), stage.channels or 3), "none")


def autoencoder_stage(ctx: RunContext, index: int, stage: Stage, folder: Path | None = None) -> StageResult:
    """Train the stage's autoencoder on `stage.data` (split as the recipe says) or, without it, on
    the run's images; their labels are not used. Writes the base directory into `folder`
    (default RUN/autoencoder) and makes the encoder the run's base."""
    r = ctx.recipe
    if stage.data:
        train, val = tldata.split(tldata.scan_unlabeled(stage.data, skip_bad=r.skip_bad), r.val_split, r.seed)
        print(f"autoencoder: {len(train)} training and {len(val)} validation images from {stage.data}", flush=True)
    else:
        train, val = ctx.train, ctx.val
    channels = stage.channels or ctx.base.channels

    def pairs(images: tldata.ImageSet, training: bool):
        ds = tldata.make_dataset(images, ctx.image_size, r.batch_size, channels=channels, shuffle=training,
                                 augment=training and r.augment, seed=r.seed)
        return ds.map(lambda x, _: (x, x / 255.0))  # the target is the clean image on the [0, 1] scale

    autoencoder = build_autoencoder(stage, ctx.image_size, channels)
    optimizer = keras.optimizers.Adam(stage.learning_rate)
    autoencoder.compile(optimizer=optimizer, loss="mse")
    # the best-classifier checkpoint is left out: a reconstruction loss is not a classifier's loss
    callbacks = [cb for cb in ctx.callbacks(index, stage) if cb is not ctx.checkpoint]
    start = time.perf_counter()
    history = autoencoder.fit(pairs(train, True), validation_data=pairs(val, False), epochs=stage.epochs,
                              callbacks=callbacks, verbose=ctx.verbose, shuffle=False) if stage.epochs else None
    folder = folder or ctx.out / "autoencoder"
    spread = np.linspace(0, len(val) - 1, min(GRID_IMAGES, len(val))).round().astype(int)  # across classes too
    ctx.base = save_pretrained(autoencoder, folder, [val.files[i] for i in spread], stage.noise)
    ctx.model = None
    return ctx.finish(stage, history.history if history else {}, optimizer, start, autoencoder, pairs(val, False))


def save_pretrained(autoencoder: keras.Model, folder: Path, grid_files, noise: float) -> Base:
    """Write the base directory of a trained autoencoder; returns its encoder as a base."""
    base = encoder_base(autoencoder, str(folder))
    save_model_atomic(base.model, folder / "base.keras")
    write_json_atomic(folder / "blocks.json", {block.name: list(block.layers) for block in base.blocks})
    save_model_atomic(autoencoder, folder / "autoencoder.keras")
    images = tldata.load_images(grid_files, autoencoder.input_shape[1:3], autoencoder.input_shape[-1])
    grid = reconstruction_grid(autoencoder, images, noise)
    write_atomic(folder / "reconstructions.png", lambda tmp: Image.fromarray(grid).save(tmp))
    return base


def reconstruction_grid(autoencoder: keras.Model, images: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """uint8 image: one row per image, the input beside its reconstruction; with `noise`, the
    noisy input the autoencoder was given sits between them (denoising)."""
    columns = [images / 255.0]
    if noise:
        noisy = np.clip(columns[0] + np.random.default_rng(seed).normal(0, noise, images.shape), 0, 1)
        columns.append(noisy.astype(np.float32))
    columns.append(autoencoder.predict(columns[-1] * 255.0, verbose=0))
    scale = max(1, -(-GRID_TILE // min(images.shape[1:3])))  # ceiling division
    gap = 2
    rows = []
    for tiles in zip(*columns):
        tiles = [np.kron(t, np.ones((scale, scale, 1))) for t in tiles]  # nearest-neighbour enlargement
        height = tiles[0].shape[0]
        spacer = np.ones((height, gap, tiles[0].shape[2]))
        rows.append(np.concatenate([x for t in tiles for x in (t, spacer)][:-1], axis=1))
        rows.append(np.ones((gap, rows[-1].shape[1], rows[-1].shape[2])))
    grid = np.concatenate(rows[:-1], axis=0)
    grid = np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)
    return grid[..., 0] if grid.shape[-1] == 1 else grid


def pretrain(data: str | None = None, out: str | Path | None = None, recipe="autoencoder", *,
             verbose: str | int = "auto", decoder: str | None = None, noise: float | None = None,
             channels: int | None = None, epochs: int | None = None, learning_rate: float | None = None,
             **overrides) -> RunContext:
    """Pretrain a convolutional autoencoder on a folder of unlabeled images (with or without class
    sub-folders); its run directory is a base for `finetune(base=RUN)`. `overrides` set recipe
    fields (image_size, batch_size, seed, val_split, ...)."""
    recipe = resolve(recipe, data=data, **overrides).with_stages(
        "autoencoder", decoder=decoder, noise=noise, channels=channels, epochs=epochs, learning_rate=learning_rate)
    if [s.kind for s in recipe.stages] != ["autoencoder"]:
        raise TlkitError(f"recipe {recipe.name} is not one autoencoder stage: run recipes with more stages "
                         "through `tlkit finetune --recipe`")
    if not recipe.data:
        raise TlkitError("no data: pass --data DIR (a folder of images, with or without sub-folders)")
    configure(recipe)
    train, val = tldata.split(tldata.scan_unlabeled(recipe.data, skip_bad=recipe.skip_bad), recipe.val_split,
                              recipe.seed)
    base = untrained_base(recipe)
    recipe = dataclasses.replace(recipe, image_size=base.input_size[0])
    out = Path(out) if out else default_out("autoencoder")
    print(f"{len(train)} training and {len(val)} validation images; run directory {out}", flush=True)
    ctx = RunContext(recipe, base, [], train, val, base.input_size, out, verbose)
    recipe.save(out / "recipe.toml")
    autoencoder_stage(ctx, 1, recipe.stages[0], out)
    write_results(ctx)
    return ctx
