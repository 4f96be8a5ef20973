"""Block maps of every registered base (every keras.applications family, the classic zoo,
EfficientNet-Lite) and the catalogue `tlkit bases` lists, checked on freshly built models.

Each base is built once, at a small input (32 px, or the least it takes), keras.applications
ones with weights="imagenet" whose download is recorded, not made (`recorded_downloads`), so the
test also sees the weights file Keras would fetch. All 65 take about 100 s on 2 cores; the larger
variants of a family are marked slow (`pytest -m slow` runs them), at least one model of every
family stays in the default run, which takes about 30 s.
"""
from __future__ import annotations

import re

import keras
import pytest

from tlkit.bases import BASES
from tlkit.bases.keras_apps import APPS
from tlkit.bases.listing import describe, recorded_downloads
from tlkit.models.blocks import set_trainable_top
from tlkit.recipe.base_names import load_catalog

SMALLEST = {"inception_v3": 75, "inception_resnet_v2": 75, "xception": 71, "alexnet": 96, "alexnet_grouped": 96,
            "zfnet": 64}
SLOW = {
    "resnet101", "resnet152", "resnet101_v2", "resnet152_v2",
    *(f"efficientnetb{i}" for i in range(2, 8)),
    "efficientnetv2b1", "efficientnetv2b2", "efficientnetv2b3", "efficientnetv2s", "efficientnetv2m", "efficientnetv2l",
    "densenet169", "densenet201", "nasnetlarge",
    "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge",
}
FAMILIES = ["vgg", "resnet", "inception_v3", "inception_resnet", "xception", "mobilenet", "mobilenet_v2", "mobilenet_v3",
            "efficientnetb", "efficientnetv2", "densenet", "nasnet", "convnext", "efficientnet_lite", "zoo:"]

# Conv2D layers (separable and depthwise convolutions aside) per block, from the papers: where a
# model's layers are named by Keras' session-wide counter, these prove each went to its block.
CONVS_PER_BLOCK = {
    # the stem's 5 convolutions go with mixed0; 94 in all
    "inception_v3": {"mixed0": 12, "mixed1": 7, "mixed2": 7, "mixed3": 4, "mixed4": 10, "mixed5": 10, "mixed6": 10,
                     "mixed7": 10, "mixed8": 6, "mixed9": 9, "mixed10": 9},
    # stem 5 + mixed_5b 7; 10 x 7 (A), 4, 20 x 5 (B), 7, 10 x 5 (C), 1: 244 in all
    "inception_resnet_v2": {"stem": 12, "block35": 70, "mixed_6a": 4, "block17": 100, "mixed_7a": 7, "block8": 50,
                            "top": 1},
    # two stem convolutions, and the 1x1 shortcut of the four strided blocks
    "xception": {"block1": 2, "block2": 1, "block3": 1, "block4": 1, "block13": 1},
}


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


def build(name: str):
    spec = BASES.get(name)
    side = SMALLEST.get(name.removeprefix("zoo:"), 32)
    with recorded_downloads() as downloads:
        base = spec.load("imagenet" if spec.source == "keras" else "none", (side, side))
    return base, downloads


def is_bn(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def test_every_keras_application_is_a_base_and_every_family_is_in_the_default_run():
    models = {name for name in dir(keras.applications) if name[0].isupper()}
    assert len(models) == 40
    assert {app.constructor for app in APPS.values()} == models
    assert set(APPS) <= set(BASES)
    default = [name for name in BASES if name not in SLOW]
    for family in FAMILIES:
        assert any(name.startswith(family) for name in default), family


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")  # MobileNets at 32 px: Keras picks the 224 weights
@pytest.mark.parametrize("name", [_param(name) for name in BASES])
def test_block_map_unfreezing_and_catalogue(name):
    base, downloads = build(name)
    model, blocks = base.model, base.blocks
    position = {layer.name: i for i, layer in enumerate(model.layers)}

    # The blocks cover every layer with weights, each once, in the model's order, one after another.
    placed = [layer for block in blocks for layer in block.layers]
    assert len(placed) == len(set(placed))
    assert {layer.name for layer in model.layers if layer.trainable_weights} <= set(placed)
    assert [position[layer] for layer in placed] == sorted(position[layer] for layer in placed)
    # Every block has something to train (BatchNorm stays frozen).
    for block in blocks:
        assert any(model.get_layer(n).trainable_weights and not is_bn(model.get_layer(n)) for n in block.layers), block.name

    for n in (1, 2):
        unfrozen = set_trainable_top(model, blocks, n)
        assert unfrozen == blocks[-n:]
        expected = [model.get_layer(layer) for block in unfrozen for layer in block.layers]
        expected = [layer for layer in expected if not is_bn(layer)]
        assert {layer.name for layer in model.layers if layer.trainable} == {layer.name for layer in expected}
        assert {id(v) for v in model.trainable_weights} == {id(v) for layer in expected for v in layer.trainable_weights}
        assert model.trainable_weights

    if name in CONVS_PER_BLOCK:
        convs = {b.name: sum(type(model.get_layer(n)) is keras.layers.Conv2D for n in b.layers) for b in blocks}
        assert {k: v for k, v in convs.items() if v} == CONVS_PER_BLOCK[name]

    # What `tlkit bases` lists is what the model is (the parameter count of these fully
    # convolutional bases does not depend on the input size).
    assert load_catalog()[name] == describe(base, downloads)
    if base.source == "keras":  # the weights without the ImageNet classifier
        assert re.search(r"no_?top", downloads[-1].file)
