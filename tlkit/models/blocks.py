"""Block maps: the ordered, named blocks of a base that unfreezing is expressed in.

As in timm, a block map is written as an ordered list of (block name, regex) pairs; each layer of
the base goes to the first block whose regex matches its name (`re.match`). Layers without
trainable weights that no pattern names (inputs, preprocessing, reshapes) belong to no block.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import keras

from tlkit.errors import TlkitError

BlockSpec = list[tuple[str, str]]


@dataclass(frozen=True)
class Block:
    name: str
    layers: tuple[str, ...]


def build_block_map(model: keras.Model, spec: BlockSpec) -> list[Block]:
    """Assign the layers of `model` to the blocks of `spec`.

    Raises ValueError (a bug in the spec, not a user error) if a layer with weights matches no
    block, or if the blocks are not contiguous runs in the model's layer order.
    """
    compiled = [(name, re.compile(pattern)) for name, pattern in spec]
    members: dict[str, list[str]] = {name: [] for name, _ in spec}
    order: list[str] = []
    for layer in model.layers:
        block = next((name for name, rx in compiled if rx.match(layer.name)), None)
        if block is None:
            if layer.trainable_weights:  # frozen constants (a caffe preprocessing) need no block
                raise ValueError(f"layer '{layer.name}' of {model.name} has weights but no block")
            continue
        members[block].append(layer.name)
        if not order or order[-1] != block:
            if block in order:
                raise ValueError(f"block '{block}' of {model.name} is not contiguous (at layer '{layer.name}')")
            order.append(block)
    spec_order = [name for name, _ in spec if members[name]]
    if order != spec_order:
        raise ValueError(f"blocks of {model.name} appear in the order {order}, the spec says {spec_order}")
    return [Block(name, tuple(members[name])) for name in order]


def single_block(model: keras.Model, name: str = "base") -> list[Block]:
    """The block map of a base that can only be unfrozen whole (TF Hub, opaque files)."""
    return [Block(name, tuple(layer.name for layer in model.layers))]


def set_trainable_top(model: keras.Model, blocks: list[Block], n: int) -> list[Block]:
    """Freeze `model`, then make the layers of its top `n` blocks trainable.

    BatchNormalization layers stay frozen even inside unfrozen blocks: in Keras 3 a frozen BN
    layer runs in inference mode, so its moving statistics (and its scale and offset) are
    kept, which is what fine-tuning on a small dataset needs (see the Keras transfer-learning
    guide). Returns the unfrozen blocks.
    """
    if n < 0 or n > len(blocks):
        raise TlkitError(
            f"cannot unfreeze {n} blocks: this base has {len(blocks)} "
            f"({', '.join(b.name for b in blocks)}); choose --unfreeze between 0 and {len(blocks)}"
        )
    model.trainable = True
    for layer in model.layers:
        layer.trainable = False
    top = blocks[len(blocks) - n:] if n else []
    for block in top:
        for name in block.layers:
            layer = model.get_layer(name)
            if not isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
    return top
