"""`autoencoder`: pretraining without labels. A convolutional autoencoder is trained on images
(the run's, or the folder `data`); its encoder becomes the run's base, so the stages after it
train on that. It writes a base directory, which `tlkit finetune --base DIR` takes:

    base.keras          the encoder: float32 [0, 255] images -> the code feature map ([0, 1]
                        scaling inside), reloadable in safe mode
    blocks.json         its block map ({block: [layer names]}, in order)
    base.json           what a head on it should be: {"pooling": "flatten", "why": ...}
    autoencoder.keras   the whole autoencoder
    reconstructions.png validation images beside their reconstructions

A recipe that is this one stage (`tlkit pretrain`) makes the run directory itself that base
directory; in a longer recipe it is RUN/autoencoder/.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tlkit._util.io import save_model_atomic, write_atomic, write_json_atomic
from tlkit.errors import TlkitError
from tlkit.recipe.kinds import STAGES, StageKind, StageParams, amount
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)

GRID_IMAGES = 8
GRID_TILE = 96  # smallest side of a tile in the grid, in pixels: small images are enlarged
# Global average pooling of the code (4x4 for 32-px digits) throws away where the strokes are:
# a head on it stays near chance, one on the flattened code does not (BENCHMARKS.md).
POOLING = ("flatten", "the encoder's code is a small feature map whose positions matter, which average "
                      "pooling would throw away")


@dataclass
class Autoencoder(StageParams):
    epochs: int = 20
    decoder: Literal["unpool", "transpose"] = "unpool"  # max-unpooling with the switches, or transposed convs
    # denoising: the inputs (training and validation) get Gaussian noise of std up to this, on the
    # [0, 1] scale; the target stays the clean image
    noise: float = 0.0
    channels: Literal[1, 3] | None = None  # default: the run's base's, else 3
    data: str | None = None  # unlabeled images to pretrain on; default: the run's training images

    def problem(self) -> str | None:
        if self.noise < 0:
            return f"noise must be >= 0, not {self.noise}"
        return super().problem()

    def resolved(self) -> Autoencoder:
        return replace(self, data=str(Path(self.data).resolve())) if self.data else self


def build_autoencoder(params: Autoencoder, image_size: tuple[int, int], channels: int):
    from tlkit.models.autoencoder import FILTERS, conv_autoencoder  # TensorFlow: imported when a stage runs,
    # so that checking a recipe stays fast

    try:
        return conv_autoencoder((*image_size, channels), FILTERS, params.decoder)
    except ValueError as err:
        raise TlkitError(f"{err}; pass --image-size N with N a multiple of {2 ** len(FILTERS)}") from err


def encoder_base(autoencoder, weights: str):
    """The autoencoder's encoder as a `Base`, with its block map."""
    from tlkit.bases import Base  # TensorFlow, as above
    from tlkit.models.autoencoder import encoder_blocks, encoder_model
    from tlkit.models.blocks import build_block_map

    model = encoder_model(autoencoder)
    return Base("conv_encoder", model, build_block_map(model, encoder_blocks()), tuple(model.input_shape[1:3]),
                "autoencoder", weights, POOLING)


def untrained_base(recipe, params: Autoencoder):
    """The encoder with random weights: the base a run starts from when its first stage
    pretrains its own."""
    from tlkit.models.autoencoder import DEFAULT_SIZE  # TensorFlow, as above

    size = recipe.image_size or DEFAULT_SIZE
    return encoder_base(build_autoencoder(params, (size, size), params.channels or 3), "none")


def run(ctx, index: int, params: Autoencoder):
    """Train the autoencoder on `params.data` (split as the recipe says) or, without it, on the
    run's images, whose labels are not used; write the base directory and make the encoder the
    run's base."""
    import tensorflow as tf

    from tlkit.data import folders, splits  # TensorFlow, as above
    from tlkit.data import pipeline as tldata
    from tlkit.models.autoencoder import corrupt

    r = ctx.recipe
    if params.data:
        train, val = splits.split(folders.scan_unlabeled(params.data, skip_bad=r.skip_bad), r.val_split, r.seed)
        log.info("autoencoder: %d training and %d validation images from %s", len(train), len(val), params.data)
    else:
        train, val = ctx.train, ctx.val
    channels = params.channels or ctx.base.channels
    # no MixUp or CutMix: they mix labels, and an autoencoder's target is its input
    augment = replace(ctx.augmentation, mixup=0.0, cutmix=0.0)

    def pairs(images, training: bool):
        ds = tldata.make_dataset(images, ctx.image_size, r.batch_size, channels=channels, shuffle=training,
                                 augment=augment if training else False, seed=r.seed)
        ds = ds.map(lambda x, _: (x, x / 255.0))  # the target is the clean image on the [0, 1] scale
        if not params.noise:
            return ds
        if training:
            return ds.map(lambda x, clean: (corrupt(x, params.noise), clean))
        # the same noise model, the same noise every epoch: validation losses compare across epochs
        return ds.enumerate().map(
            lambda i, pair: (corrupt(pair[0], params.noise, tf.stack([tf.constant(r.seed, tf.int64), i])), pair[1]))

    with ctx.strategy.scope():
        autoencoder = build_autoencoder(params, ctx.image_size, channels)
    # a reconstruction loss is not a classifier's: no best-classifier checkpoint
    result = ctx.fit(index, "autoencoder", params, autoencoder, (pairs(train, True), pairs(val, False)),
                     loss="mse", metrics=(), checkpoint=False, detail=f"{params.decoder} decoder"
                     + (f", denoising (noise {params.noise:g})" if params.noise else ""))
    folder = base_folder(ctx)
    spread = np.linspace(0, len(val) - 1, min(GRID_IMAGES, len(val))).round().astype(int)  # across classes too
    ctx.base = save_pretrained(autoencoder, folder, [val.files[i] for i in spread], params.noise)
    ctx.model = None
    return result


def base_folder(ctx) -> Path:
    return ctx.out if len(ctx.recipe.stages) == 1 else ctx.out / "autoencoder"


def skipped(ctx, index: int, params: Autoencoder) -> None:
    """A resumed run past this stage: its encoder, as written, is the base."""
    from tlkit.bases import load_base  # TensorFlow, as above

    ctx.base = load_base(str(base_folder(ctx)))
    ctx.model = None


def save_pretrained(autoencoder, folder: Path, grid_files, noise: float):
    """Write the base directory of a trained autoencoder; returns its encoder as a base."""
    from tlkit.data.pipeline import load_images  # TensorFlow, as above

    base = encoder_base(autoencoder, str(folder))
    save_model_atomic(base.model, RunDir(folder).base)
    RunDir(folder).write_blocks(base.blocks)
    write_json_atomic(folder / "base.json", {"pooling": POOLING[0], "why": POOLING[1]})
    save_model_atomic(autoencoder, folder / "autoencoder.keras")
    images = load_images(grid_files, autoencoder.input_shape[1:3], autoencoder.input_shape[-1])
    grid = reconstruction_grid(autoencoder, images, noise)
    write_atomic(folder / "reconstructions.png", lambda tmp: Image.fromarray(grid).save(tmp))
    return base


def reconstruction_grid(autoencoder, images: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """uint8 image, titled columns, one row per image: the clean image and its reconstruction;
    with `noise` (denoising), the clean image, the noisy one (Gaussian noise of std `noise` on the
    [0, 1] scale, the most training adds) and the reconstruction of the noisy one, which training
    compared with the clean image."""
    columns = {"clean": images}
    if noise:
        rng = np.random.default_rng(seed)
        columns["noisy"] = np.clip(images + 255.0 * rng.normal(0, noise, images.shape), 0, 255).astype(np.float32)
    columns["reconstruction" + ("\nof noisy" if noise else "")] = \
        255.0 * autoencoder.predict(list(columns.values())[-1], verbose=0)
    scale = max(1, -(-GRID_TILE // min(images.shape[1:3])))  # ceiling division
    tile_h, tile_w = images.shape[1] * scale, images.shape[2] * scale
    gap, title = 4, 40
    mode = "L" if images.shape[-1] == 1 else "RGB"
    grid = Image.new(mode, (len(columns) * (tile_w + gap) - gap, title + len(images) * (tile_h + gap) - gap), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=14)
    for c, (name, column) in enumerate(columns.items()):
        left = c * (tile_w + gap)
        draw.multiline_text((left + tile_w / 2, 3), name, fill="black", font=font, anchor="ma", align="center")
        for r, tile in enumerate(np.round(np.clip(column, 0, 255)).astype(np.uint8)):
            tile = Image.fromarray(tile[..., 0] if tile.shape[-1] == 1 else tile)
            grid.paste(tile.resize((tile_w, tile_h), Image.NEAREST), (left, title + r * (tile_h + gap)))
    return np.asarray(grid)


def describe(params: Autoencoder, recipe, blocks: list[str], classes: int) -> str:
    return (f"pretrain a convolutional autoencoder ({params.decoder} decoder, input noise {params.noise:g}), "
            f"{amount(params)}; its encoder becomes the base")


STAGES.add("autoencoder", StageKind(
    "autoencoder", Autoencoder, run, "a convolutional autoencoder pretrained on images alone; its encoder becomes the base",
    describe, needs_labels=False, make_base=untrained_base, skipped=skipped,
))
