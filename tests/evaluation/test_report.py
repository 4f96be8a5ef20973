"""The evaluation numbers, Grad-CAM, test-time views and the folder walk, without training a model."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, classification_report

import tlkit.stages  # noqa: F401  (registers the stage kinds, which describe their stages)
from tlkit.engine.curves import TrainingCurves
from tlkit.errors import TlkitError
from tlkit.evaluation.gradcam import gradcam, gradcam_layer
from tlkit.evaluation.metrics import classification_table, confusion_matrix, format_table, most_confused
from tlkit.evaluation.plots import plot_confusion
from tlkit.evaluation.predict import image_files, tta_view
from tlkit.recipe.schema import builtin_recipes

CLASSES = ["ant", "bee", "cat", "dog"]
# a fixed prediction set: dog is never in the truth, cat never predicted
TRUTH = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 0, 1]
PREDICTED = [0, 0, 1, 3, 1, 1, 0, 0, 1, 1, 3, 0, 0, 1]


def test_confusion_counts_equal_a_hand_count():
    hand = np.array([
        # predicted: ant bee cat dog
        [3, 1, 0, 1],  # ant: 5 images (indices 0-3, 12)
        [1, 3, 0, 0],  # bee: 4 images (4-6, 13)
        [2, 2, 0, 1],  # cat: 5 images (7-11)
        [0, 0, 0, 0],  # dog: none
    ])
    np.testing.assert_array_equal(confusion_matrix(TRUTH, PREDICTED, 4), hand)
    assert most_confused(hand, CLASSES) == [("cat", "ant", 2), ("cat", "bee", 2), ("ant", "bee", 1),
                                            ("ant", "dog", 1), ("bee", "ant", 1), ("cat", "dog", 1)]


def test_table_equals_scikit_learns_classification_report():
    ours = classification_table(confusion_matrix(TRUTH, PREDICTED, 4), CLASSES)
    present = sorted(set(TRUTH) | set(PREDICTED))
    theirs = classification_report(TRUTH, PREDICTED, labels=present, target_names=[CLASSES[i] for i in present],
                                           output_dict=True, zero_division=0)
    assert [row["class"] for row in ours["classes"]] == ["ant", "bee", "cat", "dog"]
    for row in ours["classes"]:
        expected = theirs[row["class"]]
        assert row["support"] == expected["support"]
        for key, name in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert row[key] == pytest.approx(expected[name], abs=1e-12), (row["class"], key)
    for average in ("macro avg", "weighted avg"):
        for key, name in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert ours[average][key] == pytest.approx(theirs[average][name], abs=1e-12), (average, key)
    assert ours["accuracy"] == pytest.approx(accuracy_score(TRUTH, PREDICTED))
    # a class neither in the truth nor predicted is left out, as scikit-learn leaves it out
    assert [r["class"] for r in classification_table(confusion_matrix([0, 1], [0, 0], 3), "abc")["classes"]] == ["a", "b"]


def test_printed_table_has_headed_columns():
    text = format_table(classification_table(confusion_matrix(TRUTH, PREDICTED, 4), CLASSES)).splitlines()
    assert text[0].split() == ["class", "precision", "recall", "F1", "support"]
    ant = next(line for line in text if line.startswith("ant"))
    assert ant.split() == ["ant", "0.5000", "0.6000", "0.5455", "5"]  # tp 3 of 6 predicted, of 5 true
    assert text[-1].split()[:2] == ["weighted", "avg"] and text[-1].split()[-1] == "14"


def test_confusion_picture_grows_with_the_classes(tmp_path):
    small = plot_confusion(np.array([[5, 1], [2, 7]]), ["cat", "dog"], tmp_path / "2.png")
    names = [f"class_with_a_long_name_{i}" for i in range(40)]
    large = plot_confusion(np.diag(np.arange(1, 41)), names, tmp_path / "40.png")
    with Image.open(small) as a, Image.open(large) as b:
        assert b.size[0] > 3 * a.size[0] and b.size[1] > 3 * a.size[1]


def test_curves_are_redrawn_across_stages_at_most_every_few_seconds_and_at_each_stage_end(tmp_path):
    picture = tmp_path / "curves.png"
    curves = TrainingCurves(tmp_path, every=3600)
    curves.stage("1 head").on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 0.9, "val_accuracy": 0.6})
    one_epoch = picture.read_bytes()  # the first epoch is drawn at once
    curves.on_epoch_end(1, {"loss": 0.8, "accuracy": 0.6, "val_loss": 0.7, "val_accuracy": 0.7})
    assert picture.read_bytes() == one_epoch  # within `every` of the last drawing
    curves.on_train_end()
    two_epochs = picture.read_bytes()
    assert two_epochs != one_epoch
    curves.on_train_end()  # nothing new: not drawn again
    assert picture.read_bytes() == two_epochs
    curves.every = 0
    curves.stage("2 finetune").on_epoch_end(0, {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.75, "val_accuracy": 0.7})
    assert picture.read_bytes() != two_epochs
    assert [name for name, _ in curves.stages] == ["1 head", "2 finetune"]
    assert curves.stages[0][1]["val_loss"] == [0.9, 0.7] and curves.stages[1][1]["loss"] == [0.5]


def _nested_probe() -> keras.Model:
    """A classifier whose Grad-CAM is known: a nested "base" whose last feature map is the
    image's first channel (a 1x1 convolution with weight 1), then average pooling and a dense
    layer that counts that channel for class 0 and against it for class 1."""
    image = keras.Input((8, 8, 3))
    feature = keras.layers.Conv2D(1, 1, use_bias=False, name="feature", kernel_initializer=keras.initializers.Constant(
        np.array([1.0, 0.0, 0.0]).reshape(1, 1, 3, 1)))(image)
    base = keras.Model(image, feature, name="base")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    dense = keras.layers.Dense(2, activation="softmax", name="head_dense")
    outputs = dense(x)
    dense.set_weights([np.array([[0.05, -0.05]], np.float32), np.zeros(2, np.float32)])
    return keras.Model(inputs, outputs)


def test_gradcam_finds_the_evidence_inside_a_nested_base():
    model = _nested_probe()
    image = np.zeros((1, 8, 8, 3), np.float32)
    image[0, 2:4, 5:7, 0] = 200.0  # the evidence for class 0: a bright square in the first channel
    image[0, :, :, 1] = 255.0  # the other channels do not count
    assert gradcam_layer(model, {"stem": ["feature"]}) == "feature"
    heat, probabilities = gradcam(model, image, "feature")
    np.testing.assert_allclose(probabilities, model.predict(image, verbose=0), atol=1e-6)
    assert probabilities[0].argmax() == 0
    np.testing.assert_allclose(heat[0, 2:4, 5:7], 1.0, atol=1e-6)
    assert heat[0, 5:, :3].max() == pytest.approx(0.0, abs=1e-6)  # far from the square: no heat
    # for class 1 the same square is evidence against: no heat anywhere
    against, _ = gradcam(model, image, "feature", classes=[1])
    assert against.max() == pytest.approx(0.0, abs=1e-6)


def test_gradcam_layer_skips_blocks_without_a_feature_map():
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(2, 3, name="conv1")(inputs)
    x = keras.layers.Conv2D(2, 3, name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    blocks = {"block1": ["conv1"], "block2": ["conv2"], "top": ["flatten", "fc"]}
    assert gradcam_layer(model, blocks) == "conv2"
    with pytest.raises(TlkitError, match="no block with a feature map"):
        gradcam_layer(model, {"top": ["flatten", "fc"]})


def test_tta_views_are_mirrors_and_crops():
    images = np.arange(2 * 20 * 20 * 3, dtype=np.float32).reshape(2, 20, 20, 3)
    np.testing.assert_array_equal(tta_view(images, 0), images)
    np.testing.assert_array_equal(tta_view(images, 1), images[:, :, ::-1])
    centre = tta_view(images, 2).numpy()
    # the centre 17x17 (85%) resized back to 20x20: its corners come from inside the image
    assert centre.shape == images.shape
    assert images[:, 1:19, 1:19].min() <= centre.min() and centre.max() <= images[:, 1:19, 1:19].max()
    np.testing.assert_array_equal(tta_view(images, 3), tta_view(images[:, :, ::-1], 2))


def test_folders_are_walked_for_images_only(tmp_path):
    for name in ("a/1.png", "a/deep/er/2.JPG", "b.webp", "a/.hidden.png", ".secret/3.png", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert image_files([tmp_path]) == [tmp_path / "b.webp", tmp_path / "a/1.png", tmp_path / "a/deep/er/2.JPG"]
    assert image_files([tmp_path / "a/notes.txt"]) == [tmp_path / "a/notes.txt"]  # a file named is taken
    with pytest.raises(TlkitError, match="does not exist"):
        image_files([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlkitError, match="no images in folder"):
        image_files([tmp_path / "empty"])
    assert image_files([tmp_path / "a/deep", tmp_path / "b.webp"]) == [tmp_path / "a/deep/er/2.JPG", tmp_path / "b.webp"]


def test_gradcam_takes_the_feature_map_of_a_pooling_that_also_gives_its_switches():
    from tlkit.models.layers import MaxPoolingWithArgmax2D

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    pooled, _ = MaxPoolingWithArgmax2D(name="pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(pooled))
    model = keras.Model(inputs, outputs)
    assert gradcam_layer(model, {"block1": ["conv", "pool"]}) == "pool"
    # small inputs: a random untrained model on [0, 255] inputs saturates its softmax, whose gradient is then 0
    images = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype("float32")
    heat, probabilities = gradcam(model, images, "pool")
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-6)
    assert heat.shape == (2, 8, 8)
    # the evidence for one class is the evidence against the other: one of the two has heat
    other, _ = gradcam(model, images, "pool", classes=1 - probabilities.argmax(axis=1))
    assert np.maximum(heat, other).max(axis=(1, 2)) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_report_md_says_what_every_built_in_recipe_does(name, tmp_path):
    """REPORT.md's recipe section, for each built-in recipe as it resolves: the augmentation it
    draws, the batch size, label smoothing, and each stage with its own settings (epochs, rate,
    schedule and warmup, blocks unfrozen and their decay, the autoencoder's decoder and noise)."""
    from tlkit.data.augment import of as augmentation_of
    from tlkit.data.folders import ImageSet
    from tlkit.evaluation.report import run_markdown
    from tlkit.recipe.kinds import amount, resolve, stage_params

    recipe = resolve(name, base="lenet5", data=str(tmp_path), check_base_name=False)
    images = ImageSet(tmp_path, ["a", "b"], [tmp_path / "a.png", tmp_path / "b.png"], [0, 1])
    md = run_markdown(tmp_path, ["a", "b"], images, images, recipe, [], None, False, None)
    said = md[md.index("## Recipe"):md.index("## Results")]
    assert f"Batch size {recipe.batch_size}, augmentation: {augmentation_of(recipe).describe()}" in said
    assert ("augmentation: off" in said) == (recipe.augment in ("none", False))
    assert (f"label smoothing {recipe.label_smoothing:g}" in said) == bool(recipe.label_smoothing)
    lines = [line for line in said.splitlines() if line[:1].isdigit()]
    assert len(lines) == len(recipe.stages)
    for line, stage in zip(lines, recipe.stages):
        params = stage_params(stage)
        assert f"**{stage.kind}**" in line and amount(params) in line, line
        if stage.kind == "finetune":
            assert f"top {params.unfreeze} block" in line
            assert (f"{params.layer_decay:g} times the rate" in line) == (params.layer_decay != 1)
        if stage.kind == "autoencoder":
            assert f"{params.decoder} decoder, input noise {params.noise:g}" in line
        if params.schedule != "constant":
            assert f"{params.schedule} schedule" in line
