"""The classifier a run trains: its base (a layer named `base`, kept in inference mode in the
head and finetune stages) under a new head (pooling, dropout, softmax)."""
from __future__ import annotations

import logging

import keras

from tlkit._util.keras_internals import keep_inference_mode, keeps_inference_mode
from tlkit.bases import Base
from tlkit.models.features import BASE_LAYER, POOL_LAYER
from tlkit.recipe.schema import POOLINGS, Recipe

log = logging.getLogger(__name__)


HEAD_POOLING = dict(zip(POOLINGS, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
                                    keras.layers.Flatten)))


def build_classifier(base: Base, num_classes: int, dropout: float, pooling: str = "avg",
                     activation: str = "softmax") -> keras.Model:
    """The base, called in inference mode, under a new head (pooling, dropout, softmax; sigmoid
    for a multi-label task: each label's probability on its own)."""
    base.model.name = BASE_LAYER
    inputs = keras.Input((*base.model.input_shape[1:3], base.channels), name="image")
    # inference mode in the head and finetune stages (`base_in_inference`): BatchNorm keeps its
    # statistics, dropout inside the base is off, as the frozen base's features were at extraction
    x = base.model(inputs, training=False)
    x = head_layers(x, num_classes, dropout, pooling, activation)
    return keras.Model(inputs, x, name=f"{base.name}_classifier")


def base_in_inference(classifier: keras.Model, on: bool) -> None:
    """Whether the base inside `classifier` stays in inference mode while the classifier trains
    (head and finetune stages) or trains with it (train stage); see compat.keep_inference_mode."""
    keep_inference_mode(classifier.get_layer(BASE_LAYER), on)


def head_layers(features, num_classes: int, dropout: float, pooling: str = "avg", activation: str = "softmax"):
    """`pooling` reduces a feature map to a vector: "avg" or "max" over all positions, or
    "flatten", which keeps where each feature is (small maps of small images: digits)."""
    x = features
    if len(x.shape) == 4:
        x = HEAD_POOLING[pooling](name=POOL_LAYER)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output under mixed precision, for a numerically stable softmax and loss
    return keras.layers.Dense(num_classes, activation=activation, dtype="float32", name="head_dense")(x)


def fixed_variables(model: keras.Model) -> set[int]:
    """ids of the variables of `model` that no step of its stage changes: those of its base that
    are not trained while the base is kept in inference mode (its frozen weights, its BatchNorm
    statistics, its dropout's random state)."""
    try:
        base = model.get_layer(BASE_LAYER)
    except ValueError:  # no base layer: a model of its own (autoencoder)
        return set()
    return {id(v) for v in base.non_trainable_variables} if keeps_inference_mode(base) else set()


def head_pooling(recipe: Recipe, base: Base) -> str:
    """The pooling of the new head: --pooling, else the base's choice (said, with why), else avg."""
    if recipe.pooling:
        return recipe.pooling
    if base.pooling:
        log.info("head pooling: %s, as base %s asks (%s); --pooling overrides", base.pooling[0], base.name,
                 base.pooling[1])
        return base.pooling[0]
    return "avg"

