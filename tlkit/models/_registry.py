"""The registry of the classic CNN zoo: builders by name, each with the block map of its base.

Builders follow the `keras.applications` signature
`NAME(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
classes=1000, classifier_activation="softmax")`; `weights` is None or a path to a weights file.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras

from tlkit._util.registry import Registry
from tlkit.models.blocks import BlockSpec


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[..., keras.Model]
    blocks: BlockSpec  # block map of the model built with include_top=False
    input_shape: tuple[int, int, int]  # the paper's input


ZOO: Registry[Arch] = Registry("architecture")


def register(name: str, blocks: BlockSpec, input_shape: tuple[int, int, int]):
    def decorator(build):
        ZOO.add(name, Arch(name, build, blocks, input_shape))
        return build

    return decorator
