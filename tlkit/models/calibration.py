"""Calibrated probabilities and the unknown score (temperature scaling, Guo et al. 2017).

A classifier's softmax is over-confident after fine-tuning: its printed 0.97 is right less often
than 97% of the time. One scalar T, fitted on the validation split, divides the logits:
softmax(logits / T). T > 0 never changes the order of the classes, so never a top-1.
`with_temperature` puts it inside the model, so `model.keras` and every export give the
calibrated probabilities.

The unknown score of an image is how far its pooled features (the head's input) lie from those
of the nearest training image: 1 - their cosine similarity, 0 for a training image itself, up to 2.
It beats 1 - the largest calibrated probability on the sample photos (README, "Unknown images"):
a texture or a digit is far from every photo, yet the softmax is often sure of some class. An
image whose score is above the run's threshold (set on the validation split so that a share
`keep` of its images stay at or below it) is answered `unknown`.
"""
from __future__ import annotations

import math

import keras
import numpy as np

from tlkit.models.features import features_in

ECE_BINS = 15
_TINY = 1e-30  # a probability that underflowed to 0: its log stays finite


TEMPERATURE_LAYER = "temperature"


def with_temperature(model: keras.Model, temperature: float) -> keras.Model | None:
    """`model` giving softmax(logits / T): a copy of its last layer without the softmax (its logits
    out), then a Rescaling by 1/T and a softmax, core Keras layers, so the model still loads with Keras alone.
    None for a model whose last layer is not a softmax (it has no logits to divide)."""
    last = model.layers[-1]
    if getattr(getattr(last, "activation", None), "__name__", None) != "softmax":
        return None
    # a copy of the last layer giving logits, so that the trained model keeps its softmax (its
    # callers hold it); the copy keeps the layer's name, a name the calibrated model has once
    logits = type(last).from_config({**last.get_config(), "activation": "linear"})
    output = logits(last.input)
    logits.set_weights(last.get_weights())
    x = keras.layers.Rescaling(1.0 / temperature, dtype="float32", name=TEMPERATURE_LAYER)(output)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="calibrated")(x)
    calibrated = keras.Model(model.inputs, outputs, name=model.name)
    compiled = model.get_compile_config()
    if compiled:  # its loss and metrics saved with it, as the uncalibrated model's were
        calibrated.compile_from_config(compiled)
    return calibrated


def temperature_of(model: keras.Model) -> float | None:
    """The temperature inside `model`, None for a model saved without calibration."""
    try:
        layer = model.get_layer(TEMPERATURE_LAYER)
    except ValueError:
        return None
    return 1.0 / layer.scale


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits), in NumPy: log p is the logits less one constant
    per image (their log-sum-exp), which softmax ignores."""
    logits = np.log(np.maximum(probabilities.astype(np.float64), _TINY)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def nll(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The mean negative log-likelihood of the true classes."""
    picked = probabilities[np.arange(len(truth)), np.asarray(truth, int)]
    return float(-np.log(np.maximum(picked, _TINY)).mean())


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The T in [0.05, 20] that minimizes the NLL of `scaled(probabilities, T)` on `truth`: a
    golden-section search over log T (the NLL is convex in 1/T, so it has one minimum)."""
    lo, hi = math.log(0.05), math.log(20.0)
    golden = (math.sqrt(5) - 1) / 2

    def loss(log_t):
        return nll(scaled(probabilities, math.exp(log_t)), truth)

    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def reliability(probabilities: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS):
    """Per confidence bin (equal widths over [0, 1]): (count, mean confidence, accuracy)."""
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == np.asarray(truth, int)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, right, bins) / count
    return count, mean_conf, accuracy


def ece(probabilities: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - confidence| of each bin, weighted by its images."""
    count, mean_conf, accuracy = reliability(probabilities, truth, bins)
    filled = count > 0
    return float((count[filled] * np.abs(accuracy[filled] - mean_conf[filled])).sum() / max(count.sum(), 1))


def normalized(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def with_features(model: keras.Model) -> keras.Model | None:
    """`model` with two outputs, its probabilities and its pooled features; None for a model
    without pooled features."""
    features = features_in(model)
    return None if features is None else keras.Model(model.inputs, [model.output, features])


def nearest_distance(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 - the cosine similarity of each row of `features` to its nearest row of `reference`."""
    return 1.0 - (normalized(features) @ reference.T).max(axis=1)


def threshold_for(scores: np.ndarray, keep: float) -> float:
    """The score at or below which a share `keep` of `scores` (known images') lies."""
    return float(np.quantile(scores, keep, method="higher"))


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The chance that an unknown image scores above a known one (ties count half)."""
    scores = np.concatenate([known, unknown])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # ties share their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n, m = len(known), len(unknown)
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))
