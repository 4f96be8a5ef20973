"""Augmentation presets: Keras' own preprocessing layers, applied to batches in the training
tf.data pipeline only (never inside a model, so never inside an exported one).

    none      nothing
    light     flip, zoom in up to 20%, brightness +-10% (the `--augment` of tlkit 0.1)
    standard  flip, rotation +-10 degrees, zoom in up to 20%, brightness +-20% (fastai's aug_transforms)
    strong    flip, zoom, RandAugment 2 ops at magnitude 9, random erasing 25%, and per batch either
              MixUp (alpha 0.2) or CutMix (alpha 1), as timm's --aa rand-m9 --reprob 0.25 --mixup 0.2 --cutmix 1

The recipe's `rotate`, `randaugment`, `erasing`, `mixup` and `cutmix` replace the preset's value
of theirs. Every layer is seeded from the recipe's seed, so the same seed gives the same batches;
MixUp and CutMix make the labels soft (one row of class weights per image), so the loss must take
soft targets when they are on (`tlkit.models.optimization.Crossentropy`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
import tensorflow as tf

from tlkit.errors import TlkitError


@dataclass(frozen=True)
class Augmentation:
    flip: bool = False  # horizontal
    zoom: float = 0.0  # zoom in by up to this fraction of each side
    rotate: float = 0.0  # degrees, either way
    brightness: float = 0.0  # shift by up to this fraction of the pixel range
    randaugment: tuple[int, int] | None = None  # (ops per image, magnitude 0-10), as timm's rand-mM-nN
    erasing: float = 0.0  # probability that an image gets a random rectangle erased
    mixup: float = 0.0  # alpha of MixUp's Beta distribution; 0 is off
    cutmix: float = 0.0  # alpha of CutMix's; 0 is off

    @property
    def active(self) -> bool:
        return self != Augmentation()

    def describe(self) -> str:
        """In words, for REPORT.md: "off", or each transform with its strength."""
        parts = [("horizontal flips", self.flip), (f"zoom in up to {self.zoom:.0%}", self.zoom),
                 (f"rotation up to {self.rotate:g} degrees", self.rotate),
                 (f"brightness up to {self.brightness:.0%}", self.brightness),
                 (f"RandAugment ({self.randaugment[0]} ops, magnitude {self.randaugment[1]})" if self.randaugment
                  else "", self.randaugment),
                 (f"random erasing (p={self.erasing:g})", self.erasing), (f"MixUp (alpha {self.mixup:g})", self.mixup),
                 (f"CutMix (alpha {self.cutmix:g})", self.cutmix)]
        return ", ".join(words for words, on in parts if on) or "off"

    @property
    def mixes(self) -> bool:
        """Whether labels come out soft."""
        return bool(self.mixup or self.cutmix)


PRESETS = {
    "none": Augmentation(),
    "light": Augmentation(flip=True, zoom=0.2, brightness=0.1),
    "standard": Augmentation(flip=True, rotate=10, zoom=0.2, brightness=0.2),
    "strong": Augmentation(flip=True, zoom=0.2, randaugment=(2, 9), erasing=0.25, mixup=0.2, cutmix=1.0),
}

def preset(spec: bool | str | Augmentation) -> Augmentation:
    """An augmentation from a preset name, a bool (True: light) or itself."""
    if isinstance(spec, Augmentation):
        return spec
    if isinstance(spec, bool):
        return PRESETS["light" if spec else "none"]
    return PRESETS[spec]


def of(recipe) -> Augmentation:
    """The augmentation a recipe asks for: its preset with the options it sets replaced."""
    changes = {key: getattr(recipe, key) for key in ("rotate", "erasing", "mixup", "cutmix")
               if getattr(recipe, key) is not None}
    if recipe.randaugment is not None:
        changes["randaugment"] = parse_randaugment(recipe.randaugment)
    return dataclasses.replace(preset(recipe.augment), **changes)


def parse_randaugment(text: str) -> tuple[int, int] | None:
    """"N,M" (ops per image, magnitude 0-10) as a pair; "0" or "none" is off."""
    if text.strip().lower() in ("0", "none", "off", ""):
        return None
    parts = text.split(",")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise TlkitError(f"randaugment = {text!r}: write N,M (ops per image, magnitude 0-10), e.g. 2,9") from None
    if n < 1 or not 0 <= m <= 10:
        raise TlkitError(f"randaugment = {text!r}: N must be >= 1 and M between 0 and 10")
    return n, m


def image_layers(aug: Augmentation, seed: int) -> list[keras.layers.Layer]:
    """The per-image layers of `aug`, in order: geometry, RandAugment, light, erasing. Each gets
    its own seed from `seed`, so two layers never draw the same numbers."""
    layers = []

    def add(layer_class, *args, **kwargs):
        layers.append(layer_class(*args, seed=seed * 1000 + len(layers), **kwargs))

    if aug.flip:
        add(keras.layers.RandomFlip, "horizontal")
    if aug.rotate:
        add(keras.layers.RandomRotation, aug.rotate / 360.0)  # a fraction of a full turn
    if aug.zoom:
        add(keras.layers.RandomZoom, (-aug.zoom, 0.0))  # negative: zoom in, nothing to fill
    if aug.randaugment:
        ops, magnitude = aug.randaugment
        add(keras.layers.RandAugment, value_range=(0, 255), num_ops=ops, factor=magnitude / 10)
    if aug.brightness:
        add(keras.layers.RandomBrightness, aug.brightness, value_range=(0, 255))
    if aug.erasing:
        add(keras.layers.RandomErasing, aug.erasing, value_range=(0, 255))
    return layers


def set_states(layers, draw) -> None:
    """Every random state of `layers` (their seed generators' variables) from `draw`."""
    for i, state in enumerate(v for layer in layers for v in layer.variables):
        state.assign(tf.cast(tf.stack([draw, tf.constant(i, tf.int64)]), state.dtype))


def apply(batches: tf.data.Dataset, aug: bool | str | Augmentation, seed: int, num_classes: int) -> tf.data.Dataset:
    """`batches` of (images in [0, 255], integer labels) augmented by `aug`: new draws every
    epoch, the same draws for the same seed. With MixUp or CutMix the labels come out one-hot
    and mixed (float32, (B, num_classes))."""
    aug = preset(aug)
    if not aug.active:
        return batches
    layers = image_layers(aug, seed)

    # The layers draw from their own random state. Each batch sets that state from its own draw
    # of a seeded stream first, so a batch's augmentation depends on its place in the epoch alone:
    # not on how many batches a prefetch ran ahead (Keras peeks at one batch before it trains)
    # nor on where a resumed run went on. The map runs in order (no num_parallel_calls).
    def transform(images, labels, draw):
        set_states(layers, draw)
        for layer in layers:
            images = layer(images, training=True)
        return tf.clip_by_value(images, 0.0, 255.0), labels

    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    batches = tf.data.Dataset.zip(batches, draws).map(lambda batch, draw: transform(*batch, draw))
    if not aug.mixes:
        return batches
    mixers = [layer(alpha, seed=seed * 1000 + 900 + i)
              for i, (layer, alpha) in enumerate(((keras.layers.MixUp, aug.mixup), (keras.layers.CutMix, aug.cutmix)))
              if alpha]

    def mix(images, labels, draw):
        set_states(mixers, draw)
        # a multi-label set's multi-hot rows mix as they are
        data = {"images": images, "labels": labels if labels.shape.rank == 2 else tf.one_hot(tf.cast(labels, tf.int32),
                                                                                             num_classes)}
        if len(mixers) == 1:
            out = mixers[0](data, training=True)
        else:  # as timm: MixUp or CutMix, one of them per batch
            out = tf.cond(draw % 2 == 0, lambda: mixers[0](data, training=True), lambda: mixers[1](data, training=True))
        return out["images"], out["labels"]

    draws = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(batches, draws).map(lambda batch, draw: mix(*batch, draw))

