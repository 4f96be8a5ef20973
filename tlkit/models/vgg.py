"""VGG configurations A, A-LRN, B, C, D and E (Simonyan & Zisserman 2014), named as
`keras.applications.VGG16` names its layers, with the paper's dropout after fc1 and fc2."""
from __future__ import annotations

from keras import layers

from tlkit.models.common import dense_top, finish, global_pool, image_input, variant
from tlkit.models.layers import LocalResponseNormalization

BLOCKS = [(f"block{i}", rf"^block{i}_") for i in range(1, 6)]

# Per stage, the kernel size of each conv layer (config C ends stages 3-5 with a 1x1 conv).
_A = ((3,), (3,), (3, 3), (3, 3), (3, 3))
_B = ((3, 3), (3, 3), (3, 3), (3, 3), (3, 3))
_C = ((3, 3), (3, 3), (3, 3, 1), (3, 3, 1), (3, 3, 1))
_D = ((3, 3), (3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
_E = ((3, 3), (3, 3), (3, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3))
_WIDTHS = (64, 128, 256, 512, 512)
_SHAPE = (224, 224, 3)


def _vgg(
    name, config, lrn, *, include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation
):
    inputs, x = image_input(input_tensor, input_shape, _SHAPE)
    for stage, (kernels, width) in enumerate(zip(config, _WIDTHS), start=1):
        for i, kernel in enumerate(kernels, start=1):
            conv = layers.Conv2D(width, kernel, padding="same", activation="relu", name=f"block{stage}_conv{i}")
            x = conv(x)
            if lrn and (stage, i) == (1, 1):
                x = LocalResponseNormalization(name="block1_norm")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{stage}_pool")(x)
    if include_top:
        x = dense_top(x, [("fc1", 4096), ("fc2", 4096)], classes, classifier_activation, dropout=0.5)
    else:
        x = global_pool(x, pooling)
    return finish(inputs, x, name, weights)


vgg11 = variant(
    "vgg11", _vgg, _A, False, blocks=BLOCKS, paper_shape=_SHAPE,
    doc="VGG configuration A, 11 weight layers: 132,863,336 parameters.",
)
vgg11_lrn = variant(
    "vgg11_lrn", _vgg, _A, True, blocks=BLOCKS, paper_shape=_SHAPE,
    doc="VGG configuration A-LRN: A with AlexNet's LRN after its first conv layer: 132,863,336 parameters.",
)
vgg13 = variant(
    "vgg13", _vgg, _B, False, blocks=BLOCKS, paper_shape=_SHAPE,
    doc="VGG configuration B, 13 weight layers: 133,047,848 parameters.",
)
vgg16_c = variant(
    "vgg16_c", _vgg, _C, False, blocks=BLOCKS, paper_shape=_SHAPE,
    doc="VGG configuration C, 16 weight layers, three of them 1x1: 133,638,952 parameters.",
)
vgg16 = variant(
    "vgg16", _vgg, _D, False, blocks=BLOCKS, paper_shape=_SHAPE,
    doc="VGG configuration D, 16 weight layers: 138,357,544 parameters.",
)
vgg19 = variant(
    "vgg19", _vgg, _E, False, blocks=BLOCKS, paper_shape=_SHAPE,
    doc="VGG configuration E, 19 weight layers: 143,667,240 parameters.",
)
