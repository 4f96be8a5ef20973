"""Local bases: a .keras file cut before its classifier (or at --base-layer), a run directory of
`tlkit finetune` or `tlkit train`, a base directory (base.keras + blocks.json), and a cut
registry base."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tlkit.bases import load_base
from tlkit.cli import main
from tlkit.engine.classifier import BASE_LAYER
from tlkit.engine.strategy import configure
from tlkit.errors import TlkitError
from tlkit.jobs import run_recipe, train
from tlkit.models.preprocessing import ImagePreprocessing
from tlkit.recipe.schema import Recipe, Stage
from tlkit.rundir.load import load_run


def small_cnn(vector_top: bool = False) -> keras.Model:
    """[0, 255] images -> unit scaling -> two conv stages -> pooling -> (a dense layer ->) softmax."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = ImagePreprocessing("unit", name="preprocessing")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stage1_conv")(x)
    x = keras.layers.BatchNormalization(name="stage1_bn")(x)
    x = keras.layers.ReLU(name="stage1_relu")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stage2_conv")(x)
    x = keras.layers.ReLU(name="stage2_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if vector_top:
        x = keras.layers.Dense(6, activation="relu", name="code")(x)
    x = keras.layers.Dense(5, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name="small_cnn")


# Named so that JSON's sorted keys put them out of the model's order.
BLOCKS = {"z_early": ["stage1_conv", "stage1_bn", "stage1_relu"], "a_late": ["stage2_conv", "stage2_relu"]}


def images(n: int = 3, side: int = 32) -> np.ndarray:
    return np.random.default_rng(2).uniform(0, 255, (n, side, side, 3)).astype("float32")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("file_base")
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.save(folder / "small_cnn.keras")
    return folder / "small_cnn.keras", model


def test_keras_file_is_cut_before_its_classifier(model_file):
    path, model = model_file
    base = load_base(str(path))
    assert (base.source, base.input_size, base.model.output_shape) == ("file", (32, 32), (None, 8, 8, 8))
    assert base.model.layers[-1].name == "stage2_relu"
    assert [b.name for b in base.blocks] == ["base"]  # no blocks.json beside it
    features = keras.Model(model.input, model.get_layer("stage2_relu").output)
    np.testing.assert_allclose(base.model(images()), features(images()), rtol=1e-6)

    cut = load_base(str(path), base_layer="stage1_relu")
    assert cut.model.output_shape == (None, 16, 16, 4) and cut.model.layers[-1].name == "stage1_relu"
    bigger = load_base(str(path), image_size=(48, 48))
    assert bigger.model.input_shape == (None, 48, 48, 3) and bigger.model.output_shape == (None, 12, 12, 8)
    assert bigger.model.get_layer("stage2_conv").kernel is not None
    np.testing.assert_array_equal(bigger.model.get_layer("stage2_conv").kernel.numpy(),
                                  model.get_layer("stage2_conv").kernel.numpy())


def test_a_model_of_vectors_is_cut_before_its_last_dense_layer(tmp_path):
    small_cnn(vector_top=True).save(tmp_path / "vectors.keras")
    # the last feature map is still the cut: what comes after it is the classifier
    assert load_base(str(tmp_path / "vectors.keras")).model.layers[-1].name == "stage2_relu"
    inputs = keras.Input((8, 8, 3), name="image")
    hidden = keras.layers.Dense(3, name="hidden")(keras.layers.Flatten(name="flatten")(inputs))
    keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Dropout(0.5, name="drop")(hidden))).save(
        tmp_path / "mlp.keras")
    assert load_base(str(tmp_path / "mlp.keras")).model.layers[-1].name == "drop"


def test_blocks_json_beside_a_file_gives_its_blocks_in_model_order(model_file, tmp_path):
    path, model = model_file
    model.save(tmp_path / "with_blocks.keras")
    (tmp_path / "blocks.json").write_text(json.dumps(BLOCKS, sort_keys=True))
    base = load_base(str(tmp_path / "with_blocks.keras"))
    assert [(b.name, b.layers) for b in base.blocks] == [(k, tuple(v)) for k, v in BLOCKS.items()]
    cut = load_base(str(tmp_path / "with_blocks.keras"), base_layer="stage1_bn")
    assert [(b.name, b.layers) for b in cut.blocks] == [("z_early", ("stage1_conv", "stage1_bn"))]
    (tmp_path / "blocks.json").write_text(json.dumps({"only": ["stage1_conv"]}))
    with pytest.raises(TlkitError, match="blocks.json does not fit the model beside it: layer .stage1_bn. .* has weights but no block"):
        load_base(str(tmp_path / "with_blocks.keras"))


@pytest.fixture(scope="module")
def finetune_run(model_file, tiny_images, tmp_path_factory):
    """A finetune run on the .keras file base with a two-block map."""
    path, model = model_file
    folder = tmp_path_factory.mktemp("blocks")
    model.save(folder / "small_cnn.keras")
    (folder / "blocks.json").write_text(json.dumps(BLOCKS))
    out = tmp_path_factory.mktemp("finetune") / "run"
    recipe = Recipe(stages=[Stage("head", epochs=1), Stage("finetune", epochs=1, unfreeze=1)],
                    base=str(folder / "small_cnn.keras"), data=str(tiny_images), batch_size=8, seed=1)
    configure(recipe)
    return run_recipe(recipe, load_base(recipe.base), out, verbose=0), out


def test_a_finetune_run_is_a_base_with_its_trained_weights_and_blocks(finetune_run):
    ctx, out = finetune_run
    base = load_base(str(out))
    assert (base.name, base.source, base.input_size) == ("run", "run", (32, 32))
    assert [b.name for b in base.blocks] == ["z_early", "a_late"]
    trained = ctx.classifier.get_layer(BASE_LAYER)
    for layer in trained.layers:
        for ours, theirs in zip(base.model.get_layer(layer.name).weights, layer.weights):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # and it fine-tunes again, from the command line's path to it
    configure(Recipe())
    again = run_recipe(Recipe(stages=[Stage("head", epochs=1)], base=str(out), data=ctx.recipe.data, batch_size=8),
                       base, out.parent / "again", verbose=0)
    assert Recipe.load(out.parent / "again" / "recipe.toml").base == str(out)
    assert again.classifier.get_layer(BASE_LAYER).output_shape == (None, 8, 8, 8)


@pytest.mark.integration
def test_cli_base_layer_round_trips_in_the_run_recipe(model_file, tiny_images, tmp_path):
    path, _ = model_file
    main(["finetune", "--base", str(path), "--base-layer", "stage1_relu", "--data", str(tiny_images),
          "--out", str(tmp_path / "first"), "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "1"])
    recipe = Recipe.load(tmp_path / "first" / "recipe.toml")
    assert (recipe.base, recipe.base_layer) == (str(path), "stage1_relu")
    main(["finetune", "--recipe", str(tmp_path / "first" / "recipe.toml"), "--out", str(tmp_path / "again")])
    for run in ("first", "again"):
        assert load_run(tmp_path / run).model.get_layer(BASE_LAYER).output.shape == (None, 16, 16, 4)


def test_a_train_run_is_its_zoo_model_without_the_trained_top(tiny_images, tmp_path):
    out = tmp_path / "lenet"
    ctx = train("lenet5", data=str(tiny_images), out=out, stages={"train": {"epochs": 1}}, batch_size=8, verbose=0)
    base = load_base(str(out))
    assert (base.source, base.input_size, [b.name for b in base.blocks]) == ("zoo", (32, 32), ["c1", "c3"])
    assert base.model.output_shape == (None, 5, 5, 16)
    for name in ("c1", "c3"):
        np.testing.assert_array_equal(base.model.get_layer(name).kernel.numpy(), ctx.model.get_layer(name).kernel.numpy())


def test_a_base_directory_is_taken_whole(tmp_path):
    """The autoencoder path's contract: base.keras, a features model (here one that ends in a
    Dense code, which a .keras file would lose), and its blocks.json."""
    encoder = small_cnn(vector_top=True)
    encoder = keras.Model(encoder.input, encoder.get_layer("code").output, name="encoder")
    encoder.save(tmp_path / "base.keras")
    (tmp_path / "blocks.json").write_text(json.dumps({**BLOCKS, "code": ["code"]}))
    base = load_base(str(tmp_path))
    assert base.model.output_shape == (None, 6)
    assert [b.name for b in base.blocks] == ["z_early", "a_late", "code"]
    np.testing.assert_allclose(base.model(images()), encoder(images()), rtol=1e-6)


def test_a_registry_base_cut_at_a_layer_keeps_the_blocks_up_to_it():
    base = load_base("vgg16", "none", (32, 32), base_layer="block4_pool")
    assert base.model.output_shape == (None, 2, 2, 512)
    assert [b.name for b in base.blocks] == ["block1", "block2", "block3", "block4"]
    with pytest.raises(TlkitError, match="did you mean block4_pool"):
        load_base("vgg16", "none", (32, 32), base_layer="block4_pol")


def test_local_base_errors(model_file, tmp_path):
    path, _ = model_file
    with pytest.raises(TlkitError, match="base runs/nope does not exist"):
        load_base("runs/nope")
    with pytest.raises(TlkitError, match="holds no base"):
        load_base(str(tmp_path))
    with pytest.raises(TlkitError, match="brings its own weights: drop --weights none"):
        load_base(str(path), "none")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(TlkitError, match="cannot load .*broken.keras as a Keras model"):
        load_base(str(tmp_path / "broken.keras"))
    with pytest.raises(TlkitError, match="unknown base 'vgg61': did you mean .*vgg16"):
        load_base("vgg61")
