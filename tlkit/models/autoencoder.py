"""A convolutional autoencoder (lecture 31): its encoder, pretrained without labels, seeds a classifier.

The encoder is blocks of a 3x3 convolution (ReLU) and a 2x2 max-pooling, down to a compact code
(with the default filters, a 64x64 image becomes a 8x8x128 code); the decoder goes back up to a
reconstruction of the [0, 1]-scaled input, by one of two decoders:

- "unpool": each pooling records its switches (`MaxPoolingWithArgmax2D`), and the decoder puts
  each value back where its maximum came from (`MaxUnpooling2D`, Zeiler 2013), then convolves;
- "transpose": learnt upsampling by 3x3 transposed convolutions of stride 2.

Layer names are a contract: `block{i}_conv`, `block{i}_pool` in the encoder (its block map is
`encoder_blocks`), `decode{i}_*` and `reconstruction` in the decoder.
"""
from __future__ import annotations

import keras
from keras import layers

from tlkit.models.blocks import BlockSpec
from tlkit.models.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D
from tlkit.models.preprocessing import preprocessing_layer

FILTERS = (32, 64, 128)
DECODERS = ("unpool", "transpose")
DEFAULT_SIZE = 64


def encoder_blocks(depth: int = len(FILTERS)) -> BlockSpec:
    """The encoder's block map: block1 ... block{depth}, each a convolution and its pooling."""
    return [(f"block{i}", rf"^block{i}_") for i in range(1, depth + 1)]


def conv_autoencoder(input_shape=(DEFAULT_SIZE, DEFAULT_SIZE, 3), filters=FILTERS, decoder: str = "unpool",
                     name: str = "conv_autoencoder") -> keras.Model:
    """The autoencoder: float32 images in [0, 255] (B, H, W, C) -> their reconstruction in [0, 1].

    See `encoder_model` for the encoder as a base. A denoising autoencoder is this model fed
    `corrupt`ed images against clean targets: the noise belongs to the data, not the model, so
    validation can measure the same task as training. H and W must be multiples of 2 ** len(filters).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    side = 2 ** len(filters)
    if input_shape[0] % side or input_shape[1] % side:
        raise ValueError(f"the encoder halves the image {len(filters)} times: its sides must be multiples of "
                         f"{side}, not {input_shape[0]}x{input_shape[1]}")
    inputs = keras.Input(input_shape, name="image")
    x = preprocessing_layer("unit")(inputs)
    switches = []
    for i, width in enumerate(filters, start=1):
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"block{i}_conv")(x)
        if decoder == "unpool":
            x, where = MaxPoolingWithArgmax2D(2, name=f"block{i}_pool")(x)
            switches.append(where)
        else:
            x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    for i in range(len(filters), 0, -1):
        width = filters[max(i - 2, 0)]
        if decoder == "unpool":
            x = MaxUnpooling2D(2, name=f"decode{i}_unpool")([x, switches[i - 1]])
            x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"decode{i}_conv")(x)
        else:
            x = layers.Conv2DTranspose(width, 3, strides=2, padding="same", activation="relu",
                                       name=f"decode{i}_deconv")(x)
    outputs = layers.Conv2D(input_shape[-1], 3, padding="same", activation="sigmoid", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)


def corrupt(images, noise: float, seed=None):
    """Denoising's input: [0, 255] `images` plus Gaussian noise on the [0, 1] scale, clipped to
    the image range. Each image's std is drawn from [0, noise], so near-clean images are trained
    on too: trained on noisy images alone, the encoder and its pooling switches meet a clean
    image's flat background only at test time, and reconstruct it badly.

    `seed`, a stateless (2,) seed, fixes the noise (validation, pictures); None draws new noise
    on every call (training).
    """
    import tensorflow as tf  # the dataset pipeline's ops: keras.ops has no stateless random

    shape = tf.shape(images)
    if seed is None:
        std = tf.random.uniform([shape[0], 1, 1, 1], 0.0, noise)
        normal = tf.random.normal(shape)
    else:
        std_seed, normal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        std = tf.random.stateless_uniform([shape[0], 1, 1, 1], std_seed, 0.0, noise)
        normal = tf.random.stateless_normal(shape, normal_seed)
    return tf.clip_by_value(images + 255.0 * std * normal, 0.0, 255.0)


def encoder_model(autoencoder: keras.Model) -> keras.Model:
    """The encoder as a base: [0, 255] images -> the code feature map, without the switches. Its layers are the autoencoder's own (shared), so it holds the trained weights."""
    inputs = keras.Input(autoencoder.input_shape[1:], name="image")
    x = autoencoder.get_layer("preprocessing")(inputs)
    for layer in autoencoder.layers:
        if layer.name.startswith("block"):
            x = layer(x)
            if isinstance(x, (list, tuple)):  # a pooling's [pooled, switches]
                x = x[0]
    return keras.Model(inputs, x, name="conv_encoder")
