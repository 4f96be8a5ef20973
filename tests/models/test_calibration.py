"""Temperature scaling and the unknown score's arithmetic, on made-up probabilities."""
from __future__ import annotations

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from tlkit.models import calibration as cal


def overconfident(n: int = 400, classes: int = 5, seed: int = 0):
    """Probabilities of a model right 70% of the time that says 0.9 and more: softmax(3 logits)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    right = rng.random(n) < 0.7
    logits[np.arange(n), np.where(right, truth, (truth + 1) % classes)] += 2.0
    e = np.exp(3 * logits)
    return e / e.sum(axis=1, keepdims=True), truth


def test_the_temperature_lowers_the_nll_and_the_ece_and_never_changes_a_top1():
    probabilities, truth = overconfident()
    temperature = cal.fit_temperature(probabilities, truth)
    after = cal.scaled(probabilities, temperature)
    assert temperature > 2  # over-confident: the logits are divided down
    assert cal.nll(after, truth) < cal.nll(probabilities, truth) - 0.1
    assert cal.ece(after, truth) < cal.ece(probabilities, truth) / 2
    np.testing.assert_array_equal(after.argmax(axis=1), probabilities.argmax(axis=1))
    np.testing.assert_allclose(after.sum(axis=1), 1, atol=1e-9)


def test_the_temperature_in_the_model_is_the_numpy_rule_and_survives_saving(tmp_path):
    rng = np.random.default_rng(3)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(inputs))
    x = rng.normal(0, 3, (50, 8)).astype(np.float32)
    before = model.predict(x, verbose=0)
    calibrated = cal.with_temperature(model, 2.5)
    calibrated.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # core layers: Keras alone loads it
    assert cal.temperature_of(loaded) == 2.5 and cal.temperature_of(model) is None
    np.testing.assert_allclose(loaded.predict(x, verbose=0), cal.scaled(before, 2.5), atol=1e-6)
    # a model whose last layer is no softmax has no logits to divide
    assert cal.with_temperature(keras.Model(inputs, keras.layers.Dense(5)(inputs)), 2.0) is None


def test_auroc_is_sklearns_ties_included():
    rng = np.random.default_rng(1)
    known, unknown = rng.integers(0, 5, 40).astype(float), rng.integers(2, 8, 30).astype(float)
    expected = roc_auc_score([0] * 40 + [1] * 30, np.concatenate([known, unknown]))
    assert abs(cal.auroc(known, unknown) - expected) < 1e-12


def test_the_threshold_keeps_the_share_asked_for():
    scores = np.random.default_rng(2).random(200)
    for keep in (0.5, 0.9, 0.95):
        threshold = cal.threshold_for(scores, keep)
        assert keep <= (scores <= threshold).mean() < keep + 0.01


def test_the_nearest_distance_is_0_for_a_reference_image_and_grows_away_from_them():
    reference = cal.normalized(np.eye(4)[:3] + 0.1)
    features = np.array([reference[1] * 7, [1, 1, 1, 0], [0, 0, 0, 1]])
    distance = cal.nearest_distance(features, reference)
    assert abs(distance[0]) < 1e-9 and 0 < distance[1] < distance[2]
