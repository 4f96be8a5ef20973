"""Pretrained bases from every source, all returned as a `Base`.

A base is a Keras model without its classifier. Its input is a batch of float32 images with values
in [0, 255] (the way tlkit's data pipeline and the export signature decode them), and its
preprocessing is a layer inside it, so a saved classifier needs nothing outside itself.
Its output is either a feature map (B, h, w, c), which the head pools, or a feature vector (B, d).

Sources register a `BaseSpec` under a name in `BASES`; spec strings that are not names
(`hub:HANDLE`, a `.keras` file, a run directory) are resolved by `load_base` directly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras

from tlkit.blocks import Block
from tlkit.registry import Registry


@dataclass
class Base:
    name: str
    model: keras.Model
    blocks: list[Block]
    input_size: tuple[int, int]  # the default (height, width)
    source: str  # "keras", "zoo", "package", "hub", "file", "run", ...
    weights: str  # "imagenet", "none", a path, ...

    @property
    def channels(self) -> int:
        return self.model.input_shape[-1]


@dataclass(frozen=True)
class BaseSpec:
    name: str
    source: str
    input_size: tuple[int, int]
    # load(weights, image_size) -> Base; image_size is (height, width) or None for the default
    load: Callable[[str, tuple[int, int] | None], Base]
    # where the weights for `weights` would come from, for `tlkit bases`; None if not applicable
    weights_status: Callable[[str], str] | None = None


BASES: Registry[BaseSpec] = Registry("base")


def load_base(spec: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None) -> Base:
    """Load a base by name (`vgg16`, `efficientnet_lite0`, `resnet18`, ...)."""
    return BASES.get(spec).load(weights, image_size)


# Importing a source module registers its bases.
from tlkit.bases import keras_apps  # noqa: E402,F401
from tlkit.bases import efficientnet_lite  # noqa: E402,F401
from tlkit.bases import zoo  # noqa: E402,F401
