"""The registry of bases: a `Base` is what every source returns, a `BaseSpec` what a source
registers under a name in `BASES`. A leaf: the sources import it, it imports none of them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras

from tlkit._util.registry import Registry
from tlkit.models.blocks import Block


@dataclass
class Base:
    name: str
    model: keras.Model
    blocks: list[Block]
    input_size: tuple[int, int]  # the default (height, width)
    source: str  # "keras", "zoo", "package", "hub", "file", "run", ...
    weights: str  # "imagenet", "none", a path, ...
    # the head pooling this base asks for, and why (an autoencoder's small spatial code: flatten);
    # None: the recipe's default, avg
    pooling: tuple[str, str] | None = None

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
