"""Multi-label metrics: per-label thresholds chosen on the validation split, and what a
practitioner reads of a multi-label model (per-label precision, recall, F1, support and average
precision; micro, macro and samples F1; mAP; exact-match ratio), computed as scikit-learn's
`precision_recall_fscore_support` and `average_precision_score` compute them (a ratio over
nothing is 0)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tlkit._util.io import write_csv_atomic, write_json_atomic

DEFAULT_THRESHOLD = 0.5  # a label with no positive image in validation, where F1 cannot choose


def choose_thresholds(truth: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each label's threshold that maximises its F1 on (`truth` multi-hot, `probabilities`): the
    midpoint between the lowest probability predicted positive and the next below it, so that a
    model scoring the same images again predicts the same labels."""
    thresholds = np.full(truth.shape[1], DEFAULT_THRESHOLD)
    for label in range(truth.shape[1]):
        positives = truth[:, label] > 0
        if not positives.any():
            continue
        order = np.argsort(-probabilities[:, label], kind="stable")
        scores, hits = probabilities[order, label], positives[order]
        true_positives = np.cumsum(hits)
        predicted = np.arange(1, len(scores) + 1)
        f1 = 2 * true_positives / (predicted + positives.sum())
        # only cut between distinct scores: images scoring the same are predicted alike
        cuts = np.flatnonzero(np.append(scores[1:] < scores[:-1], True))
        best = cuts[np.argmax(f1[cuts])]
        below = scores[best + 1] if best + 1 < len(scores) else 0.0
        thresholds[label] = (scores[best] + below) / 2
    return thresholds


def _ratio(a, b):
    return np.divide(a, b, out=np.zeros(np.shape(a), float), where=np.asarray(b) > 0)


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """The area under the precision-recall curve as a step function (scikit-learn's AP)."""
    if not truth.any():
        return 0.0
    precision, recall = pr_curve(truth, scores)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def pr_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score taken as the threshold, highest score first
    (recall rising); `truth` must hold a positive."""
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], truth[order] > 0
    last = np.flatnonzero(np.append(scores[1:] < scores[:-1], True))  # one point per distinct score
    true_positives = np.cumsum(hits)[last]
    return true_positives / (last + 1), true_positives / hits.sum()


def report(classes: Sequence[str], truth: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> dict:
    """The metrics of multi-hot `truth` against `probabilities` cut at `thresholds`."""
    truth = truth > 0
    predicted = probabilities >= thresholds
    tp = (truth & predicted).sum(axis=0)
    precision, recall = _ratio(tp, predicted.sum(axis=0)), _ratio(tp, truth.sum(axis=0))
    f1 = _ratio(2 * precision * recall, precision + recall)
    ap = [average_precision(truth[:, i], probabilities[:, i]) for i in range(len(classes))]
    micro_p, micro_r = _ratio(tp.sum(), predicted.sum()), _ratio(tp.sum(), truth.sum())
    per_image_tp = (truth & predicted).sum(axis=1)
    samples_f1 = _ratio(2 * per_image_tp, truth.sum(axis=1) + predicted.sum(axis=1))
    with_positives = truth.any(axis=0)
    return {
        "task": "multilabel",
        "images": int(len(truth)),
        "exact_match": float((truth == predicted).all(axis=1).mean()) if len(truth) else 0.0,
        "micro_f1": float(_ratio(2 * micro_p * micro_r, micro_p + micro_r)),
        "macro_f1": float(f1.mean()),
        "samples_f1": float(samples_f1.mean()) if len(truth) else 0.0,
        # over the labels that have a positive image: AP is undefined for the others
        "mAP": float(np.mean(np.asarray(ap)[with_positives])) if with_positives.any() else 0.0,
        "per_label": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s),
                          "ap": a, "threshold": float(t)}
                      for c, p, r, f, s, a, t in zip(classes, precision, recall, f1, truth.sum(axis=0), ap, thresholds)},
    }


def format_report(metrics: dict) -> str:
    """The report as the console shows it: a table of the labels, then the averages."""
    width = max(len("label"), *(len(c) for c in metrics["per_label"]))
    lines = [f"{'label':<{width}}  precision  recall     f1      AP  support  threshold"]
    for name, row in metrics["per_label"].items():
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:.4f}  "
                     f"{row['ap']:.4f}  {row['support']:7d}  {row['threshold']:9.4f}")
    lines.append(f"micro F1 {metrics['micro_f1']:.4f}, macro F1 {metrics['macro_f1']:.4f}, samples F1 "
                 f"{metrics['samples_f1']:.4f}, mAP {metrics['mAP']:.4f}, exact match {metrics['exact_match']:.4f} "
                 f"({metrics['images']} images)")
    return "\n".join(lines)


def write_evaluation(out: str | Path, classes: Sequence[str], files: Sequence[Path], truth: np.ndarray,
                     probabilities: np.ndarray, thresholds: np.ndarray, extra: dict | None = None,
                     pictures: Sequence[str] = ()) -> dict:
    """report.json (the metrics, `extra` merged in, `pictures` named) and predictions.csv (path,
    true and predicted labels joined by |, each label's probability) in `out`; returns the report."""
    out = Path(out)
    metrics = {**(extra or {}), **report(classes, truth, probabilities, thresholds), "labels": list(classes),
               "files": {"predictions": "predictions.csv", **{Path(p).stem: p for p in pictures}}}
    rows = [["path", "true", "predicted", *(f"p_{c}" for c in classes)]]
    rows += [[str(f), "|".join(c for c, on in zip(classes, t) if on),
              "|".join(c for c, v, cut in zip(classes, p, thresholds) if v >= cut), *(f"{v:.6f}" for v in p)]
             for f, t, p in zip(files, truth, probabilities)]
    write_csv_atomic(out / "predictions.csv", rows)
    write_json_atomic(out / "report.json", metrics)
    return metrics

