"""AlexNet (Krizhevsky et al. 2012) in one tower and in the paper's two groups, and ZFNet
(Zeiler & Fergus 2013), its successor with a smaller, denser first layer."""
from __future__ import annotations

from keras import layers

from tlkit.models.common import dense_top, finish, global_pool, image_input, variant
from tlkit.models.layers import LocalResponseNormalization

BLOCKS = [(f"conv{i}", rf"^conv{i}(_|$)") for i in range(1, 6)]
_TOP = [("fc6", 4096), ("fc7", 4096)]
# The paper's "224" does not give its 55x55 conv1 maps with an 11x11/4 kernel and no padding.
_SHAPE = (227, 227, 3)
_ZFNET_SHAPE = (224, 224, 3)


def _top(x, include_top, pooling, classes, classifier_activation):
    if include_top:
        return dense_top(x, _TOP, classes, classifier_activation, dropout=0.5)
    return global_pool(x, pooling)


def _alexnet(
    name, groups, *, include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation
):
    inputs, x = image_input(input_tensor, input_shape, _SHAPE)
    x = layers.Conv2D(96, 11, strides=4, activation="relu", name="conv1")(x)
    x = LocalResponseNormalization(name="conv1_norm")(x)
    x = layers.MaxPooling2D(3, strides=2, name="conv1_pool")(x)
    x = layers.Conv2D(256, 5, padding="same", groups=groups, activation="relu", name="conv2")(x)
    x = LocalResponseNormalization(name="conv2_norm")(x)
    x = layers.MaxPooling2D(3, strides=2, name="conv2_pool")(x)
    # conv3 sees both towers' maps; conv4 and conv5 only their own tower's.
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", groups=groups, activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", groups=groups, activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, name="conv5_pool")(x)
    return finish(inputs, _top(x, include_top, pooling, classes, classifier_activation), name, weights)


alexnet = variant(
    "alexnet", _alexnet, 1, blocks=BLOCKS, paper_shape=_SHAPE,
    doc="AlexNet as one tower: 62,378,344 parameters.",
)
alexnet_grouped = variant(
    "alexnet_grouped", _alexnet, 2, blocks=BLOCKS, paper_shape=_SHAPE,
    doc="AlexNet as the paper split it over two GPUs (conv2, conv4, conv5 in 2 groups): 60,965,224 parameters.",
)


def _zfnet(name, *, include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation):
    inputs, x = image_input(input_tensor, input_shape, _ZFNET_SHAPE)
    x = layers.ZeroPadding2D(1, name="conv1_pad")(x)
    x = layers.Conv2D(96, 7, strides=2, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="conv1_pool")(x)
    x = LocalResponseNormalization(name="conv1_norm")(x)
    x = layers.Conv2D(256, 5, strides=2, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="conv2_pool")(x)
    x = LocalResponseNormalization(name="conv2_norm")(x)
    x = layers.Conv2D(512, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(1024, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(512, 3, padding="same", activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, name="conv5_pool")(x)
    return finish(inputs, _top(x, include_top, pooling, classes, classifier_activation), name, weights)


zfnet = variant(
    "zfnet", _zfnet, blocks=BLOCKS, paper_shape=_ZFNET_SHAPE,
    doc="""ZFNet: conv1 96@7x7/2, conv2 256@5x5/2, and conv3-5 widened to 512, 1024 and 512 maps
    (the paper's larger variant; its figure 3 has 384, 384, 256), with sides of 110, 55, 26, 13
    and 6 at 224 as in that figure. The first two layers are pooled, then contrast normalized.
    Parameters with the 1000-class head at 224x224x3: 107,627,624.
    """,
)
