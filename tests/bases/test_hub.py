"""TF Hub bases: a TF2 SavedModel in hub layout, built here, through TFSMLayer and the engine.

Its variables stay bit-identical through `head`, change through `finetune` (non-trainable ones
excepted), the fine-tuned classifier reloads, predicts and exports, and `tlkit finetune --base
hub:PATH` runs from the command line.
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlkit.models.layers
from tlkit.bases import load_base
from tlkit.cli import main
from tlkit.engine.classifier import BASE_LAYER
from tlkit.engine.strategy import configure
from tlkit.errors import TlkitError
from tlkit.evaluation.predict import predict
from tlkit.exporters import export
from tlkit.jobs import run_recipe
from tlkit.recipe.kinds import STAGES, stage_params
from tlkit.recipe.schema import Recipe, Stage
from tlkit.rundir.load import load_run

FEATURES = 8


class TinyHubModel(tf.Module):
    """What a TF2 image feature-vector model on tfhub.dev is: `__call__(images, training=False)`
    on [B, H, W, 3] floats in [0, 1] returning [B, d] features, traced for both values of
    `training`, its variables (trainable and not), and a serving_default signature."""

    def __init__(self):
        super().__init__()
        rng = tf.random.Generator.from_seed(0)
        self.kernel = tf.Variable(rng.normal([3, 3, 3, FEATURES]) * 0.5, name="conv/kernel")
        self.bias = tf.Variable(tf.fill([FEATURES], 0.05), name="conv/bias")
        self.moving_mean = tf.Variable(tf.fill([FEATURES], 0.1), trainable=False, name="bn/moving_mean")

    @tf.function
    def __call__(self, images, training=False):
        x = tf.nn.conv2d(images, self.kernel, 2, "SAME") + self.bias
        return tf.reduce_mean(tf.nn.relu(x - self.moving_mean), axis=[1, 2])


class SignatureOnlyModel(tf.Module):
    """A SavedModel with only a serving_default signature, for 16x16 images, returning a dict."""

    def __init__(self):
        super().__init__()
        self.scale = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
    def features(self, images):
        return {"feature_vector": tf.reduce_mean(images, axis=[1, 2]) * self.scale}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "tiny_feature_vector"
    module = TinyHubModel()
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    module.__call__.get_concrete_function(spec, True)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__.get_concrete_function(spec, False)})
    return path


def hub_variables(model: keras.Model) -> dict[str, np.ndarray]:
    """The SavedModel's variables as the classifier holds them, copied."""
    layer = model.get_layer(BASE_LAYER).get_layer("hub")
    return {v.name: np.array(v.numpy()) for v in layer.weights}


def images(n: int = 4, side: int = 32) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (n, side, side, 3)).astype("float32")


def test_hub_base_is_the_savedmodel_on_scaled_images(saved_model):
    reference = tf.saved_model.load(str(saved_model))
    x = images()
    base = load_base(f"hub:{saved_model}", image_size=(32, 32))
    assert (base.source, base.input_size, base.model.output_shape) == ("hub", (32, 32), (None, FEATURES))
    assert [b.name for b in base.blocks] == ["base"] and "hub" in base.blocks[0].layers
    np.testing.assert_allclose(base.model(x), reference(x / 255.0), rtol=1e-6, atol=1e-6)
    minus_one = load_base(f"hub:{saved_model}", image_size=(32, 32), hub_range="-1,1")
    np.testing.assert_allclose(minus_one.model(x), reference(x / 127.5 - 1.0), rtol=1e-6, atol=1e-6)
    # the variables are the SavedModel's, under names an optimizer takes
    assert sorted(v.name for v in base.model.get_layer("hub").weights) == ["bn_moving_mean", "conv_bias", "conv_kernel"]
    assert [v.name for v in base.model.get_layer("hub").trainable_weights] == ["conv_kernel", "conv_bias"]


def test_default_size_and_a_signature_returning_a_dict(tmp_path):
    path = tmp_path / "signature_only"
    module = SignatureOnlyModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.features})
    base = load_base(f"hub:{path}")
    assert base.input_size == (16, 16) and base.model.input_shape == (None, 16, 16, 3)
    x = images(2, 16)
    np.testing.assert_allclose(base.model(x), x.mean(axis=(1, 2)) / 255.0 * 2.0, rtol=1e-5)
    with pytest.raises(TlkitError, match="takes 16x16 images only: pass --image-size 16"):
        load_base(f"hub:{path}", image_size=(32, 32))


@pytest.fixture(scope="module")
def finetuned(saved_model, tiny_images, tmp_path_factory):
    """A head stage, then a finetune stage, on the hub base; the SavedModel's variables after each."""
    out = tmp_path_factory.mktemp("hub_run") / "run"
    recipe = Recipe(stages=[Stage("head", epochs=2, learning_rate=1e-2)], base=f"hub:{saved_model}", data=str(tiny_images),
                    image_size=32, batch_size=8, seed=1, dropout=0.0)
    configure(recipe)
    ctx = run_recipe(recipe, load_base(recipe.base, image_size=(32, 32)), out, verbose=0)
    after_head = hub_variables(ctx.classifier)
    STAGES.get("finetune").run(ctx, 2, stage_params(Stage("finetune", epochs=2, learning_rate=1e-2, unfreeze=1)))
    return ctx, after_head, hub_variables(ctx.classifier), out


@pytest.mark.integration
def test_head_keeps_and_finetune_trains_the_savedmodel_variables(saved_model, finetuned):
    ctx, after_head, after_finetune, _ = finetuned
    reference = tf.saved_model.load(str(saved_model))
    original = {"conv_kernel": reference.kernel.numpy(), "conv_bias": reference.bias.numpy(),
                "bn_moving_mean": reference.moving_mean.numpy()}
    assert after_head.keys() == original.keys() == {"conv_kernel", "conv_bias", "bn_moving_mean"}
    for name, value in original.items():
        assert np.array_equal(after_head[name], value), f"{name} changed in the head stage"
    assert not np.array_equal(after_finetune["conv_kernel"], original["conv_kernel"])
    assert not np.array_equal(after_finetune["conv_bias"], original["conv_bias"])
    assert np.array_equal(after_finetune["bn_moving_mean"], original["bn_moving_mean"])
    assert ctx.results[0].history["loss"] and ctx.results[1].history["loss"]


@pytest.mark.integration
def test_finetuned_classifier_reloads_predicts_and_exports_when_trusted(finetuned, saved_model, tiny_images, tmp_path,
                                                                         monkeypatch):
    ctx, _, after_finetune, out = finetuned
    ctx.classifier.save(out / "model.keras")  # the model after finetune (run_recipe saved it after head)
    files = sorted(p for p in tiny_images.rglob("*.png"))[::6]
    expected = predict(out, files, top=3)  # trusted: loaded as a base in this process

    monkeypatch.setattr(tlkit.models.layers, "_trusted_savedmodels", set())  # as in a new process
    monkeypatch.delenv(tlkit.models.layers.TRUST_ENV, raising=False)
    with pytest.raises(TlkitError, match=f"set {tlkit.models.layers.TRUST_ENV}="):
        load_run(out)
    monkeypatch.setenv(tlkit.models.layers.TRUST_ENV, str(saved_model.parent))
    run = load_run(out)
    reloaded = hub_variables(run.model)
    assert reloaded.keys() == after_finetune.keys()
    for name, value in reloaded.items():
        assert np.array_equal(value, after_finetune[name]), f"{name} did not reload its fine-tuned value"
    for ours, theirs in zip(predict(out, files, top=3), expected):
        assert ours.top == theirs.top

    served = tf.saved_model.load(str(export(out, tmp_path / "exported")))
    x = tf.constant(images(2))
    probabilities = served.signatures["serve_images"](images=x)["probabilities"].numpy()
    np.testing.assert_allclose(np.sort(probabilities, axis=1)[:, ::-1], np.sort(run.model(x).numpy(), axis=1)[:, ::-1],
                               atol=1e-6)


@pytest.mark.integration
def test_cli_finetune_hub(saved_model, tiny_images, tmp_path):
    out = tmp_path / "run"
    main(["finetune", "--base", f"hub:{saved_model}", "--hub-range", "-1,1", "--data", str(tiny_images),
          "--out", str(out), "--image-size", "32", "--batch-size", "8", "--epochs-head", "1", "--epochs-finetune", "1",
          "--unfreeze", "1"])
    recipe = Recipe.load(out / "recipe.toml")
    assert (recipe.base, recipe.hub_range, recipe.image_size) == (f"hub:{saved_model}", "-1,1", 32)
    assert [s["kind"] for s in json.loads((out / "metrics.json").read_text())["stages"]] == ["head", "finetune"]
    model = load_run(out).model
    scaling = model.get_layer(BASE_LAYER).get_layer("preprocessing")  # [0, 255] -> [-1, 1]
    assert (scaling.scale, scaling.offset) == (1 / 127.5, -1.0)


def test_hub_errors(saved_model, tiny_images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    handle = "https://tfhub.invalid/google/tiny/feature_vector/1"  # .invalid never resolves
    with pytest.raises(TlkitError) as err:
        load_base(f"hub:{handle}")
    assert handle in str(err.value) and "--base hub:FOLDER" in str(err.value) and "TFHUB_CACHE_DIR" in str(err.value)
    with pytest.raises(TlkitError, match="no SavedModel folder"):
        load_base(f"hub:{tmp_path / 'missing'}")
    with pytest.raises(TlkitError, match="not a TF2 SavedModel folder"):
        load_base(f"hub:{tmp_path}")
    with pytest.raises(TlkitError, match="did you mean -1,1"):
        load_base(f"hub:{saved_model}", hub_range="-1;1")
    with pytest.raises(TlkitError, match="drop --weights none"):
        load_base(f"hub:{saved_model}", weights="none")
    with pytest.raises(TlkitError, match="drop --base-layer"):
        load_base(f"hub:{saved_model}", base_layer="hub")
    with pytest.raises(TlkitError, match="--hub-range is for hub: bases"):
        load_base("vgg16", hub_range="0,1")
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--base", f"hub:{handle}", "--data", str(tiny_images)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
