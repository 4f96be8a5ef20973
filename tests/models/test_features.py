"""The base's features inside a classifier: found in a tlkit classifier whose base is nested (one
giving feature maps, one giving vectors) and in models of another make, as the base gives them."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from tlkit.models.features import BASE_LAYER, POOL_LAYER, features_in, nested_base

X = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")


def conv_base() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    return keras.Model(inputs, keras.layers.Conv2D(6, 3, strides=2, name="conv")(inputs), name=BASE_LAYER)


def vector_base() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 3, name="conv")(inputs))
    return keras.Model(inputs, keras.layers.Dense(5, name="embed")(x), name=BASE_LAYER)


def classifier(base: keras.Model, pool: bool) -> keras.Model:
    inputs = keras.Input((16, 16, 3), name="image")
    x = base(inputs, training=False)
    if pool:
        x = keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(x)
    x = keras.layers.Dropout(0.5, name="head_dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head_dense")(x))


def predicted(model: keras.Model, tensor) -> np.ndarray:
    return keras.Model(model.inputs, tensor).predict(X, verbose=0)


def test_a_nested_base_giving_feature_maps_is_pooled_by_the_head():
    base = conv_base()
    model = classifier(base, pool=True)
    assert nested_base(model) is base
    maps = features_in(model, pooled=False)
    assert tuple(maps.shape) == (None, 7, 7, 6)  # of the classifier's graph, not of the base's own
    np.testing.assert_allclose(predicted(model, maps), base.predict(X, verbose=0), atol=1e-6)
    pooled = features_in(model)
    np.testing.assert_allclose(predicted(model, pooled), base.predict(X, verbose=0).mean(axis=(1, 2)), atol=1e-6)


def test_a_nested_base_giving_vectors_is_its_own_pooled_features():
    base = vector_base()
    model = classifier(base, pool=False)
    for pooled in (True, False):
        features = features_in(model, pooled)
        assert tuple(features.shape) == (None, 5)
        np.testing.assert_allclose(predicted(model, features), base.predict(X, verbose=0), atol=1e-6)


def test_a_model_of_another_make_ends_its_base_at_its_last_feature_map_else_at_its_last_dense_input():
    inputs = keras.Input((16, 16, 3))
    maps = keras.layers.Conv2D(4, 3, name="last_map")(keras.layers.Conv2D(4, 3)(inputs))
    x = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8)(keras.layers.Flatten()(maps)))
    own_top = keras.Model(inputs, x)
    assert nested_base(own_top) is None
    assert features_in(own_top, pooled=False) is own_top.get_layer("last_map").output
    assert features_in(own_top) is None  # it flattens its maps itself: no pooled features to take

    vectors = keras.Input((10,))
    hidden = keras.layers.Dense(6, name="hidden")(vectors)
    mlp = keras.Model(vectors, keras.layers.Dense(3, name="top")(hidden))
    assert features_in(mlp, pooled=False) is features_in(mlp) is mlp.get_layer("hidden").output


@pytest.mark.parametrize("model", [
    keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu")]),
    keras.Sequential([keras.Input((16, 16, 3)), conv_base()]),
], ids=["no dense layer", "a base followed by nothing"])
def test_a_model_without_features_has_none(model):
    assert features_in(model) is None
