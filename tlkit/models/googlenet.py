"""GoogLeNet / Inception v1 (Szegedy et al. 2015): conv biases, no batch norm, as in the paper.

Layer names follow the paper's Caffe model (bvlc_googlenet) with "/" written as "_".
"""
from __future__ import annotations

from keras import layers

from tlkit.models._registry import register
from tlkit.models.common import finish, global_pool, image_input, predictions
from tlkit.models.layers import LocalResponseNormalization

# The paper's table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
BLOCKS = [("stem", r"^(conv|pool)[12]_")] + [(f"inception{m}", rf"^inception{m}_") for m in MODULES]
_POOL_AFTER = {"3b": "pool3", "4e": "pool4"}
_AUX_AFTER = {"4a": "aux1", "4d": "aux2"}


def _conv(x, filters, kernel, name, strides=1):
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", activation="relu", name=name)(x)


def _inception(x, name, widths):
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = widths
    pooled = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branches = [
        _conv(x, n1x1, 1, f"{name}_1x1"),
        _conv(_conv(x, n3x3_reduce, 1, f"{name}_3x3_reduce"), n3x3, 3, f"{name}_3x3"),
        _conv(_conv(x, n5x5_reduce, 1, f"{name}_5x5_reduce"), n5x5, 5, f"{name}_5x5"),
        _conv(pooled, pool_proj, 1, f"{name}_pool_proj"),
    ]
    return layers.Concatenate(name=f"{name}_output")(branches)


def _aux_head(x, name, classes, classifier_activation):
    x = layers.AveragePooling2D(5, strides=3, name=f"{name}_pool")(x)
    x = _conv(x, 128, 1, f"{name}_conv")
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc")(x)
    x = layers.Dropout(0.7, name=f"{name}_dropout")(x)
    return layers.Dense(classes, activation=classifier_activation, name=f"{name}_predictions")(x)


@register("googlenet", blocks=BLOCKS, input_shape=(224, 224, 3))
def googlenet(
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    aux_heads=False,
):
    """GoogLeNet: 6,998,552 parameters without the auxiliary classifiers.

    With `aux_heads=True` (and the top), the model has three outputs: the main predictions and
    the auxiliary classifiers on inception4a and inception4d ("aux1", "aux2"), which the paper
    trains with weight 0.3 and drops at inference. Their 5x5/3 pooling needs 14x14 maps there,
    i.e. inputs of about 224 pixels. The stem's LRN is Caffe's (alpha 1e-4 over n=5, k=1).
    """
    if aux_heads and not include_top:
        raise ValueError("aux_heads=True needs include_top=True")
    inputs, x = image_input(input_tensor, input_shape, (224, 224, 3))
    x = _conv(x, 64, 7, "conv1_7x7_s2", strides=2)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_3x3_s2")(x)
    x = LocalResponseNormalization(k=1.0, alpha=2e-5, name="pool1_norm1")(x)
    x = _conv(x, 64, 1, "conv2_3x3_reduce")
    x = _conv(x, 192, 3, "conv2_3x3")
    x = LocalResponseNormalization(k=1.0, alpha=2e-5, name="conv2_norm2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2_3x3_s2")(x)
    aux = []
    for module, widths in MODULES.items():
        x = _inception(x, f"inception{module}", widths)
        if aux_heads and module in _AUX_AFTER:
            aux.append(_aux_head(x, _AUX_AFTER[module], classes, classifier_activation))
        if module in _POOL_AFTER:
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{_POOL_AFTER[module]}_3x3_s2")(x)
    if include_top:
        x = layers.Dropout(0.4, name="dropout")(global_pool(x, "avg"))
        x = predictions(x, classes, classifier_activation)
        x = [x, *aux] if aux else x
    else:
        x = global_pool(x, pooling)
    return finish(inputs, x, "googlenet", weights)
