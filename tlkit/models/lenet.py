"""LeNet-5 (LeCun et al. 1998), with a fully connected C3 and a softmax output layer."""
from __future__ import annotations

from keras import layers

from tlkit.models.common import dense_top, finish, global_pool, image_input, variant

BLOCKS = [("c1", r"^(c1|s2)$"), ("c3", r"^(c3|s4)$")]
_SHAPE = (32, 32, 1)


def _lenet5(name, *, include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation):
    inputs, x = image_input(input_tensor, input_shape, _SHAPE)
    x = layers.Conv2D(6, 5, activation="tanh", name="c1")(x)
    x = layers.AveragePooling2D(2, name="s2")(x)
    x = layers.Conv2D(16, 5, activation="tanh", name="c3")(x)
    x = layers.AveragePooling2D(2, name="s4")(x)
    if include_top:
        x = dense_top(x, [("f5", 120), ("f6", 84)], classes, classifier_activation, activation="tanh")
    else:
        x = global_pool(x, pooling)
    return finish(inputs, x, name, weights)


lenet5 = variant(
    "lenet5", _lenet5, blocks=BLOCKS, paper_shape=_SHAPE, paper_classes=10,
    doc="""LeNet-5: C1 6@28x28, S2 6@14x14, C3 16@10x10, S4 16@5x5, F5 120, F6 84, 10 outputs;
    61,706 parameters.

    Tanh units and average-pooling subsampling as in the paper, without its trainable
    subsampling coefficients (the convention of the 61,706 count); C3 sees all six S2 maps, and
    the RBF output layer is a softmax dense layer.
    """,
)
