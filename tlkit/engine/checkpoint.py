"""checkpoints/best.keras: the classifier at the lowest validation loss of the run."""
from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from tlkit._util.io import save_model_atomic
from tlkit.engine.classifier import fixed_variables


class BestCheckpoint(keras.callbacks.Callback):
    """The model at the lowest validation loss over all stages of a run.

    Our own rather than ModelCheckpoint because it writes atomically and keeps its best value
    across the several `fit` calls of a recipe. `model` is what it saves, which may be more than
    the model being fitted (the whole classifier while an extract stage fits its head).

    Writing a whole model costs seconds, as much as an epoch of a small dataset: a better epoch
    is kept in memory, and written when `every` seconds have passed since the last write, and
    at the end of the stage, so a crash loses at most `every` seconds of it.
    """

    def __init__(self, path: Path, model: keras.Model, every: float = 60.0):
        super().__init__()
        self.path = path
        self.saved = model
        self.best = np.inf
        self.every = every
        self.written = time.monotonic()
        self.changing: list = []  # the weights the stage can change (not those of a base it keeps fixed)
        self.pending: list[np.ndarray] | None = None  # their values at the best epoch, not yet written

    def on_train_begin(self, logs=None):
        fixed = fixed_variables(self.saved)
        self.changing = [v for v in self.saved.weights if id(v) not in fixed]

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = loss
            self.pending = [v.numpy() for v in self.changing]
        if self.pending is not None and time.monotonic() - self.written >= self.every:
            self.write()

    def on_train_end(self, logs=None):
        if self.pending is not None:
            self.write()

    def write(self):
        current = [v.numpy() for v in self.changing]
        for variable, value in zip(self.changing, self.pending):
            variable.assign(value)
        try:
            save_model_atomic(self.saved, self.path)
        finally:
            for variable, value in zip(self.changing, current):
                variable.assign(value)
        self.pending = None
        self.written = time.monotonic()

