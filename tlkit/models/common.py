"""What every zoo builder shares: the keras.applications handling of inputs, tops and weights."""
from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from tlkit.errors import TlkitError
from tlkit.models._registry import register


def image_input(input_tensor, input_shape, default_shape):
    """`(model inputs, first tensor)`, as keras.applications take `input_tensor`.

    With `input_tensor` (a Keras tensor, e.g. the output of a Rescaling layer on the caller's
    Input), the model starts from it and its inputs are the caller's own Inputs, so the result
    is one flat model.
    """
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape or default_shape)
        return inputs, inputs
    return keras.utils.get_source_inputs(input_tensor), input_tensor


def global_pool(x, pooling: str | None):
    """The `pooling` argument of keras.applications for a model without its top."""
    if pooling is None:
        return x
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")


def dense_top(x, hidden: list[tuple[str, int]], classes, classifier_activation, activation="relu", dropout=0.0):
    """Flatten, then fully connected layers named as in `hidden`, then the classifier."""
    x = layers.Flatten(name="flatten")(x)
    for name, units in hidden:
        x = layers.Dense(units, activation=activation, name=name)(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return predictions(x, classes, classifier_activation)


def predictions(x, classes: int, classifier_activation):
    return layers.Dense(classes, activation=classifier_activation, name="predictions")(x)


def finish(inputs, outputs, name: str, weights: str | None) -> keras.Model:
    """The model, with the weights file `weights` loaded if one is given."""
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        if not Path(weights).is_file():
            raise TlkitError(f"weights file {weights} does not exist; pass the path of a weights file")
        model.load_weights(weights)
    return model


def variant(name: str, build, *args, blocks, paper_shape: tuple[int, int, int], doc: str, paper_classes=1000):
    """Register `name` as the keras.applications-style builder that calls
    `build(name, *args, include_top=..., weights=..., ...)`: one member of a family."""

    def builder(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=paper_classes,
        classifier_activation="softmax",
    ):
        return build(
            name,
            *args,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
        )

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    return register(name, blocks=blocks, input_shape=paper_shape)(builder)
