"""The run directory's files by name, in one place: `RunDir(path).model`, not `path / "model.keras"`.

    model.keras        the classifier (preprocessing inside; input float32 images in [0, 255])
    labels.txt         class names, one a line, in the order of the model's outputs
    recipe.toml        the resolved recipe: `tlkit finetune --recipe RUN/recipe.toml` repeats the run
    blocks.json        the block map of the run's base ({block: [layer names]}, in order)
    history.json       Keras' per-epoch history of every stage
    metrics.json       validation accuracy and loss after each stage
    data_report.json   what the run trained and validated on (tlkit.data.report)
    thresholds.json    a multi-label run's threshold of each label ({label: threshold})
    checkpoints/best.keras   the model at the epoch with the lowest validation loss, over all stages
    checkpoints/resume/      what a run that stopped goes on from; removed when it ends
    logs/              TensorBoard logs, one folder per stage
    curves.png         loss and accuracy per epoch over all stages (redrawn during training)
    calibration.json   the temperature inside model.keras, ECE and NLL before and after, the unknown threshold
    reference.npy      the training images' normalized pooled features, the unknown score's reference
    calibration.png    the reliability diagram of the validation split, before and after calibration
    REPORT.md          what the run did, in words, with the validation report below
    report.json, predictions.csv, confusion.png, top_losses.png   the validation split's evaluation
    .lock              while a run writes the folder: its PID and host (tlkit.rundir.guard)
    .unfinished        from a run's first file to its last: the run has not finished
    .failed            a run that stopped on an error: the error, one line (`tlkit runs` says "failed")
    tracking.json      the MLflow tracking URI and run id a run logs to, so that a resumed run goes on in it
    trial.json         a run made as a trial of `tlkit tune`: its study, number, parameters and state

A pretrain run (and a base folder) holds base.keras and blocks.json instead of a classifier.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tlkit._util.io import write_json_atomic


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"RUN/{name}")


@dataclass(frozen=True)
class RunDir:
    """A run directory at `path`; each file's name is a constant (`RunDir.MODEL`), its path a
    property (`RunDir(run).model`)."""

    path: Path

    MODEL, LABELS, RECIPE, BLOCKS = "model.keras", "labels.txt", "recipe.toml", "blocks.json"
    HISTORY, METRICS, DATA_REPORT, THRESHOLDS = "history.json", "metrics.json", "data_report.json", "thresholds.json"
    BASE, CHECKPOINTS, BEST = "base.keras", "checkpoints", "checkpoints/best.keras"
    RESUME, RESUME_STATE = "checkpoints/resume", "checkpoints/resume/state.json"
    LOGS, CURVES, REPORT = "logs", "curves.png", "REPORT.md"
    LOCK, UNFINISHED, FAILED = ".lock", ".unfinished", ".failed"
    CALIBRATION, REFERENCE, CALIBRATION_PLOT = "calibration.json", "reference.npy", "calibration.png"
    TRACKING, TRIAL = "tracking.json", "trial.json"
    # any of these makes a folder a run directory (a finished, unfinished or pretrain run)
    MARKERS = (RECIPE, MODEL, CHECKPOINTS, BASE, UNFINISHED)

    model, labels, recipe, blocks = _file(MODEL), _file(LABELS), _file(RECIPE), _file(BLOCKS)
    history, metrics, data_report, thresholds = _file(HISTORY), _file(METRICS), _file(DATA_REPORT), _file(THRESHOLDS)
    base, best, resume, resume_state = _file(BASE), _file(BEST), _file(RESUME), _file(RESUME_STATE)
    logs, curves, report = _file(LOGS), _file(CURVES), _file(REPORT)
    lock, unfinished, failed = _file(LOCK), _file(UNFINISHED), _file(FAILED)
    calibration, reference, calibration_plot = _file(CALIBRATION), _file(REFERENCE), _file(CALIBRATION_PLOT)
    tracking, trial = _file(TRACKING), _file(TRIAL)

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def is_run(self) -> bool:
        return self.path.is_dir() and any((self.path / name).exists() for name in self.MARKERS)

    def read_blocks(self) -> dict[str, list[str]] | None:
        """blocks.json, the block map of the run's base ({block: [layer names]}), if it has one."""
        return json.loads(self.blocks.read_text(encoding="utf-8")) if self.blocks.is_file() else None

    def write_blocks(self, blocks) -> None:
        """blocks.json of `blocks` (tlkit.models.blocks.Block, in order)."""
        write_json_atomic(self.blocks, {block.name: list(block.layers) for block in blocks})
