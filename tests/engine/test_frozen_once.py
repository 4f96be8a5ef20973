"""The head and finetune stages run the frozen layers once (tlkit.engine.frozen.fit_frozen_once)
instead of every epoch, and give the same training; the base stays in inference mode while a head or finetune
stage trains (dropout inside the base off), and trains with the rest in a train stage."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from tlkit.bases import load_base
from tlkit.engine import frozen as features
from tlkit.engine.classifier import BASE_LAYER, base_in_inference, build_classifier
from tlkit.jobs import finetune
from tlkit.models.blocks import set_trainable_top

STAGES = {"head": {"epochs": 1, "learning_rate": 0.01},
          "finetune": {"epochs": 2, "unfreeze": 2, "learning_rate": 0.001, "layer_decay": 0.5}}


def images(model, n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *model.input_shape[1:])).astype("float32")


@pytest.mark.parametrize("name, unfreeze", [("efficientnet_lite0", 1), ("efficientnet_lite0", 3), ("vgg16", 1),
                                            ("mobilenet_v2", 2), ("lenet5", 1)])
def test_the_two_parts_compute_the_classifier_and_train_its_variables(name, unfreeze):
    base = load_base(name, "none", (32, 32))
    classifier = build_classifier(base, 3, 0.0)
    top = set_trainable_top(classifier.get_layer(BASE_LAYER), base.blocks, unfreeze)
    frozen, rest = features.frozen_split(classifier, BASE_LAYER)
    x = images(classifier)
    np.testing.assert_allclose(rest(frozen(x)), classifier(x), rtol=0, atol=1e-6)
    assert [v.path for v in rest.trainable_variables] == [v.path for v in classifier.trainable_variables]
    assert not frozen.trainable_variables
    # the cut is at the bottom of the lowest unfrozen block, or below it (not inside the frozen part's top)
    lowest = {layer for block in top for layer in block.layers}
    assert frozen.layers[-1].name not in lowest


def test_nothing_to_cut_when_every_layer_trains():
    base = load_base("lenet5", "none", (32, 32))
    classifier = build_classifier(base, 3, 0.0)
    set_trainable_top(classifier.get_layer(BASE_LAYER), base.blocks, len(base.blocks))
    assert features.frozen_split(classifier, BASE_LAYER) is None


def test_the_base_keeps_inference_mode_in_transfer_stages_and_trains_in_a_train_stage():
    # EfficientNet drops a random share of each block's residual branch in training
    base = load_base("efficientnet_lite0", "imagenet", (32, 32))  # its weights ship with tlkit
    classifier = build_classifier(base, 3, 0.0)
    set_trainable_top(classifier.get_layer(BASE_LAYER), base.blocks, 2)
    pooled = keras.Model(classifier.input, classifier.get_layer("head_pool").output)  # the classifier's graph
    x = images(classifier)
    base_in_inference(classifier, False)
    assert np.abs(pooled(x, training=True) - pooled(x, training=False)).max() > 1e-3
    base_in_inference(classifier, True)
    np.testing.assert_array_equal(pooled(x, training=True), pooled(x, training=False))


@pytest.mark.integration
def test_finetune_on_the_frozen_outputs_trains_as_on_the_images(tiny_images, tmp_path, caplog):
    runs = {}
    for cache in ("none", "memory"):  # "none" holds nothing per image in memory: the frozen layers run every epoch
        caplog.clear()
        ctx = finetune("efficientnet_lite0", str(tiny_images), out=tmp_path / cache, weights="none", image_size=32,
                       batch_size=6, seed=3, dropout=0.2, cache_images=cache, stages=STAGES, verbose=0)
        runs[cache] = ctx
        assert caplog.text.count(") run once: ") == (2 if cache == "memory" else 0)  # both stages
    for every, once in zip(runs["none"].results, runs["memory"].results):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(once.history[key], every.history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(runs["none"].model.weights, runs["memory"].model.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


def test_augmentation_keeps_the_frozen_layers_running_every_epoch(tiny_images, tmp_path, caplog):
    finetune("lenet5", str(tiny_images), out=tmp_path / "run", weights="none", image_size=32, batch_size=6,
             augment="light", stages={"head": {"epochs": 0}, "finetune": {"epochs": 1, "unfreeze": 1}}, verbose=0)
    assert "changes the images every epoch: the frozen layers run every epoch" in caplog.text
    assert "run once" not in caplog.text
