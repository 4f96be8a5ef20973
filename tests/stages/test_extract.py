"""Feature-extraction mode: the on-disk feature cache and the extract stage."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tlkit.bases import load_base
from tlkit.cli import main
from tlkit.data import folders
from tlkit.data import pipeline as tldata
from tlkit.engine import frozen as features
from tlkit.engine.classifier import BASE_LAYER
from tlkit.engine.strategy import configure
from tlkit.evaluation.calibrate import calibrate_run
from tlkit.jobs import resolve, run_recipe
from tlkit.models.calibration import TEMPERATURE_LAYER
from tlkit.recipe.schema import Recipe, Stage
from tlkit.rundir.files import RunDir

SIZE = (64, 64)


class BaseRuns:
    """Counts the passes of a base over images (calls of features.run_base) while patched in."""

    def __init__(self):
        self.calls = []
        self.run_base = features.run_base

    def __call__(self, model, files, *args, **kwargs):
        self.calls.append(list(files))
        return self.run_base(model, files, *args, **kwargs)


@pytest.fixture(scope="module")
def spy():
    runs = BaseRuns()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features, "run_base", runs)
        yield runs


def recipe(data: Path, cache: Path, **changes) -> Recipe:
    fields = dict(stages=[Stage("extract", epochs=3, learning_rate=1e-2)], base="resnet18", weights="none",
                  data=str(data), image_size=SIZE[0], batch_size=8, seed=1, dropout=0.0, cache=str(cache))
    return Recipe(**{**fields, **changes})


@pytest.fixture(scope="module")
def extracted(tiny_images, tmp_path_factory, spy):
    """An extract run of resnet18 (random weights, BatchNorm inside) on the tiny images."""
    root = tmp_path_factory.mktemp("extract")
    r = recipe(tiny_images, root / "cache")
    configure(r)
    base = load_base("resnet18", "none", SIZE)
    ctx = run_recipe(r, base, root / "run", verbose=0)
    return ctx, root, len(spy.calls)


def test_the_assembled_classifier_predicts_on_images_what_the_head_predicts_on_cached_features(extracted):
    ctx, root, _ = extracted
    files = ctx.train.files + ctx.val.files
    cached = features.extract(ctx.base, files, SIZE, cache=root / "cache")
    head = features.feature_head(ctx.classifier)
    images = tldata.load_images(files, SIZE)
    np.testing.assert_allclose(ctx.classifier.predict(images, verbose=0), head.predict(cached, verbose=0), atol=1e-5)
    # a head that tells the images apart sharply, so that 1e-5 is a strict bound
    dense = ctx.classifier.get_layer("head_dense")
    trained = dense.get_weights()
    centered = cached - cached.mean(axis=0)
    kernel = np.random.default_rng(0).normal(0, 3 / np.linalg.norm(centered, axis=1).mean(), dense.kernel.shape)
    dense.set_weights([kernel, -cached.mean(axis=0) @ kernel])
    on_images, on_features = ctx.classifier.predict(images, verbose=0), head.predict(cached, verbose=0)
    dense.set_weights(trained)
    assert np.ptp(on_images, axis=0).max() > 0.5
    np.testing.assert_allclose(on_images, on_features, atol=1e-5)


def test_the_head_trains_on_features_and_the_run_directory_is_a_finetune_one(extracted):
    ctx, root, _ = extracted
    out = root / "run"
    history = json.loads((out / "history.json").read_text())
    assert history[0]["kind"] == "extract" and len(history[0]["loss"]) == 3
    assert history[0]["loss"][-1] < history[0]["loss"][0]
    metrics = json.loads((out / "metrics.json").read_text())["stages"][0]
    assert metrics["kind"] == "extract" and metrics["val_accuracy"] == pytest.approx(ctx.results[0].val_accuracy)
    assert metrics["val_loss"] == pytest.approx(ctx.results[0].val_loss)
    # the validation metrics from cached features are the classifier's on the images
    ctx.classifier.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, accuracy = ctx.classifier.evaluate(ctx.dataset("val"), verbose=0)
    assert (loss, accuracy) == pytest.approx((metrics["val_loss"], metrics["val_accuracy"]), abs=1e-5)
    model = keras.models.load_model(out / "model.keras", safe_mode=True)
    best = keras.models.load_model(out / "checkpoints" / "best.keras", safe_mode=True)
    # the classifier as trained, and the run's model: the same with its temperature
    assert [layer.name for layer in best.layers] == [layer.name for layer in ctx.classifier.layers] == [
        "image", BASE_LAYER, "head_pool", "head_dense"]
    assert [layer.name for layer in model.layers] == [layer.name for layer in best.layers] + [
        TEMPERATURE_LAYER, "calibrated"]
    images = tldata.load_images(ctx.val.files, SIZE)
    np.testing.assert_allclose(model.predict(images, verbose=0), ctx.served.predict(images, verbose=0), atol=1e-6)
    assert best.input_shape == model.input_shape == (None, *SIZE, 3)
    assert Recipe.load(out / "recipe.toml").stages == [
        Stage("extract", epochs=3, learning_rate=1e-2, schedule="constant", warmup_epochs=0)]


def test_a_second_run_on_the_same_data_does_not_run_the_base_again(extracted, spy, tmp_path, caplog):
    ctx, root, calls = extracted
    assert calls == 1 and len(spy.calls[0]) == 24  # each image once: train and validation together
    # another recipe on the same data: another split, another head
    again = recipe(Path(ctx.recipe.data), root / "cache", seed=7, val_split=0.5, dropout=0.3)
    run_recipe(again, ctx.base, tmp_path / "again", verbose=0)
    assert len(spy.calls) == calls
    assert "from the cache" in caplog.text
    assert len(list((root / "cache").glob("*.npz"))) == 1


def test_calibration_reads_the_features_of_the_cache_and_finds_what_the_images_give(extracted, tmp_path, caplog):
    ctx, root, _ = extracted
    images, cached = tmp_path / "images", tmp_path / "cached"
    images.mkdir(), cached.mkdir()
    calibrate_run(images, ctx.classifier, ctx.train, ctx.val, ctx.recipe)  # no base: from the images
    assert "from the feature cache" not in caplog.text
    calibrate_run(cached, ctx.classifier, ctx.train, ctx.val, ctx.recipe, base=ctx.base)
    assert "from the feature cache" in caplog.text
    summary = json.loads(RunDir(cached).calibration.read_text())
    assert json.loads(RunDir(root / "run").calibration.read_text()) == summary  # the run's own calibration
    from_images = json.loads(RunDir(images).calibration.read_text())
    assert summary.keys() == from_images.keys()
    for name, value in from_images.items():
        assert summary[name] == (pytest.approx(value, rel=1e-4, abs=1e-5) if isinstance(value, float) else value), name
    np.testing.assert_allclose(np.load(RunDir(cached).reference), np.load(RunDir(images).reference), atol=2e-3)


def test_the_command_line_reuses_the_cache(tiny_images, tmp_path, spy):
    options = ["--base", "lenet5", "--weights", "none", "--data", str(tiny_images), "--image-size", "32",
               "--epochs", "1", "--cache", str(tmp_path / "cache"), "--seed", "3"]
    before = len(spy.calls)
    main(["extract", *options, "--out", str(tmp_path / "one")])
    main(["extract", *options, "--out", str(tmp_path / "two")])
    assert len(spy.calls) == before + 1
    for run in ("one", "two"):
        assert (tmp_path / run / "model.keras").is_file()
        assert Recipe.load(tmp_path / run / "recipe.toml").stages[0].kind == "extract"


@pytest.fixture(scope="module")
def lenet():
    return load_base("lenet5", "none", (32, 32))


def test_changed_contents_or_image_size_invalidate_the_cache_and_moved_files_do_not(tiny_images, tmp_path, spy, lenet):
    folder = Path(shutil.copytree(tiny_images, tmp_path / "images"))
    files = folders.scan(folder).files
    cache = tmp_path / "cache"
    first = features.extract(lenet, files, (32, 32), cache=cache)
    before = len(spy.calls)

    moved = folder / "blue" / "renamed.png"
    files[0].rename(moved)
    np.testing.assert_array_equal(features.extract(lenet, [moved, *files[1:]], (32, 32), cache=cache), first)
    assert len(spy.calls) == before  # keyed by contents, not names

    image = tldata.load_image(moved, (32, 32)).astype(np.uint8)
    image[0, 0] = 255 - image[0, 0]
    Image.fromarray(image).save(moved)
    changed = features.extract(lenet, [moved, *files[1:]], (32, 32), cache=cache)
    assert len(spy.calls) == before + 1
    np.testing.assert_array_equal(changed[1:], first[1:])

    larger = load_base("lenet5", "none", (36, 36))
    larger.model.set_weights(lenet.model.get_weights())
    features.extract(larger, files[1:], (36, 36), cache=cache)
    assert len(spy.calls) == before + 2
    assert len(list(cache.glob("*.npz"))) == 3


def test_the_key_follows_the_weights_but_not_names_or_trainable_flags(lenet):
    fingerprint = features.model_fingerprint(lenet.model)
    lenet.model.name = "renamed"
    lenet.model.trainable = False
    assert features.model_fingerprint(lenet.model) == fingerprint
    lenet.model.trainable = True
    layer = lenet.model.get_layer("c1")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + 1e-6])
    assert features.model_fingerprint(lenet.model) != fingerprint
    layer.set_weights([kernel, bias])


def test_a_failed_write_leaves_no_partial_entry_and_a_broken_one_is_replaced(tiny_images, tmp_path, monkeypatch,
                                                                             lenet, spy):
    files = folders.scan(tiny_images).files[:6]
    cache = tmp_path / "cache"
    save = np.savez

    def interrupted(file, **arrays):
        Path(file).write_bytes(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        features.extract(lenet, files, (32, 32), cache=cache)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(np, "savez", save)

    good = features.extract(lenet, files, (32, 32), cache=cache)
    [entry] = cache.glob("*.npz")
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name, entry.with_suffix(".json").name])
    entry.write_bytes(entry.read_bytes()[:100])  # damaged behind our back
    before = len(spy.calls)
    np.testing.assert_array_equal(features.extract(lenet, files, (32, 32), cache=cache), good)
    assert len(spy.calls) == before + 1
    with np.load(entry) as stored:
        assert stored["features"].shape == (6, 16)


def test_augmentation_is_not_cached_the_head_trains_on_the_frozen_base(tiny_images, tmp_path, spy, caplog):
    r = recipe(tiny_images, tmp_path / "cache", augment=True, base="lenet5", image_size=32,
               stages=[Stage("extract", epochs=1, learning_rate=1e-2)])
    configure(r)
    base = load_base("lenet5", "none", (32, 32))
    before = [w.copy() for w in base.model.get_weights()]
    before_calls = len(spy.calls)
    ctx = run_recipe(r, base, tmp_path / "run", verbose=0)
    out = caplog.text
    assert "augment=light" in out and "not cached" in out
    assert len(spy.calls) == before_calls and not (tmp_path / "cache").exists()
    assert all(np.array_equal(a, b) for a, b in zip(before, ctx.classifier.get_layer(BASE_LAYER).get_weights()))
    assert len(ctx.results[0].history["loss"]) == 1


def test_cache_folder_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("TLKIT_CACHE", raising=False)
    assert features.cache_dir() == Path.home() / ".cache" / "tlkit" / "features"
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path))
    assert features.cache_dir() == tmp_path / "features"
    assert features.cache_dir(tmp_path / "mine") == tmp_path / "mine"


@pytest.mark.parametrize("pooling, layer, width", [("max", keras.layers.GlobalMaxPooling2D, 16),
                                                    ("flatten", keras.layers.Flatten, 5 * 5 * 16)])
def test_the_head_pooling_is_the_cached_pooling(tiny_images, tmp_path, spy, pooling, layer, width):
    r = recipe(tiny_images, tmp_path / "cache", base="lenet5", image_size=32, pooling=pooling,
               stages=[Stage("extract", epochs=1, learning_rate=1e-2)])
    configure(r)
    ctx = run_recipe(r, load_base("lenet5", "none", (32, 32)), tmp_path / "run", verbose=0)
    assert isinstance(ctx.classifier.get_layer("head_pool"), layer)
    assert ctx.classifier.get_layer("head_dense").kernel.shape == (width, 3)
    files = ctx.train.files + ctx.val.files
    cached = features.extract(ctx.base, files, (32, 32), pooling=pooling, cache=tmp_path / "cache")
    assert cached.shape == (24, width)
    head = features.feature_head(ctx.classifier)
    np.testing.assert_allclose(ctx.classifier.predict(tldata.load_images(files, (32, 32), 1), verbose=0),
                               head.predict(cached, verbose=0), atol=1e-5)
    # each pooling is an entry of its own
    before = len(spy.calls)
    features.extract(ctx.base, files, (32, 32), pooling="avg", cache=tmp_path / "cache")
    assert len(spy.calls) == before + 1 and len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_an_unknown_pooling_is_named():
    from tlkit.errors import TlkitError

    with pytest.raises(TlkitError, match="unknown pooling 'flat': did you mean flatten"):
        resolve(Recipe(pooling="flat", stages=[Stage("head")]))
