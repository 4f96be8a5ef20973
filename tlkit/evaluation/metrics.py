"""What a model gets right and wrong on labelled images, as numbers: the confusion matrix, the
per-class table, what is confused most, and the evaluation files (report.json, predictions.csv,
with confusion.png and top_losses.png from `plots`):

    report.json       accuracy, loss, per-class precision/recall/F1/support, averages, confusion
    predictions.csv   one row per image: path, true class, predicted class, probability of each class
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from tlkit._util.io import write_csv_atomic, write_json_atomic
from tlkit.evaluation.plots import TOP_LOSSES, plot_confusion, plot_top_losses

log = logging.getLogger(__name__)


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], n: int) -> np.ndarray:
    """counts[i, j]: images of true class i predicted as class j."""
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (np.asarray(truth, int), np.asarray(predicted, int)), 1)
    return counts


def classification_table(confusion: np.ndarray, classes: Sequence[str]) -> dict:
    """Precision, recall, F1 and support per class, their macro and weighted averages, and the
    accuracy, as scikit-learn's `classification_report` computes them: over the classes that
    occur in the truth or the predictions, 0 where a ratio has nothing to divide by."""
    tp = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    present = np.flatnonzero((support > 0) | (predicted > 0))

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    rows = [{"class": classes[i], "precision": precision[i], "recall": recall[i], "f1": f1[i],
             "support": int(support[i])} for i in present]
    weights = support[present] / max(support.sum(), 1)
    averages = {
        "macro avg": {k: float(np.mean([r[k] for r in rows])) for k in ("precision", "recall", "f1")},
        "weighted avg": {k: float(np.dot([r[k] for r in rows], weights)) for k in ("precision", "recall", "f1")},
    }
    for average in averages.values():
        average["support"] = int(support.sum())
    for row in rows:
        row.update({k: float(row[k]) for k in ("precision", "recall", "f1")})
    return {"classes": rows, **averages, "accuracy": float(tp.sum() / max(support.sum(), 1))}


def most_confused(confusion: np.ndarray, classes: Sequence[str], k: int = 10) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal counts: (true class, predicted class, images), most first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [(classes[i], classes[j], int(off[i, j])) for i, j in pairs if off[i, j]]


def format_table(table: dict) -> str:
    """The classification table as text with headed columns, as `tlkit evaluate` prints it."""
    width = max([len("weighted avg"), *(len(r["class"]) for r in table["classes"])])
    head = f"{'class':<{width}}  {'precision':>9}  {'recall':>6}  {'F1':>6}  {'support':>7}"
    lines = [head, "-" * len(head)]

    def line(name, row):
        return (f"{name:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['f1']:>6.4f}  "
                f"{row['support']:>7d}")

    lines += [line(r["class"], r) for r in table["classes"]]
    lines.append("-" * len(head))
    lines += [line(name, table[name]) for name in ("macro avg", "weighted avg")]
    return "\n".join(lines)


def evaluation_report(model: keras.Model, classes: Sequence[str], files: Sequence[Path], truth: Sequence[int],
                      probabilities: np.ndarray, out: str | Path, *, blocks: dict | None = None,
                      single_view: np.ndarray | None = None, tta_views: int = 1, extra: dict | None = None,
                      top_losses: int = TOP_LOSSES) -> dict:
    """Write report.json, predictions.csv, confusion.png and top_losses.png into `out` for the
    images `files` of true labels `truth`, which `model` gave `probabilities` (n, classes).

    `single_view`: the probabilities without test-time augmentation, when `probabilities` are
    averaged over `tta_views` views; the report then gives the accuracy of both. `blocks` is the
    base's block map, for the Grad-CAM layer. `extra` is merged into report.json. Returns the
    report (report.json's content)."""
    out = Path(out)
    classes = list(classes)
    truth = np.asarray(truth, int)
    predicted = probabilities.argmax(axis=1)
    picked = np.clip(probabilities[np.arange(len(truth)), truth], 1e-7, 1.0)
    losses = -np.log(picked)
    confusion = confusion_matrix(truth, predicted, len(classes))
    table = classification_table(confusion, classes)
    report = {
        **(extra or {}),
        "images": int(len(truth)),
        "accuracy": table["accuracy"],
        "loss": float(losses.mean()) if len(losses) else float("nan"),
        **({"tta": {"views": tta_views, "accuracy_without": float((single_view.argmax(axis=1) == truth).mean()),
                    "accuracy_with": table["accuracy"]}} if single_view is not None else {}),
        "table": table,
        "most_confused": most_confused(confusion, classes),
        "labels": classes,
        "confusion_matrix": confusion.tolist(),
        "files": {"predictions": "predictions.csv", "confusion": "confusion.png", "top_losses": "top_losses.png"},
    }
    write_predictions(out / "predictions.csv", files, probabilities, classes, truth)
    plot_confusion(confusion, classes, out / "confusion.png")
    worst = np.argsort(-losses, kind="stable")[:top_losses]
    plot_top_losses(model, classes, [files[i] for i in worst], truth[worst], out / "top_losses.png", blocks,
                    probabilities[worst])
    write_json_atomic(out / "report.json", report)
    return report


def format_report(report: dict) -> str:
    """The text `tlkit evaluate` prints: the table, accuracy and loss, and what is confused most."""
    lines = [format_table(report["table"]), "",
             f"accuracy {report['accuracy']:.4f}  loss {report['loss']:.4f}  on {report['images']} images"]
    if "tta" in report:
        tta = report["tta"]
        lines.append(f"test-time augmentation ({tta['views']} views): accuracy "
                     f"{tta['accuracy_with']:.4f}, without {tta['accuracy_without']:.4f}")
    if "unknown" in report:
        u = report["unknown"]
        lines.append(f"unknown images ({u['images']} in {u['data']}): AUROC {u['auroc']:.4f}, false-positive rate at "
                     f"95% known recall {u['fpr_at_95_recall']:.4f}; at the run's threshold {u['threshold']:.4f}, "
                     f"{u['given_a_class']} of {u['images']} would be given a class, and "
                     f"{u['known_keep_class']:.1%} of the labelled images keep their (right) class")
    if report["most_confused"]:
        lines.append("most confused (true -> predicted: images): " + ", ".join(
            f"{t} -> {p}: {n}" for t, p, n in report["most_confused"][:5]))
    return "\n".join(lines)


def write_predictions(path: Path, files: Sequence[Path], probabilities: np.ndarray, classes: Sequence[str],
                      truth: Sequence[int] | None = None, unknown: tuple[np.ndarray, float] | None = None) -> None:
    """predictions.csv: path, true class (when known), predicted class, its probability, with
    `unknown` (the images' unknown scores and the run's threshold) whether each is unknown and its
    score, then the probability of every class, one row per image in the order given."""
    header = ["path", *(["true"] if truth is not None else []), "predicted", "probability",
              *(["unknown", "unknown_score"] if unknown is not None else []), *(f"p_{c}" for c in classes)]
    rows = []
    for k, (f, p) in enumerate(zip(files, probabilities)):
        top = int(p.argmax())
        flag = [str(bool(unknown[0][k] > unknown[1])).lower(), f"{unknown[0][k]:.6f}"] if unknown is not None else []
        rows.append([str(f), *([classes[truth[k]]] if truth is not None else []), classes[top], f"{p[top]:.6f}",
                     *flag, *(f"{v:.6f}" for v in p)])
    write_csv_atomic(path, [header, *rows])
