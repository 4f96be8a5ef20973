"""The recipe engine's promises: what each stage trains, and what it must leave bit-identical."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tlkit.bases import load_base
from tlkit.engine.classifier import BASE_LAYER
from tlkit.engine.strategy import configure
from tlkit.engine.training import RunContext, load_data
from tlkit.jobs import resolve, run_recipe
from tlkit.recipe.kinds import STAGES, stage_params
from tlkit.recipe.schema import Recipe, Stage


def snapshot(model: keras.Model) -> dict[str, dict[str, np.ndarray]]:
    """Every variable of every layer (moving statistics included), copied, by layer name."""
    return {layer.name: {v.path: np.array(v.numpy()) for v in layer.weights} for layer in model.layers if layer.weights}


def calibrate_batchnorm(model: keras.Model, images: np.ndarray) -> None:
    """Set every BatchNorm's moving statistics to those of `images`, as a pretrained base has them.

    With random weights and the initial statistics (mean 0, variance 1), the signal through a
    deep inference-mode network like MobileNetV2 shrinks to ~1e-13, too small for any gradient
    step to move a float32 weight; calibrated statistics keep it at unit scale.
    """
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for layer in norms:
        layer.momentum = 0.99


def run(tiny_images, tmp_path, base_name: str, stages: list[Stage]) -> tuple[RunContext, dict, dict]:
    recipe = Recipe(stages=stages, base=base_name, weights="none", data=str(tiny_images), image_size=32,
                    batch_size=8, seed=1, dropout=0.0)
    configure(recipe)
    base = load_base(base_name, "none", (32, 32))
    calibrate_batchnorm(base.model, np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32"))
    before = snapshot(base.model)
    ctx = run_recipe(recipe, base, tmp_path / "run", verbose=0)
    return ctx, before, snapshot(ctx.classifier.get_layer(BASE_LAYER))


@pytest.fixture(scope="module", params=[("vgg16", 2), ("resnet50", 1), ("mobilenet_v2", 3)], ids=lambda p: p[0])
def staged(request, tiny_images, tmp_path_factory):
    """One base through `head`, then `finetune` of its top blocks, with every base variable
    snapshotted before, between and after."""
    base_name, unfreeze = request.param
    ctx, before, after_head = run(tiny_images, tmp_path_factory.mktemp(base_name), base_name,
                                  [Stage("head", epochs=1, learning_rate=1e-2)])
    STAGES.get("finetune").run(ctx, 2, stage_params(Stage("finetune", epochs=1, learning_rate=1e-3, unfreeze=unfreeze)))
    return ctx, unfreeze, before, after_head, snapshot(ctx.classifier.get_layer(BASE_LAYER))


def test_head_leaves_every_base_weight_bit_identical(staged):
    ctx, _, before, after, _ = staged
    assert before.keys() == after.keys()
    for layer, variables in before.items():
        for path, value in variables.items():
            assert np.array_equal(value, after[layer][path]), f"{path} changed in the head stage"
    assert ctx.results[0].history["loss"], "the head stage trained"


def test_finetune_changes_only_the_top_blocks(staged):
    ctx, unfreeze, _, before, after = staged
    top = {name for block in ctx.base.blocks[-unfreeze:] for name in block.layers}
    changed_layers = 0
    for layer in ctx.classifier.get_layer(BASE_LAYER).layers:
        if layer.name not in before:
            continue
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        for path, value in before[layer.name].items():
            same = np.array_equal(value, after[layer.name][path])
            if layer.name in top and not is_bn:
                assert not same, f"{path} is in an unfrozen block but did not change"
                changed_layers += 1
            else:
                assert same, f"{path} is frozen (or BatchNorm) but changed"
    assert changed_layers > 0


def test_each_stage_compiles_a_fresh_optimizer_at_its_own_rate(tiny_images, tmp_path):
    stages = [Stage("head", epochs=1, learning_rate=3e-3), Stage("finetune", epochs=1, learning_rate=2e-5, unfreeze=1)]
    ctx, _, _ = run(tiny_images, tmp_path, "vgg16", stages)
    first, second = (r.optimizer for r in ctx.results)
    assert first is not second
    assert float(first.learning_rate) == pytest.approx(3e-3)
    assert float(second.learning_rate) == pytest.approx(2e-5)
    # a fresh optimizer has only taken the finetune stage's steps
    steps_per_epoch = int(np.ceil(len(ctx.train) / ctx.recipe.batch_size))
    assert int(second.iterations.numpy()) == steps_per_epoch
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [s["learning_rate"] for s in metrics["stages"]] == [3e-3, 2e-5]


@pytest.mark.integration
def test_run_directory_holds_everything_to_repeat_the_run(tiny_images, tmp_path):
    stages = [Stage("head", epochs=2, learning_rate=1e-3), Stage("finetune", epochs=1, learning_rate=1e-4, unfreeze=1)]
    ctx, _, _ = run(tiny_images, tmp_path, "vgg16", stages)
    out = tmp_path / "run"
    for name in ["model.keras", "labels.txt", "recipe.toml", "history.json", "metrics.json", "checkpoints/best.keras"]:
        assert (out / name).is_file(), name
    assert (out / "logs").is_dir() and any((out / "logs").rglob("events.out.tfevents*"))
    assert (out / "labels.txt").read_text().split() == ctx.classes
    resolved = Recipe.load(out / "recipe.toml")
    assert resolved.base == "vgg16" and resolved.data == str(tiny_images) and resolved.image_size == 32
    # the stages as given, completed with their kinds' defaults
    assert resolved.stages == resolve(Recipe(stages=stages)).stages
    assert resolved.stages[1].params == {**stages[1].params, "schedule": "constant", "warmup_epochs": 0, "layer_decay": 1.0}
    history = json.loads((out / "history.json").read_text())
    assert [len(h["loss"]) for h in history] == [2, 1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["kind"] for s in metrics["stages"]] == ["head", "finetune"]
    assert all(0.0 <= s["val_accuracy"] <= 1.0 for s in metrics["stages"])
    reloaded = keras.models.load_model(out / "model.keras", safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), ctx.served.predict(x, verbose=0), atol=1e-6)


def test_data_is_validated_before_any_training(bad_images):
    from tlkit.errors import TlkitError

    with pytest.raises(TlkitError) as err:
        load_data(Recipe(data=str(bad_images.root)))
    for path in (bad_images.truncated, bad_images.empty):
        assert str(path) in str(err.value)


def test_best_checkpoint_writes_the_best_epoch_once_a_minute_and_at_the_end(tmp_path):
    from tlkit.engine.checkpoint import BestCheckpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "best.keras"
    best = BestCheckpoint(path, model)
    best.on_train_begin()
    kernels = []
    for epoch, loss in enumerate([1.0, 0.5, 0.7]):
        model.layers[0].kernel.assign(np.full((2, 1), float(epoch), "float32"))
        kernels.append(model.layers[0].kernel.numpy())
        best.on_epoch_end(epoch, {"val_loss": loss})
    assert not path.exists()  # within the first minute: kept in memory, not written
    best.on_train_end()
    saved = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(saved.layers[0].kernel.numpy(), kernels[1])  # the best epoch's
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), kernels[2])  # the model is left as it was
    assert best.best == 0.5
    best.every = 0  # past the minute: a better epoch is written at once
    best.on_epoch_end(3, {"val_loss": 0.1})
    np.testing.assert_array_equal(keras.models.load_model(path, safe_mode=True).layers[0].kernel.numpy(), kernels[2])
