"""Resume: at every epoch's end a snapshot of what a run needs to go on after a crash
(`Snapshot`, `save_state`), read back by `ResumeState`; early stopping whose state survives;
the interruption that says how to go on."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit._util.io import write_atomic, write_json_atomic
from tlkit._util.keras_internals import ITERATORS_PER_EPOCH
from tlkit.engine.classifier import fixed_variables
from tlkit.engine.results import StageResult
from tlkit.errors import TlkitError
from tlkit.recipe.kinds import StageParams
from tlkit.rundir.files import RunDir


class RunInterrupted(TlkitError):
    """Ctrl-C (or SIGTERM, tlkit.rundir.guard) during a run: what was saved, and the command that goes on
    from there."""

    def __init__(self, out: Path, job: str, state: ResumeState | None):
        if state is None:  # `--resume` would refuse: say what works
            super().__init__(f"interrupted: {out} stopped before its first epoch ended, with nothing saved to resume "
                             f"from; run it again (--out {out} --overwrite reuses its folder)")
            return
        super().__init__(f"interrupted: {out} is saved at {state.where}; go on with: tlkit {job} --resume {out}")


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping whose count of epochs without improvement, best value and best
    weights can be saved at an epoch's end and given back to a resumed stage."""

    restored: dict | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.restored:
            self.wait, self.best, self.best_epoch = (self.restored["wait"], self.restored["best"],
                                                     self.restored["best_epoch"])
            self.best_weights = self.restored.get("best_weights")

    def state(self) -> dict:
        return {"wait": self.wait, "best": float(self.best), "best_epoch": self.best_epoch}


class Snapshot(keras.callbacks.Callback):
    """At the end of every epoch, atomically, what a run needs to go on after a crash: the
    weights (every variable, the random generators' states too) of the model being fitted, the
    optimizer's state, the stage and epoch, the history so far, the early-stopping and
    best-checkpoint state (tlkit.engine.resume.ResumeState reads it back).

    The stage's first snapshot holds every variable; the later ones only those the stage can
    change, beside a reference to the first: a base frozen in inference mode keeps its weights
    and statistics, and copying and writing all of them every epoch was most of what tlkit added
    to a short epoch (bench/run.py, P3)."""

    def __init__(self, ctx, index: int, model, optimizer, stopping, earlier: dict, best):
        super().__init__()
        self.ctx, self.index, self.saved, self.optimizer = ctx, index, ctx.saved_model(model), optimizer
        self.stopping, self.best_checkpoint = stopping, best
        self.history = {k: list(v) for k, v in earlier.items()}
        fixed = fixed_variables(self.saved)
        self.changing = [i for i, v in enumerate(self.saved.variables) if id(v) not in fixed]
        self.full: str | None = None  # the file of the stage's first snapshot

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.best_checkpoint is not None:
            self.ctx.best = self.best_checkpoint.best
        if self.full is None:
            model = variables(self.saved, "model")
        else:
            model = {f"model_{i}": np.asarray(self.saved.variables[i]) for i in self.changing}
        arrays = {**model, **variables(self.optimizer, "optimizer")}
        stopping = None
        if self.stopping is not None:
            stopping = self.stopping.state()
            arrays.update({f"stopping_{i}": np.asarray(w) for i, w in enumerate(self.stopping.best_weights or [])})
        name = save_state(self.ctx, self.index, epoch + 1, arrays, self.history, stopping, full=self.full)
        self.full = self.full or name


def variables(holder, prefix: str) -> dict[str, np.ndarray]:
    """Every variable of a model or optimizer (random generators' states too), by position."""
    return {f"{prefix}_{i}": np.asarray(v) for i, v in enumerate(holder.variables)}


def save_state(ctx, stage: int, epoch: int, arrays: dict | None = None, history: dict | None = None,
               stopping: dict | None = None, full: str | None = None) -> str:
    """Write the resume state: the arrays first, then state.json naming them (and `full`, an
    earlier file of the stage holding the variables `arrays` leaves out), so that a crash
    between the two leaves the previous, whole state. Returns the arrays' file name."""
    folder = RunDir(ctx.out).resume
    name = f"stage{stage}-epoch{epoch}.npz"
    if arrays is not None:
        write_atomic(folder / name, lambda tmp: np.savez(tmp, **arrays))
    previous = ResumeState.read(ctx.out)
    write_json_atomic(folder / "state.json", {
        "job": ctx.job, "stage": stage, "epoch": epoch, "arrays": name if arrays is not None else None,
        "full": full, "history": history or {}, "early_stopping": stopping, "best": float(ctx.best),
        "results": [{"kind": r.kind, "history": r.history, "val_loss": r.val_loss, "val_accuracy": r.val_accuracy,
                     "seconds": r.seconds} for r in ctx.results],
    })
    for old in (previous.arrays, previous.full) if previous else ():
        if old and old not in (name, full):
            (folder / old).unlink(missing_ok=True)
    return name


@dataclass
class ResumeState:
    """Where an interrupted run stopped: the stage in progress (1-based) and the epochs of it
    done, with everything saved at that epoch's end."""

    folder: Path
    job: str
    stage: int
    epoch: int
    arrays: str | None
    history: dict
    early_stopping: dict | None
    best: float
    results: list[dict]
    full: str | None = None  # the file holding the variables `arrays` leaves out (Snapshot)

    @property
    def where(self) -> str:
        """Where the run stands, in words: "stage 2, after epoch 3"."""
        return f"stage {self.stage}, after epoch {self.epoch}" if self.epoch else f"the start of stage {self.stage}"

    @classmethod
    def read(cls, run: Path) -> ResumeState | None:
        path = RunDir(run).resume_state
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(path.parent, **data)

    def result(self, index: int, params: StageParams) -> StageResult:
        """The result of stage `index`, which ended before the run stopped."""
        done = self.results[index - 1]
        return StageResult(params, done["kind"], done["history"], done["val_loss"], done["val_accuracy"], None,
                           done["seconds"])

    def restore(self, saved_model, fitted, optimizer, stopping, train: tf.data.Dataset) -> tuple[int, dict]:
        """Give `saved_model` (see RunContext.saved_model), the optimizer of `fitted` and
        `stopping` their saved state and replay the data order of the epochs done, so that the
        stage goes on as if it had never stopped; returns the epochs done and the history so far."""
        if self.arrays is None:
            return 0, {}
        with np.load(self.folder / self.arrays) as saved, np.load(self.folder / (self.full or self.arrays)) as whole:
            for i, variable in enumerate(saved_model.variables):
                key = f"model_{i}"
                variable.assign(saved[key] if key in saved.files else whole[key])
            if not self.epoch:  # saved at the end of the stage before: a fresh optimizer
                return 0, {}
            optimizer.build(fitted.trainable_variables)
            for i, variable in enumerate(optimizer.variables):
                variable.assign(saved[f"optimizer_{i}"])
            if stopping is not None and self.early_stopping is not None:
                best = [saved[k] for k in sorted((k for k in saved.files if k.startswith("stopping_")),
                                                 key=lambda k: int(k.split("_")[1]))]
                stopping.restored = {**self.early_stopping, "best_weights": best or None}
        # Each iterator made over the training set draws the next shuffle and augmentation seeds;
        # `fit` makes ITERATORS_PER_EPOCH of them per epoch: make as many, reading nothing.
        for _ in range(self.epoch * ITERATORS_PER_EPOCH):
            iter(train)
        return self.epoch, self.history

