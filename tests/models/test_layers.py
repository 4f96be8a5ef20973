"""The canon's building blocks: the lecture's numbers, checked against real Keras layers."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tlkit.models.layers import (
    LocalResponseNormalization,
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    conv_output_size,
    conv_params,
    dense_params,
)


def output_shape(layer, input_shape):
    return tuple(layer.compute_output_shape((None, *input_shape))[1:])


def test_transposed_conv_1d_lecture_vector():
    layer = keras.layers.Conv1DTranspose(1, 3, strides=1, use_bias=False)
    layer.build((None, 4, 1))
    layer.set_weights([np.array([1.0, 2.0, -1.0]).reshape(3, 1, 1)])
    out = layer(np.array([2.0, 3.0, 0.0, -1.0]).reshape(1, 4, 1))
    np.testing.assert_array_equal(np.asarray(out).ravel(), [2, 7, 4, -4, -2, 1])


@pytest.mark.parametrize(
    "w, f, p, s, expected",
    [(8, 3, 0, 1, 6), (32, 5, 0, 1, 28), (17, 3, 1, 1, 17), (4, 2, 0, 2, 2), (227, 11, 0, 4, 55)],
)
def test_conv_output_size_lecture_checks(w, f, p, s, expected):
    assert conv_output_size(w, f, p, s) == expected


def test_output_sizes_match_keras_layers():
    assert output_shape(keras.layers.Conv2D(1, 3), (8, 8, 1)) == (6, 6, 1)
    assert output_shape(keras.layers.Conv2D(6, 5), (32, 32, 3)) == (28, 28, 6)
    assert output_shape(keras.layers.Conv2D(4, 3, padding="same"), (13, 13, 2)) == (13, 13, 4)
    assert output_shape(keras.layers.MaxPooling2D(2, strides=2), (4, 4, 3)) == (2, 2, 3)


@pytest.mark.parametrize(
    "f, c, k, groups, expected",
    [(5, 1, 6, 1, 156), (5, 6, 16, 1, 2416), (3, 3, 64, 1, 1792), (5, 96, 256, 2, 307_456)],
)
def test_conv_params_lecture_checks_and_keras(f, c, k, groups, expected):
    assert conv_params(f, c, k, groups=groups) == expected
    layer = keras.layers.Conv2D(k, f, groups=groups)
    layer.build((None, 16, 16, c))
    assert layer.count_params() == expected
    assert conv_params(f, c, k, bias=False, groups=groups) == expected - k


@pytest.mark.parametrize("n, m", [(400, 120), (120, 84), (9216, 4096)])
def test_dense_params_match_keras(n, m):
    layer = keras.layers.Dense(m)
    layer.build((None, n))
    assert dense_params(n, m) == layer.count_params() == (n + 1) * m


def test_dilated_conv_sees_a_5x5_lattice():
    # A 3x3 kernel at dilation 2 reads every other input of a 5x5 window.
    assert conv_output_size(5, 3, 0, 1, dilation=2) == 1
    layer = keras.layers.Conv2D(1, 3, dilation_rate=2, kernel_initializer="ones")
    x = tf.Variable(tf.zeros((1, 5, 5, 1)))
    with tf.GradientTape() as tape:
        y = layer(x)
    assert y.shape == (1, 1, 1, 1)
    seen = tape.gradient(y, x).numpy()[0, :, :, 0]
    lattice = np.zeros((5, 5))
    lattice[::2, ::2] = 1
    np.testing.assert_array_equal(seen, lattice)


def test_lrn_defaults_are_alexnets_and_value_is_the_papers_formula():
    layer = LocalResponseNormalization()
    assert (layer.n, layer.k, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75)
    a = np.arange(1.0, 8.0, dtype="float32").reshape(1, 1, 1, 7)
    # Channel 0 sums channels 0-2 (clipped at the edge), channel 3 sums 1-5, channel 6 sums 4-6;
    # alpha is not divided by n.
    sums = {0: 1 + 4 + 9, 3: 4 + 9 + 16 + 25 + 36, 6: 25 + 36 + 49}
    out = np.asarray(layer(a))[0, 0, 0]
    for i, s in sums.items():
        np.testing.assert_allclose(out[i], (i + 1) / (2 + 1e-4 * s) ** 0.75, rtol=1e-6)


def test_lrn_rejects_an_even_size():
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNormalization(n=4)


def two_examples():
    """Two random 4x4x2 maps: the batch offset of the switches matters, and ties do not occur."""
    return np.random.default_rng(0).uniform(0, 1, (2, 4, 4, 2)).astype("float32")


def argmax_mask(x, pool):
    """1 where a value is the maximum of its non-overlapping `pool` x `pool` window."""
    b, h, w, c = x.shape
    windows = x.reshape(b, h // pool, pool, w // pool, pool, c)
    maxima = windows.max(axis=(2, 4), keepdims=True)
    return (windows == maxima).reshape(x.shape).astype("float32")


def test_unpooling_puts_values_back_at_their_switches():
    x = two_examples()
    pooled, switches = MaxPoolingWithArgmax2D(2)(x)
    assert pooled.shape == (2, 2, 2, 2) and switches.dtype == tf.int64
    np.testing.assert_array_equal(pooled, x.reshape(2, 2, 2, 2, 2, 2).max(axis=(2, 4)))
    unpooled = MaxUnpooling2D(2)([pooled, switches])
    np.testing.assert_array_equal(unpooled, x * argmax_mask(x, 2))


def test_unpooling_to_an_odd_size_takes_the_pooled_map_as_reference():
    x = np.zeros((1, 5, 5, 1), "float32")
    x[0, 1, 3, 0], x[0, 2, 2, 0], x[0, 4, 4, 0] = 7.0, 5.0, 9.0
    pooled, switches = MaxPoolingWithArgmax2D(3, strides=2)(x)
    assert pooled.shape == (1, 2, 2, 1)
    unpooled = MaxUnpooling2D(2)([pooled, switches, x])
    assert unpooled.shape == x.shape
    np.testing.assert_array_equal(unpooled, x)


def test_gradients_reach_exactly_the_argmax_positions():
    x = tf.Variable(two_examples())
    pool, unpool = MaxPoolingWithArgmax2D(2), MaxUnpooling2D(2)
    weights = tf.random.stateless_uniform((2, 4, 4, 2), seed=(1, 2), minval=1.0, maxval=2.0)
    with tf.GradientTape(persistent=True) as tape:
        pooled, switches = pool(x)
        unpooled = unpool([pooled, switches])
        through_pool = tf.reduce_sum(pooled)
        through_both = tf.reduce_sum(unpooled * weights)
    mask = argmax_mask(x.numpy(), 2)
    np.testing.assert_array_equal(tape.gradient(through_pool, x), mask)
    np.testing.assert_allclose(tape.gradient(through_both, x), mask * weights.numpy(), rtol=1e-6)


def test_layers_reload_from_a_keras_file_in_safe_mode(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv")(inputs)
    x = LocalResponseNormalization(n=3, k=1.0, alpha=0.5, beta=0.5, name="lrn")(x)
    pooled, switches = MaxPoolingWithArgmax2D(2, name="pool")(x)
    outputs = MaxUnpooling2D(2, name="unpool")([pooled, switches])
    model = keras.Model(inputs, outputs)
    assert model.output_shape == (None, 8, 8, 6)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert reloaded.get_layer("lrn").get_config()["alpha"] == 0.5
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(reloaded(x), model(x))
