"""What a stage trains with beyond constant Adam and integer cross-entropy: learning-rate
schedules (Keras' cosine decay, and the one-cycle schedule Keras lacks), a learning rate per
variable (layer decay), a cross-entropy that smooths labels and takes integer or soft targets,
class weights, and a callback that records the learning rate of every step.

The Keras objects here are registered as serializable, so a run's model.keras, which keeps its
compiled optimizer and loss, loads again.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import keras
from keras import ops

from tlkit.errors import TlkitError, unknown_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEDULES = ("constant", "cosine", "onecycle")


@keras.saving.register_keras_serializable("tlkit")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle schedule (`fit_one_cycle`): over `warmup_steps` the rate rises from
    peak / `div` to the peak along half a cosine, then falls along half a cosine to
    peak / `final_div` at `total_steps`, and stays there."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, div: float = 25.0,
                 final_div: float = 1e5, name: str = "OneCycle"):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.div = float(div)
        self.final_div = float(final_div)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        start, end = self.peak / self.div, self.peak / self.final_div
        rising = ops.minimum(step / max(self.warmup_steps, 1), 1.0)
        up = start + (self.peak - start) * (1.0 - ops.cos(math.pi * rising)) / 2.0
        falling = ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        down = end + (self.peak - end) * (1.0 + ops.cos(math.pi * falling)) / 2.0
        return ops.where(step < self.warmup_steps, up, down)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "div": self.div, "final_div": self.final_div, "name": self.name}


def schedule(name: str, learning_rate: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0):
    """The learning rate of a stage, step by step: a float (constant, no warmup) or a Keras
    schedule. Warmup rises linearly from 0 to `learning_rate` over `warmup_epochs` (cosine,
    constant); one-cycle rises along its own curve over them (a quarter of the stage by default,
    as fastai's pct_start)."""
    total = max(steps_per_epoch * epochs, 1)
    warmup = round(warmup_epochs * steps_per_epoch)
    schedules = keras.optimizers.schedules
    if name == "constant":
        # CosineDecay with alpha=1 decays to alpha x the rate: constant after its linear warmup
        return schedules.CosineDecay(0.0, 1, alpha=1.0, warmup_target=learning_rate, warmup_steps=warmup) \
            if warmup else learning_rate
    if name == "cosine":
        return schedules.CosineDecay(0.0 if warmup else learning_rate, max(total - warmup, 1),
                                     warmup_target=learning_rate if warmup else None, warmup_steps=warmup)
    if name == "onecycle":
        return OneCycle(learning_rate, total, warmup if warmup_epochs else round(0.25 * total))
    raise unknown_name("schedule", name, SCHEDULES)


@keras.saving.register_keras_serializable("tlkit")
class ScaledAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied per variable: `scales` maps a variable's path to
    its factor (1 for the others). Scaling the gradient instead would not do: Adam's update does
    not change with the gradient's scale."""

    def __init__(self, learning_rate=0.001, scales: dict[str, float] | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.scales = dict(scales or {})

    def build(self, variables):
        super().build(variables)
        self._factors = [float(self.scales.get(v.path, 1.0)) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)]
        super().update_step(gradient, variable, learning_rate * factor if factor != 1.0 else learning_rate)

    def get_config(self):
        return {**super().get_config(), "scales": self.scales}


@keras.saving.register_keras_serializable("tlkit")
class Crossentropy(keras.losses.Loss):
    """Cross-entropy of softmax outputs against integer labels (one-hot here, so the data pipeline
    keeps integer labels) or soft ones (MixUp, CutMix), with label smoothing: the target becomes
    (1 - a) y + a / K over K classes."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return keras.losses.categorical_crossentropy(targets(y_true, y_pred), y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable("tlkit")
class MultiLabelCrossentropy(keras.losses.Loss):
    """Binary cross-entropy of sigmoid outputs against multi-hot (or mixed) targets, averaged over
    the labels; label smoothing moves each target to (1 - a) y + a / 2, and `positive_weights`
    weigh each label's positive term (the class weights of a multi-label run)."""

    def __init__(self, label_smoothing: float = 0.0, positive_weights: Sequence[float] | None = None,
                 name: str = "binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.positive_weights = [float(w) for w in positive_weights] if positive_weights else None

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        y_true = y_true * (1 - self.label_smoothing) + self.label_smoothing / 2
        y_pred = ops.clip(y_pred, keras.config.epsilon(), 1 - keras.config.epsilon())
        positive = y_true * ops.log(y_pred)
        if self.positive_weights:
            positive = positive * ops.convert_to_tensor(self.positive_weights, y_pred.dtype)
        return -ops.mean(positive + (1 - y_true) * ops.log(1 - y_pred), axis=-1)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing,
                "positive_weights": self.positive_weights}


def targets(y_true, y_pred):
    """`y_true` as one row of class probabilities per example: integer labels one-hot."""
    classes = y_pred.shape[-1]
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == classes and classes > 1:
        return ops.cast(y_true, y_pred.dtype)
    return ops.one_hot(ops.cast(ops.reshape(y_true, [-1]), "int32"), classes, dtype=y_pred.dtype)


@keras.saving.register_keras_serializable("tlkit")
def soft_accuracy(y_true, y_pred):
    """Accuracy against integer or soft labels (a soft label counts as its largest class)."""
    return ops.cast(ops.argmax(targets(y_true, y_pred), -1) == ops.argmax(y_pred, -1), "float32")


def accuracy_metric() -> keras.metrics.Metric:
    return keras.metrics.MeanMetricWrapper(soft_accuracy, name="accuracy")


def class_weights(spec: str, classes: Sequence[str], counts: Sequence[int],
                  images: int | None = None) -> dict[int, float] | None:
    """The weight of each class index for `fit(class_weight=)`: None for "none"; "balanced"
    weighs each class by n / (K n_c), as scikit-learn does, so every class weighs the same in
    total; otherwise a TOML or JSON file of class name -> weight (classes it leaves out: 1).
    Of a multi-label set of `images` images, the weights of each label's positives: "balanced" is
    (n - n_c) / n_c, so a label's positives weigh as much as its negatives."""
    if spec == "none":
        return None
    if spec == "balanced" and images is not None:
        return {i: (images - n) / max(n, 1) for i, n in enumerate(counts)}
    if spec == "balanced":
        total = sum(counts)
        return {i: total / (len(classes) * n) for i, n in enumerate(counts)}
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise TlkitError(f"--class-weight {spec}: not balanced, none, or a readable file ({err.strerror})") from err
    try:
        given = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise TlkitError(f"class weights {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: "
                         f"{err}") from err
    if not isinstance(given, dict):
        raise TlkitError(f"class weights {path}: write one class = weight per line (a table of class names)")
    weights = {}
    for name, weight in given.items():
        if name not in classes:
            raise TlkitError(f"class weights {path}: {unknown_name('class', name, classes)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise TlkitError(f"class weights {path}: the weight of {name} must be a number >= 0, not {weight!r}")
        weights[classes.index(name)] = float(weight)
    return {i: weights.get(i, 1.0) for i in range(len(classes))}


class LearningRateLog(keras.callbacks.Callback):
    """The learning rate each step used: into the step's logs (TensorBoard writes them as
    batch_learning_rate), the last of each epoch into the epoch's logs (history.json), and all
    of them in `steps`. It must come before TensorBoard and History in the callbacks."""

    def __init__(self):
        super().__init__()
        self.steps: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        # before the step: the optimizer's rate at its current iteration is this step's
        self.steps.append(float(ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_end(self, batch, logs=None):
        if isinstance(logs, dict):
            logs["learning_rate"] = self.steps[-1]

    def on_epoch_end(self, epoch, logs=None):
        if isinstance(logs, dict) and self.steps:
            logs["learning_rate"] = self.steps[-1]
