"""The multi-label evaluation's pictures: PR curves, co-occurrence, top losses with a Grad-CAM per
predicted label; drawn from a small sigmoid model on the tiny images (no training needed)."""
from __future__ import annotations

import keras
import numpy as np
from PIL import Image

from tlkit.evaluation import multilabel, multilabel_plots

CLASSES = ["blue", "green", "red", "warm"]


def test_losses_are_the_mean_binary_cross_entropy_keras_computes():
    rng = np.random.default_rng(0)
    truth, probs = rng.random((5, 4)) > 0.5, rng.uniform(0.05, 0.95, (5, 4))
    expected = keras.losses.binary_crossentropy(truth.astype("float32")[..., None], probs[..., None]).numpy().mean(1)
    np.testing.assert_allclose(multilabel_plots.losses(truth, probs), expected, rtol=1e-5)


def test_pr_curve_ends_at_full_recall_and_its_area_is_the_ap():
    truth, scores = np.array([1, 0, 1, 1, 0]), np.array([0.9, 0.8, 0.7, 0.3, 0.1])
    precision, recall = multilabel.pr_curve(truth, scores)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 1, 1])
    assert multilabel.average_precision(truth, scores) == np.sum(np.diff([0, *recall]) * precision)


def test_pictures_of_a_multilabel_evaluation(tiny_images, tmp_path):
    files = sorted(tiny_images.glob("*/*.png"))[::4]
    truth = np.array([[f.parent.name == c for c in CLASSES[:3]] + [f.parent.name in ("red", "green")]
                      for f in files])
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x)))
    probs = np.random.default_rng(1).uniform(0.05, 0.95, truth.shape)
    thresholds = np.array([0.3, 0.5, 0.7, 0.4])
    pictures = [multilabel_plots.plot_pr_curves(CLASSES, truth, probs, thresholds, tmp_path / "pr_curves.png"),
                multilabel_plots.plot_cooccurrence(CLASSES, truth, probs >= thresholds, tmp_path / "cooccurrence.png"),
                multilabel_plots.plot_top_losses(model, CLASSES, files[:4], truth[:4], probs[:4], thresholds,
                                                 tmp_path / "top_losses.png")]
    for path in pictures:
        width, height = Image.open(path).size
        assert width >= 400 and height >= 300, (path.name, width, height)
    # one row per image, one Grad-CAM per predicted label: as many columns as the most labels predicted
    most = max(int((p >= thresholds).sum()) for p in probs[:4])
    assert 1 <= most <= multilabel_plots.GRADCAM_LABELS
