"""The convolutional autoencoder, `tlkit pretrain`, and its encoder as a base."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tlkit.rundir.load  # noqa: F401  (registers tlkit's layers for safe-mode loading)
from tlkit.bases import Base
from tlkit.cli import main
from tlkit.data import folders, splits
from tlkit.data import pipeline as tldata
from tlkit.engine.classifier import BASE_LAYER
from tlkit.engine.strategy import configure
from tlkit.errors import TlkitError
from tlkit.jobs import finetune, resolve, run_recipe
from tlkit.models.autoencoder import conv_autoencoder, corrupt, encoder_model
from tlkit.models.blocks import Block
from tlkit.models.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D
from tlkit.recipe.kinds import stage_params
from tlkit.recipe.schema import Recipe, Stage
from tlkit.stages.autoencoder import reconstruction_grid


def images(n=4, size=32, channels=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, channels)).astype("float32")


@pytest.mark.parametrize("decoder, upsampling",
                         [("unpool", MaxUnpooling2D), ("transpose", keras.layers.Conv2DTranspose)])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_reconstruction_has_the_input_shape_through_either_decoder(decoder, upsampling, channels):
    autoencoder = conv_autoencoder((32, 48, channels), decoder=decoder)
    assert autoencoder.output_shape == (None, 32, 48, channels)
    assert sum(isinstance(layer, upsampling) for layer in autoencoder.layers) == 3
    pools = [layer for layer in autoencoder.layers if layer.name.endswith("_pool")]
    assert len(pools) == 3 and all(isinstance(p, MaxPoolingWithArgmax2D) == (decoder == "unpool") for p in pools)
    # encoder: (9c + 1) 32 + (9*32 + 1) 64 + (9*64 + 1) 128; decoder: 128->64, 64->32, 32->32, 32->c, 3x3
    encoder = (9 * channels + 1) * 32 + 18_496 + 73_856
    assert autoencoder.count_params() == encoder + 73_792 + 18_464 + 9_248 + 9 * 32 * channels + channels
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 48, channels)).astype("float32")
    out = autoencoder.predict(x, verbose=0)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    code = encoder_model(autoencoder)
    assert code.output_shape == (None, 4, 6, 128) and code.count_params() == encoder


def windows_max(x: np.ndarray) -> np.ndarray:
    """Each 2x2 window's maximum, repeated over the window."""
    b, h, w, c = x.shape
    top = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    return top.repeat(2, axis=1).repeat(2, axis=2)


def test_the_unpool_decoder_unpools_with_the_switches_of_its_own_encoder():
    autoencoder = conv_autoencoder((16, 16, 1), filters=(4, 4), decoder="unpool")
    names = ["block1_conv", "block2_conv", "decode2_unpool", "decode1_unpool"]
    conv1, conv2, unpooled2, unpooled1 = keras.Model(
        autoencoder.input, [autoencoder.get_layer(name).output for name in names])(images(2, 16, 1))
    conv1, conv2, unpooled2, unpooled1 = (np.asarray(t) for t in (conv1, conv2, unpooled2, unpooled1))
    # the code goes back to where block2's maxima were, and nothing else is filled in
    np.testing.assert_array_equal(unpooled2, np.where(conv2 == windows_max(conv2), conv2, 0))
    # one level up, block1's switches choose the positions
    assert np.count_nonzero(unpooled1) > 0
    assert np.all((unpooled1 == 0) | (conv1 == windows_max(conv1)))
    assert np.all(np.count_nonzero(unpooled1.reshape(2, 8, 2, 8, 2, 4), axis=(2, 4)) <= 1)


def test_sides_must_halve_evenly():
    with pytest.raises(ValueError, match="multiples of 8"):
        conv_autoencoder((30, 32, 3))


def test_corruption_adds_noise_on_the_unit_scale_seeded_or_fresh():
    x = np.full((64, 16, 16, 1), 128.0, "float32")
    added = (np.asarray(corrupt(x, 0.2, tf.constant([0, 1], tf.int64))) - x) / 255
    # per-image std drawn from [0, 0.2]: on average 0.1, on the [0, 1] scale (not 0.2 / 255, not 51)
    stds = added.reshape(64, -1).std(axis=1)
    assert 0.0 <= stds.min() and stds.max() <= 0.21 and stds.mean() == pytest.approx(0.1, abs=0.02)
    np.testing.assert_array_equal(corrupt(x, 0.2, tf.constant([0, 1], tf.int64)),
                                  corrupt(x, 0.2, tf.constant([0, 1], tf.int64)))
    assert not np.array_equal(corrupt(x, 0.2), corrupt(x, 0.2))
    assert np.asarray(corrupt(np.zeros_like(x), 0.5)).min() == 0  # clipped to the image range
    # the model itself adds no noise: its encoder as a base sees what it is given
    autoencoder = conv_autoencoder((32, 32, 3))
    assert not any(isinstance(layer, keras.layers.GaussianNoise) for layer in autoencoder.layers)


@pytest.fixture(scope="module")
def pretrained(tiny_images, tmp_path_factory):
    """`tlkit pretrain` on the tiny images in a flat folder with one sub-folder: 5 epochs, denoising."""
    root = tmp_path_factory.mktemp("pretrain")
    flat = root / "unlabeled"
    flat.mkdir()
    for path in sorted(tiny_images.rglob("*.png")):
        shutil.copy(path, flat / f"{path.parent.name}-{path.name}")
    (flat / "more").mkdir()
    for path in sorted(flat.glob("red-*.png"))[:4]:
        path.rename(flat / "more" / path.name)
    out = root / "run"
    main(["pretrain", "--data", str(flat), "--out", str(out), "--image-size", "32", "--epochs", "5",
          "--batch-size", "4", "--noise", "0.05", "--lr", "3e-3", "--val-split", "0.2"])
    return out


def test_pretrain_reduces_the_reconstruction_error_and_writes_a_base_directory(pretrained):
    history = json.loads((pretrained / "history.json").read_text())[0]
    assert history["kind"] == "autoencoder" and len(history["loss"]) == 5
    assert all(later < earlier for earlier, later in zip(history["loss"], history["loss"][1:]))
    assert history["loss"][-1] < 0.9 * history["loss"][0]
    assert history["val_loss"][-1] < history["val_loss"][0]
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert metrics["train_images"] + metrics["val_images"] == 24 and metrics["val_images"] == 5
    assert metrics["stages"][0]["val_accuracy"] is None
    assert metrics["stages"][0]["val_loss"] == pytest.approx(history["val_loss"][-1], rel=1e-4)
    assert json.loads((pretrained / "blocks.json").read_text()) == {
        f"block{i}": [f"block{i}_conv", f"block{i}_pool"] for i in (1, 2, 3)}
    stage = Recipe.load(pretrained / "recipe.toml").stages[0]
    assert (stage.kind, stage.decoder, stage.noise, stage.epochs) == ("autoencoder", "unpool", 0.05, 5)
    for name in ("base.keras", "autoencoder.keras", "reconstructions.png"):
        assert (pretrained / name).is_file()


def title_band(grid: np.ndarray, columns: int, tile: int, gap: int = 4) -> list[bool]:
    """Whether each column's title band (above the first tile) has dark pixels: text."""
    return [bool((grid[:40, c * (tile + gap):c * (tile + gap) + tile] < 128).any()) for c in range(columns)]


def test_the_grid_shows_clean_noisy_and_the_reconstruction_of_noisy_under_titles(pretrained):
    grid = np.asarray(Image.open(pretrained / "reconstructions.png"))
    # 5 validation images, 32 px enlarged 3x to 96, 4 px gaps, a 40 px title band;
    # columns: clean, noisy, reconstruction of noisy
    assert grid.shape == (40 + 5 * 96 + 4 * 4, 3 * 96 + 2 * 4, 3)
    assert title_band(grid, 3, 96) == [True] * 3
    autoencoder = keras.models.load_model(pretrained / "autoencoder.keras", safe_mode=True)
    x = images(2)
    made = reconstruction_grid(autoencoder, x, noise=0.1)
    tile = lambda row, col: made[40 + row * 100:40 + row * 100 + 96:3, col * 100:col * 100 + 96:3]  # noqa: E731
    np.testing.assert_array_equal(tile(1, 0), np.round(x[1]).astype(np.uint8))
    noisy = tile(1, 1).astype(float)
    assert 0.05 < (noisy - x[1]).std() / 255 < 0.15
    reconstruction = autoencoder.predict(noisy[None].astype("float32"), verbose=0)[0]
    # the noisy tile is the noisy input rounded to uint8, which moves a few pooling switches
    assert np.abs(tile(1, 2) - np.round(reconstruction * 255)).mean() < 1
    # without noise: clean and reconstruction
    plain = reconstruction_grid(autoencoder, x)
    assert plain.shape == (40 + 2 * 96 + 4, 2 * 96 + 4, 3) and title_band(plain, 2, 96) == [True] * 2


def encoder_as_base(folder: Path) -> Base:
    """The base directory loaded by hand (tlkit.bases learns to load it by `--base RUN`)."""
    model = keras.models.load_model(folder / "base.keras", safe_mode=True)
    blocks = [Block(name, tuple(layers)) for name, layers in json.loads((folder / "blocks.json").read_text()).items()]
    return Base("conv_encoder", model, blocks, tuple(model.input_shape[1:3]), "autoencoder", str(folder))


def test_the_encoder_reloads_in_safe_mode_with_the_same_features_and_fine_tunes(pretrained, tiny_images, tmp_path):
    autoencoder = keras.models.load_model(pretrained / "autoencoder.keras", safe_mode=True)
    base = encoder_as_base(pretrained)
    assert [layer.name for layer in base.model.layers][:2] == ["image", "preprocessing"]
    x = images(3)
    np.testing.assert_allclose(base.model.predict(x, verbose=0), encoder_model(autoencoder).predict(x, verbose=0),
                               atol=1e-6)

    recipe = Recipe(stages=[Stage("head", epochs=1, learning_rate=1e-2),
                            Stage("finetune", epochs=1, learning_rate=1e-3, unfreeze=1)],
                    data=str(tiny_images), batch_size=8, dropout=0.0)
    configure(recipe)
    pretrained_weights = {layer.name: [w.copy() for w in layer.get_weights()] for layer in base.model.layers}
    ctx = run_recipe(recipe, base, tmp_path / "run", verbose=0)
    tuned = ctx.classifier.get_layer(BASE_LAYER)
    for layer in tuned.layers:
        same = all(np.array_equal(a, b) for a, b in zip(pretrained_weights[layer.name], layer.get_weights()))
        assert same == (not layer.name.startswith("block3_") or not layer.weights), layer.name


@pytest.mark.integration
def test_an_autoencoder_stage_makes_the_encoder_the_base_of_the_stages_after_it(tiny_images, tmp_path):
    recipe = Recipe(stages=[Stage("autoencoder", epochs=2, learning_rate=3e-3, decoder="transpose", channels=1),
                            Stage("head", epochs=1, learning_rate=1e-2)],
                    data=str(tiny_images), image_size=32, batch_size=8, dropout=0.0)
    ctx = finetune(recipe=recipe, out=tmp_path / "run", verbose=0)  # no base: the recipe pretrains its own
    out = tmp_path / "run"
    assert ctx.base.source == "autoencoder" and ctx.base.channels == 1
    assert ctx.model.input_shape == (None, 32, 32, 1)
    encoder = keras.models.load_model(out / "autoencoder" / "base.keras", safe_mode=True)
    for layer in encoder.layers:
        for a, b in zip(layer.get_weights(), ctx.model.get_layer(BASE_LAYER).get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)  # the head stage left the pretrained encoder as it was
    assert (out / "blocks.json").read_text() == (out / "autoencoder" / "blocks.json").read_text()
    metrics = json.loads((out / "metrics.json").read_text())["stages"]
    assert [s["kind"] for s in metrics] == ["autoencoder", "head"]
    assert metrics[0]["val_accuracy"] is None and 0 <= metrics[1]["val_accuracy"] <= 1
    assert (out / "autoencoder" / "reconstructions.png").is_file()
    assert keras.models.load_model(out / "model.keras", safe_mode=True).input_shape == (None, 32, 32, 1)


def test_scan_unlabeled_finds_images_in_the_folder_and_its_sub_folders(tiny_images, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_images / "red", folder / "a" / "b")
    shutil.copy(tiny_images / "blue" / "0.png", folder / "loose.png")
    (folder / "notes.txt").write_text("not an image")
    found = folders.scan_unlabeled(folder)
    assert len(found) == 9 and found.classes == ["unlabeled"] and set(found.labels) == {0}
    assert folder / "loose.png" in found.files
    train, val = splits.split(found, 0.25, seed=0)
    assert (len(train), len(val)) == (7, 2)
    (folder / "a" / "b" / "0.png").write_bytes(b"")
    with pytest.raises(TlkitError, match="0.png: empty file"):
        folders.scan_unlabeled(folder)
    assert len(folders.scan_unlabeled(folder, skip_bad=True)) == 8
    (folder / "empty").mkdir()
    with pytest.raises(TlkitError, match="no images in"):
        folders.scan_unlabeled(folder / "empty")


def test_autoencoder_settings_are_validated_and_stay_out_of_other_stages():
    with pytest.raises(TlkitError, match="head stage: unknown key 'noise': choose one of: epochs, learning_rate"):
        stage_params(Stage("head", noise=0.1))
    with pytest.raises(TlkitError, match="autoencoder stage: unknown decoder 'unpoll': did you mean unpool"):
        stage_params(Stage("autoencoder", decoder="unpoll"))
    with pytest.raises(TlkitError, match="noise must be >= 0"):
        stage_params(Stage("autoencoder", noise=-0.1))
    with pytest.raises(TlkitError, match="channels = 2 is not one of 1, 3 or left out"):
        stage_params(Stage("autoencoder", channels=2))
    recipe = resolve(Recipe(stages=[Stage("autoencoder", data="unlabeled"), Stage("head")]))
    text = recipe.to_toml()
    assert "decoder" in text and text.count("noise") == 1
    assert Recipe.from_toml(text).stages == [
        Stage("autoencoder", epochs=20, learning_rate=1e-3, schedule="constant", warmup_epochs=0, decoder="unpool",
              noise=0.0, data=str(Path("unlabeled").resolve())),
        Stage("head", epochs=5, learning_rate=1e-3, schedule="constant", warmup_epochs=0)]


@pytest.mark.parametrize("args, message", [
    (["--image-size", "30"], "error: the encoder halves the image 3 times: its sides must be multiples of 8, "
                             "not 30x30; pass --image-size N with N a multiple of 8"),
    (["--recipe", "classic"], "error: recipe classic is not one autoencoder stage: run recipes with more stages "
                              "through `tlkit finetune --recipe`"),
])
def test_pretrain_errors_are_one_line(tiny_images, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        main(["pretrain", "--data", str(tiny_images), "--out", str(tmp_path / "run"), *args])
    assert exit.value.code == 2
    assert capsys.readouterr().err == message + "\n"


@pytest.mark.integration
def test_an_autoencoder_base_gets_flatten_pooling_by_default_recorded_and_overridable(pretrained, tiny_images,
                                                                                       tmp_path, capsys):
    assert json.loads((pretrained / "base.json").read_text())["pooling"] == "flatten"
    fast = ["--data", str(tiny_images), "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "0"]
    capsys.readouterr()
    main(["finetune", "--base", str(pretrained), "--out", str(tmp_path / "default"), *fast])
    said = capsys.readouterr()
    assert "head pooling: flatten, as base" in said.out + said.err and "--pooling overrides" in said.out + said.err
    assert Recipe.load(tmp_path / "default" / "recipe.toml").pooling == "flatten"
    assert any(isinstance(layer, keras.layers.Flatten)
               for layer in keras.models.load_model(tmp_path / "default" / "model.keras", compile=False).layers)
    main(["finetune", "--base", str(pretrained), "--out", str(tmp_path / "avg"), "--pooling", "avg", *fast])
    assert Recipe.load(tmp_path / "avg" / "recipe.toml").pooling == "avg"
    # a base without metadata keeps the default
    plain = tmp_path / "plain"
    shutil.copytree(pretrained, plain)
    (plain / "base.json").unlink()
    main(["finetune", "--base", str(plain), "--out", str(tmp_path / "plain_run"), *fast])
    assert Recipe.load(tmp_path / "plain_run" / "recipe.toml").pooling == "avg"


DIGITS = Path(__file__).resolve().parents[2] / "data_samples" / "digits"


def digits_subset(root: Path, per_class: int) -> Path:
    for folder in sorted(DIGITS.iterdir()):
        (root / folder.name).mkdir(parents=True)
        for path in sorted(folder.glob("*.png"))[:per_class]:
            shutil.copy(path, root / folder.name / path.name)
    return root


@pytest.mark.integration
def test_a_denoising_autoencoder_validates_on_noisy_inputs_and_reconstructs_clean_ones(tmp_path):
    data = digits_subset(tmp_path / "digits", 20)
    out = tmp_path / "ae"
    main(["pretrain", "--data", str(data), "--out", str(out), "--image-size", "32", "--channels", "1",
          "--epochs", "6", "--noise", "0.2", "--batch-size", "16"])
    history = json.loads((out / "history.json").read_text())[0]
    # validation measures the task training does (noisy in, clean out), so the two track each other
    assert history["val_loss"][-1] < 2 * history["loss"][-1]
    assert history["val_loss"][-1] < history["val_loss"][0]
    autoencoder = keras.models.load_model(out / "autoencoder.keras", safe_mode=True)
    x = tldata.load_images(sorted(data.rglob("*.png"))[::4], (32, 32), 1)
    noisy = np.clip(x + 255 * np.random.default_rng(1).normal(0, 0.2, x.shape), 0, 255).astype("float32")
    clean_mse = np.mean((autoencoder.predict(x, verbose=0) - x / 255) ** 2)
    noisy_mse = np.mean((autoencoder.predict(noisy, verbose=0) - x / 255) ** 2)
    assert clean_mse < 3 * noisy_mse


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands(*starts: str) -> list[list[str]]:
    """The README's command lines that begin with `tlkit START`, as argument lists, comments cut."""
    lines = [line.split("#")[0].split() for line in README.read_text().splitlines() if line.startswith("    tlkit ")]
    return [line[1:] for line in lines if line[1] in starts]


def run_readme_pretrain_then_finetune(tmp_path, monkeypatch, extra_pretrain=(), extra_finetune=(), per_class=None):
    """The README's `tlkit pretrain` and `tlkit finetune --base runs/ae` lines, as written, in
    tmp_path (with data_samples/digits there, or a subset of it); the finetune run's accuracy."""
    (tmp_path / "data_samples").mkdir()
    if per_class:
        digits_subset(tmp_path / "data_samples" / "digits", per_class)
    else:
        (tmp_path / "data_samples" / "digits").symlink_to(DIGITS)
    monkeypatch.chdir(tmp_path)
    pretrain = next(c for c in readme_commands("pretrain") if "--noise" in c)
    finetune = next(c for c in readme_commands("finetune") if c[1:3] == ["--base", "runs/ae"])
    main([*pretrain, *extra_pretrain])
    main([*finetune, "--out", "runs/ft", *extra_finetune])
    metrics = json.loads((tmp_path / "runs" / "ft" / "metrics.json").read_text())
    return metrics["stages"][-1]["val_accuracy"]


@pytest.mark.integration
def test_the_readme_pretrain_then_finetune_fast_settings_beat_chance(tmp_path, monkeypatch):
    fast = next(c for c in readme_commands("pretrain") if "--epochs" in c)
    epochs = fast[fast.index("--epochs"):fast.index("--epochs") + 2]
    accuracy = run_readme_pretrain_then_finetune(tmp_path, monkeypatch, epochs, per_class=30)
    assert accuracy >= 0.6  # chance is 0.1; average pooling of the code stayed near it


@pytest.mark.slow
def test_the_readme_pretrain_then_finetune_reach_090_on_the_digits_as_written(tmp_path, monkeypatch):
    assert run_readme_pretrain_then_finetune(tmp_path, monkeypatch) >= 0.9
