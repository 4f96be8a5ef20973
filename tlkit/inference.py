"""Predict classes of single images, and evaluate a run on a labelled folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit import data as tldata
from tlkit.errors import TlkitError
from tlkit.io import write_json_atomic
from tlkit.rundir import load_run


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class, probability), most probable first


def predict(model: str | Path, images: list[str | Path], top: int = 3, batch_size: int = 32) -> list[Prediction]:
    run = load_run(model)
    paths = [Path(p) for p in images]
    for path in paths:
        if not path.is_file():
            raise TlkitError(f"image {path} does not exist")
    pixels = tldata.load_images(paths, run.image_size, run.channels)
    probabilities = run.model.predict(pixels, batch_size=batch_size, verbose=0)
    k = min(top, len(run.labels))
    results = []
    for path, p in zip(paths, probabilities):
        order = np.argsort(-p, kind="stable")[:k]
        results.append(Prediction(path, [(run.labels[i], float(p[i])) for i in order]))
    return results


def evaluate(model: str | Path, data: str | Path, out: str | Path | None = None, batch_size: int = 32,
             skip_bad: bool = False) -> dict:
    """Accuracy, loss, per-class accuracy and the confusion matrix of a run on a labelled folder.

    The folder's classes must be among the run's; the metrics go to `out` (default
    RUN/evaluation.json)."""
    run = load_run(model)
    images = tldata.scan(data, skip_bad=skip_bad, classes=run.labels)
    dataset = tldata.make_dataset(images, run.image_size, batch_size, channels=run.channels)
    probabilities = run.model.predict(dataset, verbose=0)
    truth = np.asarray(images.labels)
    predicted = probabilities.argmax(axis=1)
    n = len(run.labels)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    picked = probabilities[np.arange(len(truth)), truth]
    per_class = {
        label: float(confusion[i, i] / confusion[i].sum()) for i, label in enumerate(run.labels) if confusion[i].sum()
    }
    metrics = {
        "data": str(data),
        "images": int(len(truth)),
        "accuracy": float((predicted == truth).mean()),
        "loss": float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": run.labels,
        "skipped": [str(p) for p, _ in images.skipped],
    }
    write_json_atomic(Path(out) if out else run.path / "evaluation.json", metrics)
    return metrics
