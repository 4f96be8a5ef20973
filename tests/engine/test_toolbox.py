"""The training toolbox (issue 11): each tool proved by its effect on numbers. Schedules give the
learning rate at chosen steps and that rate reaches history.json and TensorBoard; layer decay
scales the update of each block; label smoothing's loss is its formula; class weights change the
loss as fit(class_weight=) defines; augmentation changes training batches only, the same for the
same seed; lr-find leaves nothing but its plot; the new recipe fields round-trip."""
from __future__ import annotations

import json
import math
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlkit.bases import Base
from tlkit.cli import main
from tlkit.data import augment
from tlkit.engine.classifier import BASE_LAYER
from tlkit.engine.training import context
from tlkit.errors import TlkitError
from tlkit.jobs import run_recipe
from tlkit.lrfind import lr_find, smooth, steepest
from tlkit.models import optimization as training
from tlkit.models.blocks import build_block_map
from tlkit.recipe.kinds import STAGES, resolve, stage_params
from tlkit.recipe.schema import Recipe, Stage

BLOCKS = [("b1", "c1"), ("b2", "c2"), ("b3", "c3")]


def tiny_base() -> Base:
    """Three conv blocks, one layer each, on 32x32 RGB."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for _, name in BLOCKS:
        x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name=name)(x)
    model = keras.Model(inputs, x, name="tiny")
    return Base("tiny", model, build_block_map(model, BLOCKS), (32, 32), "test", "none")


def tiny_context(data, out, stages, **fields):
    recipe = resolve(Recipe(stages=stages), data=str(data), image_size=32, dropout=0.0, **fields)
    ctx, _ = context(recipe, tiny_base(), out, verbose=0)
    return ctx


# -- schedules ------------------------------------------------------------------------------------

def rates(schedule, steps):
    return [float(schedule(s)) if callable(schedule) else schedule for s in steps]


def test_schedules_give_the_rate_at_chosen_steps():
    lr = 0.1
    # 10 steps per epoch, 3 epochs: 30 steps
    assert training.schedule("constant", lr, 10, 3) == lr
    assert rates(training.schedule("constant", lr, 10, 3, warmup_epochs=1), [0, 5, 10, 29]) == pytest.approx(
        [0, lr / 2, lr, lr])
    assert rates(training.schedule("cosine", lr, 10, 3), [0, 15, 30]) == pytest.approx([lr, lr / 2, 0], abs=1e-7)
    # warmup 10 steps to lr, then half a cosine over the 20 left
    assert rates(training.schedule("cosine", lr, 10, 3, warmup_epochs=1), [0, 5, 10, 20, 30]) == pytest.approx(
        [0, lr / 2, lr, lr / 2, 0], abs=1e-7)
    # one-cycle: from lr/25 up to lr over the first quarter (round(7.5) = 8 steps), down to lr/1e5
    cycle = training.schedule("onecycle", lr, 10, 3)
    start, end = lr / 25, lr / 1e5
    assert rates(cycle, [0, 4, 8, 19, 30, 40]) == pytest.approx(
        [start, (start + lr) / 2, lr, (end + lr) / 2, end, end], rel=1e-5)
    # its warmup set in epochs
    assert rates(training.schedule("onecycle", lr, 10, 3, warmup_epochs=1), [10, 20]) == pytest.approx(
        [lr, (end + lr) / 2], rel=1e-5)
    # a one-cycle schedule survives saving (the run's model.keras keeps its optimizer)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(cycle))
    assert float(again(19)) == pytest.approx(float(cycle(19)))


def test_the_rate_of_every_step_reaches_history_and_tensorboard(tiny_images, tmp_path):
    ctx = tiny_context(tiny_images, tmp_path, [Stage("head", epochs=2, learning_rate=0.01, schedule="cosine",
                                                     warmup_epochs=1)], batch_size=8)
    run_recipe(ctx.recipe, ctx.base, tmp_path, verbose=0)
    history = json.loads((tmp_path / "history.json").read_text())[0]
    steps = math.ceil(len(ctx.train) / 8)
    assert len(history["step_learning_rate"]) == 2 * steps
    expected = rates(training.schedule("cosine", 0.01, steps, 2, warmup_epochs=1), range(2 * steps))
    assert history["step_learning_rate"] == pytest.approx(expected, rel=1e-6)
    assert expected[0] == 0 and max(expected) == pytest.approx(0.01)
    # per epoch: the rate of its last step
    assert history["learning_rate"] == pytest.approx([expected[steps - 1], expected[-1]], rel=1e-6)
    events = list((tmp_path / "logs" / "1-head" / "train").glob("events.out.tfevents.*"))
    logged = {}
    for record in tf.data.TFRecordDataset([str(e) for e in events]):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            if value.tag == "batch_learning_rate":
                logged[event.step] = float(tf.make_ndarray(value.tensor))
    assert [logged[s] for s in sorted(logged)] == pytest.approx(expected, rel=1e-6)


# -- layer decay ----------------------------------------------------------------------------------

def test_layer_decay_scales_each_blocks_first_update(tiny_images, tmp_path):
    """Adam's first step moves each weight by lr x m/sqrt(v) = lr x sign(g): the largest move in a
    variable is its learning rate. Top block at lr, the next at lr x 0.5, the next at lr x 0.25,
    the head at lr."""
    lr, decay = 1e-2, 0.5
    ctx = tiny_context(tiny_images, tmp_path, [Stage("finetune", unfreeze=3, layer_decay=decay, learning_rate=lr)],
                       batch_size=32)
    params = stage_params(ctx.recipe.stages[0])
    model, _ = STAGES.get("finetune").prepare(ctx, params)
    ctx.compile(model, params, lr)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    images, labels = next(iter(ctx.dataset("train")))
    model.train_on_batch(images, labels)
    moved = {v.path: np.abs(v.numpy() - before[v.path]).max() / lr for v in model.trainable_variables}
    base = model.get_layer(BASE_LAYER)
    for depth, name in enumerate(["c3", "c2", "c1"]):
        for variable in base.get_layer(name).trainable_weights:
            assert moved[variable.path] == pytest.approx(decay ** depth, rel=1e-3), variable.path
    head = model.get_layer("head_dense")
    assert [moved[v.path] for v in head.trainable_weights] == pytest.approx([1.0, 1.0], rel=1e-3)


# -- label smoothing ------------------------------------------------------------------------------

def test_smoothed_loss_is_its_formula(tiny_images, tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0])
    a, k = 0.1, 3
    target = (1 - a) * np.eye(k)[labels] + a / k
    formula = -(target * np.log(probs)).sum(axis=1).mean()
    assert float(training.Crossentropy(a)(labels, probs)) == pytest.approx(formula, rel=1e-5)
    # soft labels (MixUp's) are taken as they are, then smoothed
    soft = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
    expected = -(((1 - a) * soft + a / k) * np.log(probs)).sum(axis=1).mean()
    assert float(training.Crossentropy(a)(soft, probs)) == pytest.approx(expected, rel=1e-5)
    # and a run with label_smoothing compiles its classifier with it: evaluate gives the formula
    ctx = tiny_context(tiny_images, tmp_path, [Stage("head")], label_smoothing=a, batch_size=64)
    params = stage_params(ctx.recipe.stages[0])
    model, _ = STAGES.get("head").prepare(ctx, params)
    ctx.compile(model, params, 1e-3)
    images, labels = next(iter(ctx.dataset("val")))
    p = model.predict(images, verbose=0)
    target = (1 - a) * np.eye(k)[labels.numpy()] + a / k
    loss = model.evaluate(images, labels, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(-(target * np.log(p)).sum(axis=1).mean(), rel=1e-5)


# -- class weights --------------------------------------------------------------------------------

@pytest.fixture
def imbalanced(tiny_images, tmp_path):
    """tiny_images with red down to 3 images: the minority class."""
    root = tmp_path / "imbalanced"
    shutil.copytree(tiny_images, root)
    for path in sorted((root / "red").iterdir())[3:]:
        path.unlink()
    return root


def test_class_weights_weigh_the_loss_as_fit_defines(imbalanced, tmp_path):
    file = tmp_path / "weights.toml"
    file.write_text("red = 4.0\n")  # red, the minority, weighs 4; the classes left out 1
    ctx = tiny_context(imbalanced, tmp_path / "run", [Stage("head", epochs=1)], class_weight=str(file),
                       batch_size=64, val_split=0.25)
    assert ctx.class_weight == {0: 1.0, 1: 1.0, 2: 4.0}
    params = stage_params(ctx.recipe.stages[0])
    model, _ = STAGES.get("head").prepare(ctx, params)
    images, labels = next(iter(ctx.dataset("train")))  # every training image: one batch
    p = model.predict(images, verbose=0)
    losses = -np.log(p[np.arange(len(labels)), labels.numpy()])
    weights = np.array([ctx.class_weight[int(y)] for y in labels])
    # fit(class_weight=) multiplies each example's loss by its class's weight, then averages over
    # the batch (the weights are not normalised away); the loss fit reports is that of the one
    # step, taken before the step's update
    result = STAGES.get("head").run(ctx, 1, params)
    assert result.history["loss"][0] == pytest.approx((weights * losses).mean(), rel=1e-5)
    red = labels.numpy() == 2
    assert (weights * losses).mean() - losses.mean() == pytest.approx(3 * losses[red].sum() / len(labels), rel=1e-4)


def test_balanced_class_weights_and_files(imbalanced, tmp_path):
    counts = [6, 6, 2]
    n, k = sum(counts), len(counts)
    assert training.class_weights("balanced", ["blue", "green", "red"], counts) == pytest.approx(
        {i: n / (k * c) for i, c in enumerate(counts)})
    assert training.class_weights("none", ["blue", "green", "red"], counts) is None
    (tmp_path / "w.json").write_text('{"green": 0.5}')
    assert training.class_weights(str(tmp_path / "w.json"), ["blue", "green", "red"], counts) == {
        0: 1.0, 1: 0.5, 2: 1.0}
    (tmp_path / "w.json").write_text('{"rde": 2}')
    with pytest.raises(TlkitError, match="red"):
        training.class_weights(str(tmp_path / "w.json"), ["blue", "green", "red"], counts)


def test_class_weights_are_logged_and_saved(imbalanced, tmp_path, caplog):
    ctx = tiny_context(imbalanced, tmp_path, [Stage("head", epochs=1)], class_weight="balanced")
    run_recipe(ctx.recipe, ctx.base, tmp_path / "run", verbose=0)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["class_weights"]
    assert saved == pytest.approx(dict(zip(ctx.classes, ctx.class_weight.values())))
    assert f"class weights (balanced): blue {saved['blue']:.3g}" in caplog.text


# -- augmentation ---------------------------------------------------------------------------------

def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x1, x2) and np.array_equal(y1, y2)
                                    for (x1, y1), (x2, y2) in zip(a, b))


def test_augmentation_changes_training_batches_only_and_the_seed_repeats_them(tiny_images, tmp_path):
    plain = tiny_context(tiny_images, tmp_path, [Stage("head")], augment="none", batch_size=8)
    standard = tiny_context(tiny_images, tmp_path, [Stage("head")], augment="standard", batch_size=8)
    strong = tiny_context(tiny_images, tmp_path, [Stage("head")], augment="strong", batch_size=8)
    val = batches(plain.dataset("val"))
    # validation batches are bit-identical whatever the augmentation
    assert same(val, batches(standard.dataset("val"))) and same(val, batches(strong.dataset("val")))
    train = batches(plain.dataset("train"))
    augmented = batches(standard.dataset("train"))
    # the same images in the same order (the shuffle is the seed's), each batch transformed
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(train, augmented))
    assert all(not np.array_equal(a, b) for (a, _), (b, _) in zip(train, augmented))
    assert all(x.min() >= 0 and x.max() <= 255 for x, _ in augmented)
    # the same seed gives the same batches; the next epoch draws anew; another seed differs
    assert same(augmented, batches(standard.dataset("train")))
    dataset = standard.dataset("train")
    assert not same(batches(dataset), batches(dataset))
    other = tiny_context(tiny_images, tmp_path, [Stage("head")], augment="standard", batch_size=8, seed=1)
    assert not same(augmented, batches(other.dataset("train")))
    # MixUp and CutMix make soft labels: rows of class weights summing to 1, not all one-hot
    mixed = batches(strong.dataset("train"))
    labels = np.concatenate([y for _, y in mixed])
    assert labels.shape == (len(labels), 3) and np.allclose(labels.sum(1), 1, atol=1e-5)
    assert (labels.max(1) < 1 - 1e-3).any()
    assert same(mixed, batches(strong.dataset("train")))


def test_presets_and_options():
    assert augment.preset(True) == augment.PRESETS["light"] and not augment.preset(False).active
    recipe = Recipe(augment="strong", mixup=0.0, randaugment="3,5", rotate=15)
    aug = augment.of(recipe)
    assert (aug.mixup, aug.cutmix, aug.randaugment, aug.rotate) == (0.0, 1.0, (3, 5), 15)
    assert augment.of(Recipe(augment="standard", randaugment="0")).randaugment is None
    with pytest.raises(TlkitError, match="N,M"):
        augment.of(Recipe(randaugment="9"))
    assert tuple(augment.PRESETS) == ("none", "light", "standard", "strong")


def test_a_run_with_mixup_trains_on_soft_labels_and_scores_integer_ones(tiny_images, tmp_path):
    ctx = tiny_context(tiny_images, tmp_path, [Stage("head", epochs=1)], augment="none", mixup=0.4,
                       label_smoothing=0.1)
    run_recipe(ctx.recipe, ctx.base, tmp_path, verbose=0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["stages"][0]["val_accuracy"] <= 1
    model = keras.saving.load_model(tmp_path / "model.keras")  # its loss and metric load again
    assert isinstance(model.loss, training.Crossentropy) and model.loss.label_smoothing == 0.1


# -- lr-find --------------------------------------------------------------------------------------

def test_smoothing_and_the_steepest_point():
    assert smooth([1, 2, 3, 4, 5, 6], half_width=1) == pytest.approx([1.5, 2, 3, 4, 5, 5.5])
    lrs = np.logspace(-7, 1, 100)
    loss = 2 - 1.5 / (1 + np.exp(-2.5 * (np.log10(lrs) + 3)))  # falls fastest at 1e-3
    assert steepest(lrs.tolist(), loss.tolist()) == pytest.approx(1e-3, rel=0.25)


def test_lr_find_leaves_nothing_but_the_plot(tiny_images, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))  # the scan's cache: not in the working folder
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = lr_find("lenet5", str(tiny_images), "head_only", weights="none", image_size=32, out="sweep",
                     steps=40, batch_size=8, verbose=0)
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == ["sweep", "sweep/lr_find.png"]
    assert result.flag.startswith("--lr-head ") and result.suggestion in result.learning_rates
    assert result.learning_rates[0] == pytest.approx(1e-7)
    assert np.all(np.diff(np.log(result.learning_rates)) == pytest.approx(np.log(10 / 1e-7) / 39))
    # where the smoothed loss falls fastest: its slope there is the most negative of the middle
    i = result.learning_rates.index(result.suggestion)
    slope = np.gradient(result.smoothed, np.log10(result.learning_rates))
    assert slope[i] < 0 and slope[i] == slope[10:-5].min()
    # a finetune stage of classic is named by its own flag; the autoencoder is not swept
    with pytest.raises(TlkitError, match="lr-find sweeps"):
        lr_find(data=str(tiny_images), recipe="autoencoder", out="sweep", verbose=0)


# -- recipes and the command line -----------------------------------------------------------------

def test_the_new_fields_round_trip_through_recipe_toml(tmp_path):
    recipe = resolve(Recipe(stages=[Stage("head"), Stage("finetune", schedule="onecycle", warmup_epochs=1,
                                                         layer_decay=0.7)]),
                     augment="strong", mixup=0.4, cutmix=0.0, randaugment="2,5", erasing=0.1, rotate=5.0,
                     label_smoothing=0.1, class_weight="balanced", stages={"*": {"warmup_epochs": 0.5}})
    recipe.save(tmp_path / "recipe.toml")
    again = Recipe.load(tmp_path / "recipe.toml")
    assert again == recipe
    assert [s.warmup_epochs for s in again.stages] == [0.5, 0.5] and again.stages[1].layer_decay == 0.7
    # recipe files of tlkit 0.1 said augment = true or false
    assert Recipe.from_toml("augment = true").augment == "light"
    assert Recipe.from_toml("augment = false").augment == "none"
    with pytest.raises(TlkitError, match="standard"):
        Recipe.from_toml('augment = "standrd"')
    with pytest.raises(TlkitError, match="layer_decay"):
        resolve("classic", stages={"finetune": {"layer_decay": 1.5}})
    with pytest.raises(TlkitError, match="onecycle"):
        resolve("classic", stages={"*": {"schedule": "onecycle", "warmup_epochs": 5}})


@pytest.mark.parametrize("args, augment", [(["--augment"], "light"), (["--no-augment"], "none"),
                                           (["--augment", "strong"], "strong"), ([], "none")])
def test_cli_maps_the_options(monkeypatch, args, augment):
    seen = {}
    monkeypatch.setattr("tlkit.jobs.run", lambda recipe, out, **kwargs: seen.update(recipe=recipe, **kwargs))
    main(["finetune", "--base", "vgg16", *args, "--schedule", "cosine", "--warmup-epochs", "1", "--layer-decay", "0.7",
          "--label-smoothing", "0.1", "--class-weight", "balanced", "--mixup", "0.2"])
    recipe = seen["recipe"]  # as the CLI resolved it, once
    assert seen["job"] == "finetune" and recipe.augment == augment
    assert [(s.schedule, s.warmup_epochs) for s in recipe.stages] == [("cosine", 1.0)] * 2
    assert [s.kind for s in recipe.stages] == ["head", "finetune"] and recipe.stages[1].layer_decay == 0.7
    assert (recipe.label_smoothing, recipe.class_weight, recipe.mixup) == (0.1, "balanced", 0.2)


def test_modern_is_listed(capsys):
    main(["recipes"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("modern "))
    assert line.split(None, 1)[1] == ("head(3 ep, lr 0.001) -> finetune(5 ep, lr 0.0001, top 2, onecycle, warmup 1, "
                                      "layer decay 0.7); augment standard, label smoothing 0.1")
