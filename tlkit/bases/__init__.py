"""Pretrained bases from every source, all returned as a `Base`.

A base is a Keras model without its classifier. Its input is a batch of float32 images with values
in [0, 255] (the way tlkit's data pipeline and the export signature decode them), and its
preprocessing is a layer inside it, so a saved classifier needs nothing outside itself.
Its output is either a feature map (B, h, w, c), which the head pools, or a feature vector (B, d).

Sources register a `BaseSpec` under a name in `BASES`; spec strings that are not names
(`hub:HANDLE`, a `.keras` file, a run directory) are resolved by `load_base` directly.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from tlkit.blocks import Block
from tlkit.errors import TlkitError
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


def load_base(spec: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None,
              base_layer: str | None = None, hub_range: str | None = None) -> Base:
    """Load a base: `hub:HANDLE` (tlkit.bases.hub), a registered name (`vgg16`,
    `efficientnet_lite0`, `resnet18`, ...), or a .keras file or run directory (tlkit.bases.local).

    `base_layer` cuts the base at that layer; `hub_range` is the pixel range a hub base expects.
    """
    if hub_range and not spec.startswith(hub.PREFIX):
        raise TlkitError(f"--hub-range is for hub: bases, not {spec}")
    if spec.startswith(hub.PREFIX):
        if base_layer:
            raise TlkitError("a hub: base is a single layer and cannot be cut: drop --base-layer")
        return hub.load_hub(spec.removeprefix(hub.PREFIX), weights, image_size, hub_range)
    if spec not in BASES and Path(spec).exists():
        return local.load_local(spec, weights, image_size, base_layer)
    if spec not in BASES and ("/" in spec or os.sep in spec or spec.endswith(".keras")):
        raise TlkitError(
            f"base {spec} does not exist: pass a .keras file, a run directory, hub:HANDLE or a base name "
            "(see `tlkit bases`)"
        )
    base = BASES.get(spec).load(weights, image_size)
    return local.cut_base(base, base_layer) if base_layer else base


# Importing a source module registers its bases; hub and local load the specs that are not names.
from tlkit.bases import keras_apps  # noqa: E402,F401
from tlkit.bases import efficientnet_lite  # noqa: E402,F401
from tlkit.bases import zoo  # noqa: E402,F401
from tlkit.bases import hub, local  # noqa: E402
