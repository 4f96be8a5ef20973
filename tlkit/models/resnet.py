"""ResNet-18, -34 and -50 (He et al. 2016) with the paper's bias-free convolutions, named as
`keras.applications.ResNet50` names its layers (conv1_conv, conv2_block1_1_conv, ...).

Keras' own ResNet50 gives its convs biases that the batch norm after each makes redundant; these
follow the paper and torchvision, whose trainable parameter counts they match. Downsampling is
in the first conv of conv3_block1 ... conv5_block1, as in the paper and Keras; shortcuts are
identities, or a 1x1 conv and batch norm where the shape changes (the paper's option B).
The counts below are of trainable parameters, the paper's; `count_params()` adds the batch
norms' moving means and variances.
"""
from __future__ import annotations

from keras import layers

from tlkit.models.common import finish, global_pool, image_input, predictions, variant

BLOCKS = [("conv1", r"^conv1_")] + [(f"conv{i}", rf"^conv{i}_") for i in range(2, 6)]
_EPSILON = 1e-5  # torchvision's, for weights converted from it
_SHAPE = (224, 224, 3)


def _conv_bn(x, filters, kernel, name, strides=1, relu=True):
    x = layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=_EPSILON, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def _add_shortcut(x, residual, strides, name):
    """relu(shortcut(x) + residual), the shortcut projecting x where the shapes differ."""
    shortcut = x
    if strides != 1 or x.shape[-1] != residual.shape[-1]:
        shortcut = _conv_bn(x, residual.shape[-1], 1, f"{name}_0", strides=strides, relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, residual])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _basic_block(x, filters, strides, name):
    y = _conv_bn(x, filters, 3, f"{name}_1", strides=strides)
    y = _conv_bn(y, filters, 3, f"{name}_2", relu=False)
    return _add_shortcut(x, y, strides, name)


def _bottleneck(x, filters, strides, name):
    y = _conv_bn(x, filters, 1, f"{name}_1", strides=strides)
    y = _conv_bn(y, filters, 3, f"{name}_2")
    y = _conv_bn(y, 4 * filters, 1, f"{name}_3", relu=False)
    return _add_shortcut(x, y, strides, name)


def _resnet(
    name, block, depths, *, include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation
):
    inputs, x = image_input(input_tensor, input_shape, _SHAPE)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (depth, filters) in enumerate(zip(depths, (64, 128, 256, 512)), start=2):
        for i in range(1, depth + 1):
            strides = 2 if i == 1 and stage > 2 else 1
            x = block(x, filters, strides, f"conv{stage}_block{i}")
    if include_top:
        x = predictions(global_pool(x, "avg"), classes, classifier_activation)
    else:
        x = global_pool(x, pooling)
    return finish(inputs, x, name, weights)


resnet18 = variant(
    "resnet18", _resnet, _basic_block, (2, 2, 2, 2), blocks=BLOCKS, paper_shape=_SHAPE,
    doc="ResNet-18: 11,689,512 trainable parameters.",
)
resnet34 = variant(
    "resnet34", _resnet, _basic_block, (3, 4, 6, 3), blocks=BLOCKS, paper_shape=_SHAPE,
    doc="ResNet-34: 21,797,672 trainable parameters.",
)
resnet50 = variant(
    "resnet50", _resnet, _bottleneck, (3, 4, 6, 3), blocks=BLOCKS, paper_shape=_SHAPE,
    doc="ResNet-50: 25,557,032 trainable parameters.",
)
