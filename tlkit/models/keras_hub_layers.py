"""KerasHub's ViT layers, as layers of a base of their own that a `.keras` file reloads.

In a ViTBackbone they are rebuilt from the backbone's arguments, never from their own configs;
KerasHub 0.32 writes into those configs values it derives (a patch embedding's `num_patches` and
`num_positions`, an encoder block's `key_dim`) that their constructors refuse, so alone, as
tlkit's flat ViT base holds them, they would not load. These subclasses drop the derived values
when they load; nothing else differs. Importing this module imports keras_hub.
"""
from __future__ import annotations

import keras
from keras_hub.src.models.vit import vit_layers  # KerasHub exports the backbone, not its layers


def _without(config: dict, derived: tuple[str, ...]) -> dict:
    return {key: value for key, value in config.items() if key not in derived}


@keras.saving.register_keras_serializable(package="tlkit")
class ViTPatchingAndEmbedding(vit_layers.ViTPatchingAndEmbedding):
    @classmethod
    def from_config(cls, config):
        return super().from_config(_without(config, ("num_patches", "num_positions")))


@keras.saving.register_keras_serializable(package="tlkit")
class ViTEncoderBlock(vit_layers.ViTEncoderBlock):
    @classmethod
    def from_config(cls, config):
        return super().from_config(_without(config, ("key_dim",)))


def called_copy(layer: keras.layers.Layer, *args, **kwargs):
    """A copy of `layer` (of the class here that reloads, for the ViT layers above), called on
    `args`, with the weights of `layer`."""
    cls = {"ViTPatchingAndEmbedding": ViTPatchingAndEmbedding, "ViTEncoderBlock": ViTEncoderBlock}.get(
        type(layer).__name__, type(layer))
    copy = cls.from_config(layer.get_config())
    outputs = copy(*args, **kwargs)
    copy.set_weights(layer.get_weights())
    return outputs
