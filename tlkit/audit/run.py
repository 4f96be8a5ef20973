"""The audit of a labelled folder or manifest: what is wrong with its labels, its copies and its
odd images.

- label issues: out-of-fold probabilities of K linear heads (logistic regression on L2-normalised
  features) fitted on the base's pooled features (tlkit.engine.frozen.extract: its cache makes a
  second audit cost seconds), then cleanlab: as many images as confident learning counts, lowest
  label quality (`get_label_quality_scores`, lower is worse) first; of multi-label data, cleanlab's
  multi-label `find_label_issues`;
- near-duplicates: perceptual hashes at most DUPLICATE_BITS apart, grouped; groups across the
  train/validation split first, then across classes; the scan's exact copies beside them;
- outliers: the mean cosine distance to the K_NEIGHBOURS nearest images in feature space, far
  above the rest's (a robust z-score over OUTLIER_Z), and grey images among colour ones
  (colourfulness); blank: images of nearly one grey level.

It writes OUT/issues.csv, OUT/summary.json and a gallery per kind (tlkit.audit.gallery).
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlkit._util.io import write_atomic, write_json_atomic
from tlkit.audit import gallery
from tlkit.audit.phash import SIZE, close_pairs, phash
from tlkit.bases import load_base
from tlkit.data import folders, manifest, shards, splits
from tlkit.data.checks import Progress, printable
from tlkit.data.pipeline import load_images
from tlkit.engine import frozen
from tlkit.errors import TlkitError

log = logging.getLogger(__name__)

DUPLICATE_BITS = 10  # of 64: re-saved, resized, brightened copies are within; different photos ~32 apart
HEAD_C = 10.0  # inverse L2 penalty of the out-of-fold heads (on unit-length features)
K_NEIGHBOURS = 5
OUTLIER_Z = 6.0  # robust z-score (median, 1.4826 MAD) of the neighbour distance above which an image is an outlier
BLANK_STD = 0.02  # an image whose grey levels vary less than this (of the full range) is blank
# A grey image (a scan, a digit, a screenshot) among colour photos is from another domain even where
# the base's features place it near them: colourfulness (Hasler & Suesstrunk 2003, 0-255 scale)
# under GREY_COLOURFULNESS while the median image's is over COLOUR_MEDIAN. The sample photos' least
# colourful is 2.6, their median far above 20; a grey image's is 0.
GREY_COLOURFULNESS = 1.0
COLOUR_MEDIAN = 20.0
KINDS = ("label_issue", "duplicate", "outlier", "blank")
COLUMNS = ("path", "kind", "score", "given", "suggested", "group", "split", "detail")


@dataclass
class Audit:
    """What an audit found: the rows of issues.csv and the counts of summary.json."""

    out: Path
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {kind: sum(row["kind"] == kind for row in self.rows) for kind in KINDS}

    def table(self) -> list[str]:
        """The counts, one line per kind, for the console."""
        images = self.summary["images"]
        lines = [f"{'kind':<12} {'images':>6}"]
        lines += [f"{kind:<12} {n:>6}" for kind, n in self.counts().items()]
        lines.append(f"of {images} images; every one in {self.out / 'issues.csv'}")
        return lines


def audit(data, *, base: str | None = None, model: str | None = None, out="audit", val_data=None, folds: int = 5,
          image_size: int | None = None, val_split: float = 0.2, seed: int = 0, skip_bad: bool = False,
          cache=None, batch_size: int = 32, multilabel: bool = False, label_delimiter: str = "|", image_root=None,
          columns: manifest.Columns = manifest.DEFAULT_COLUMNS, verbose: str | int = "auto",
          progress: Progress | None = None) -> Audit:
    """Audit the class folders or the manifest `data` (and `val_data`, else the split training
    would make; a manifest's own validation rows where it names some) with the features of `base`
    (a base spec) or of the trained run `model`; write the audit to `out`. `multilabel`: any number
    of labels an image (a manifest's label cells split by `label_delimiter`), audited with
    cleanlab's multi-label functions."""
    if bool(base) == bool(model):
        raise TlkitError("pass --base NAME (see `tlkit bases`) or --model RUN (a trained run's base), one of them")
    if folds < 2:
        raise TlkitError(f"--folds must be at least 2, not {folds}")
    if multilabel and val_data:
        raise TlkitError("a multi-label audit takes its validation images from the manifest's split column or the "
                         "split training makes: drop --val-data")
    start = time.perf_counter()
    size = (image_size, image_size) if image_size else None
    the_base = load_base(model or base, image_size=size)  # before the scan: a base that cannot load is told first
    size = tuple(the_base.model.input_shape[1:3])
    if None in size:
        size = the_base.input_size
    named_sides = None
    if manifest.is_manifest(data):
        table = manifest.read(data, image_root=image_root, columns=columns, skip_bad=skip_bad,
                              delimiter=label_delimiter if multilabel else None, progress=progress)
        images, named_sides = table.images, table.splits
    else:
        images = shards.scan_or_read(data, skip_bad=skip_bad, progress=progress, multilabel=multilabel)
    if named_sides and "val" in named_sides and not val_data:
        sides = [side or "train" for side in named_sides]
        files, labels, copies = images.files, images.labels, images.duplicates
    elif val_data:
        val = shards.scan_or_read(val_data, skip_bad=skip_bad, classes=images.classes, progress=progress)
        sides = ["train"] * len(images) + ["val"] * len(val)
        files, labels = images.files + val.files, images.labels + val.labels
        copies = images.duplicates + val.duplicates
    else:
        _, val = splits.split(images, val_split, seed)
        in_val = set(val.files)
        sides = ["val" if f in in_val else "train" for f in images.files]
        files, labels, copies = images.files, images.labels, images.duplicates
    classes, labels = images.classes, np.asarray(labels)
    if multilabel:
        labels = images.multi_hot().astype(np.int64)
    _check_folds(classes, labels, folds)
    given = [label_delimiter.join(classes[c] for c in np.flatnonzero(row)) for row in labels] if multilabel else [
        classes[c] for c in labels]

    log.info("auditing %d images in %d classes with %s (%d folds)", len(files), len(classes), the_base.name, folds)
    features = frozen.extract(the_base, files, size, cache=cache, batch_size=batch_size,
                              verbose=verbose)
    grey, colour = thumbnails(files, progress)
    probs = out_of_fold(features, labels, folds, seed)
    out = Path(out)
    rows = ((_multilabel_issues(files, labels, probs, classes, given, label_delimiter) if multilabel else
             _label_issues(files, labels, probs, classes))
            + _duplicates(files, given, sides, phash(grey), copies)
            + _outliers(files, given, features, grey, colour))
    side_of = dict(zip(files, sides))
    for row in rows:
        row.setdefault("split", side_of.get(row["path"], ""))
    result = Audit(out, rows)
    result.summary = {
        "data": printable(data), "val_data": printable(val_data) if val_data else None, "base": the_base.name,
        "image_size": list(size), "folds": folds, "seed": seed, "images": len(files), "classes": classes,
        "out_of_fold_accuracy": round(float(np.mean(np.all((probs > 0.5) == labels, axis=1) if multilabel else
                                                    probs.argmax(1) == labels)), 4),
        "counts": result.counts(), "seconds": round(time.perf_counter() - start, 1),
        "settings": {"duplicate_bits": DUPLICATE_BITS, "neighbours": K_NEIGHBOURS, "outlier_z": OUTLIER_Z,
                     "grey_colourfulness": GREY_COLOURFULNESS,
                     "blank_std": BLANK_STD},
    }
    _write(result, files, classes)
    return result


def _check_folds(classes: list[str], labels: np.ndarray, folds: int) -> None:
    """Every class (of a multi-label set: every label) on at least `folds` images."""
    counts = labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(classes))
    few = [(name, int(n)) for name, n in zip(classes, counts) if n < folds]
    if few:
        listed = ", ".join(f"'{name}' has {folders.n_images(n)}" for name, n in few)
        raise TlkitError(f"{folds}-fold audit needs at least {folds} images per class: {listed}; add images or "
                         f"pass --folds {max(2, min(n for _, n in few))}" if min(n for _, n in few) >= 2 else
                         f"{folds}-fold audit needs at least {folds} images per class: {listed}; add images")


def out_of_fold(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's class probabilities (of multi-hot `labels`: each label's) from a head fitted on
    the other folds, stratified by class (by label set), seeded. The head is a logistic regression
    on the L2-normalised features: the pooled features' direction is what tells the classes apart,
    and on it the out-of-fold probabilities rank flipped labels far better than on standardised
    features (BENCHMARKS.md, issue 22)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier

    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    if len(unit) < unit.shape[1]:
        # The images' coordinates in the span of all of them: an isometry of the images, and an
        # L2-penalised head's weights lie in its training images' span, so the probabilities are
        # the same (to 1e-5), from N columns instead of D (the 240 sample photos' 1280 features:
        # 3.0 s of CPU for the 5 heads instead of 5.0 s).
        u, s, _ = np.linalg.svd(unit, full_matrices=False)
        unit = u * s
    head = LogisticRegression(max_iter=2000, C=HEAD_C)
    strata = labels
    if labels.ndim == 2:
        head = OneVsRestClassifier(head)
        strata = np.unique(labels, axis=0, return_inverse=True)[1].ravel()
    cv = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(unit, strata))
    return cross_val_predict(head, unit, labels, cv=cv, method="predict_proba")


def _label_issues(files, labels, probs, classes) -> list[dict]:
    """The images of lowest label quality (cleanlab's self-confidence), as many as confident
    learning counts (its calibrated off-diagonal count), among those the heads give another class:
    on the sample photos with 10% flips this ranks at precision and recall over 0.85 for every seed
    where cleanlab's own filters trade one for the other."""
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    count = num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated")
    found = [i for i in np.argsort(quality, kind="stable")[:count] if probs[i].argmax() != labels[i]]
    return [{"path": files[i], "kind": "label_issue", "score": round(float(quality[i]), 4),
             "given": classes[labels[i]], "suggested": classes[int(probs[i].argmax())], "group": "",
             "detail": f"p(given) {probs[i, labels[i]]:.2f}, p(suggested) {probs[i].max():.2f}"} for i in found]


def _multilabel_issues(files, labels, probs, classes, given, delimiter) -> list[dict]:
    """cleanlab's multi-label confident learning (a one-vs-rest filter per label), ranked by its
    label quality score; the suggestion is the labels the heads give over 0.5."""
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    label_lists = [np.flatnonzero(row).tolist() for row in labels]
    quality = get_label_quality_scores(label_lists, probs)
    found = find_label_issues(label_lists, probs, return_indices_ranked_by="self_confidence")
    rows = []
    for i in found:
        suggested = delimiter.join(classes[c] for c in np.flatnonzero(probs[i] > 0.5))
        changed = np.flatnonzero((probs[i] > 0.5) != labels[i])
        rows.append({"path": files[i], "kind": "label_issue", "score": round(float(quality[i]), 4),
                     "given": given[i], "suggested": suggested, "group": "",
                     "detail": ", ".join(f"p({classes[c]}) {probs[i, c]:.2f}" for c in changed)})
    return rows


def _duplicates(files, given, sides, hashes, copies) -> list[dict]:
    """Groups of images whose hashes are close, linked through any close pair; the scan's exact
    copies (left out of `files`) joined to their kept file's group."""
    parent = list(range(len(files)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    distance = {}
    for i, j, d in close_pairs(hashes, DUPLICATE_BITS):
        parent[root(j)] = root(i)
        distance[i] = min(distance.get(i, 64), d)
        distance[j] = min(distance.get(j, 64), d)
    index = {f: i for i, f in enumerate(files)}
    exact = {}
    for copy, kept in copies:
        exact.setdefault(index[kept], []).append(copy)
    groups: dict[int, list[int]] = {}
    for i in range(len(files)):
        groups.setdefault(root(i), []).append(i)
    found = [g for g in groups.values() if len(g) > 1 or g[0] in exact]

    def order(members):
        return (len({sides[i] for i in members}) == 1, len({given[i] for i in members}) == 1, members[0])

    rows = []
    for number, members in enumerate(sorted(found, key=order), start=1):
        across = [w for w, many in (("across the split", len({sides[i] for i in members}) > 1),
                                    ("across classes", len({given[i] for i in members}) > 1)) if many]
        detail = ", ".join(across) or "same class, same side"
        for i in members:
            rows.append({"path": files[i], "kind": "duplicate", "score": distance.get(i, 0), "given": given[i],
                         "suggested": "", "group": number, "split": sides[i], "detail": detail})
            rows += [{"path": copy, "kind": "duplicate", "score": 0, "given": given[i], "suggested": "",
                      "group": number, "split": sides[i], "detail": f"exact copy of {printable(files[i])} (left out "
                      "by the scan)"} for copy in exact.get(i, [])]
    return rows


def thumbnails(files, progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
    """The images as grey (N, SIZE, SIZE) in [0, 1] and their colourfulness (Hasler and
    Suesstrunk, 0 for a grey image), from one decoding at SIZE px as training decodes them (the
    grey by ITU-R 601 luma, as a decoder's own grey conversion)."""
    grey, colour = [], []
    if progress:
        progress(0, len(files))
    for first in range(0, len(files), 1024):
        rgb = load_images(files[first:first + 1024], (SIZE, SIZE), 3).astype(np.float64)
        grey.append(rgb @ np.array([0.299, 0.587, 0.114]) / 255.0)
        rgb = rgb.reshape(len(rgb), -1, 3)
        rg = rgb[..., 0] - rgb[..., 1]
        yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
        colour.append(np.hypot(rg.std(1), yb.std(1)) + 0.3 * np.hypot(rg.mean(1), yb.mean(1)))
        if progress:
            progress(first + len(rgb), len(files))
    if not grey:
        return np.zeros((0, SIZE, SIZE)), np.zeros(0)
    return np.concatenate(grey), np.concatenate(colour)


def neighbour_distance(features: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """Each image's mean cosine distance to its k nearest other images."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    k = min(k, len(unit) - 1)
    distances = []
    for first in range(0, len(unit), 1024):
        d = 1 - unit[first:first + 1024] @ unit.T
        for r in range(len(d)):
            d[r, first + r] = np.inf  # not its own neighbour
        distances.append(np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1).mean(axis=1))
    return np.concatenate(distances)


def robust_z(values: np.ndarray) -> np.ndarray:
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / max(spread, 1e-12)


def _outliers(files, given, features, grey, colour) -> list[dict]:
    std = grey.reshape(len(grey), -1).std(axis=1)
    blank = std < BLANK_STD
    distance = neighbour_distance(features)
    z = robust_z(distance[~blank]) if (~blank).sum() > 1 else np.zeros(0)
    far = np.zeros(len(files), bool)
    far[~blank] = z > OUTLIER_Z
    rows = [{"path": files[i], "kind": "blank", "score": round(float(std[i]), 4), "given": given[i],
             "suggested": "", "group": "", "detail": f"grey levels vary by {std[i]:.3f} of the range"}
            for i in np.flatnonzero(blank)]
    z_all = np.zeros(len(files))
    z_all[~blank] = z
    for i in sorted(np.flatnonzero(far), key=lambda i: -distance[i]):
        rows.append({"path": files[i], "kind": "outlier", "score": round(float(distance[i]), 4),
                     "given": given[i], "suggested": "", "group": "",
                     "detail": f"{z_all[i]:.1f} robust standard deviations farther from its nearest images"})
    grey_among_colour = (colour < GREY_COLOURFULNESS) & (np.median(colour) > COLOUR_MEDIAN) if len(colour) else far
    for i in np.flatnonzero(~blank & ~far & grey_among_colour):
        rows.append({"path": files[i], "kind": "outlier", "score": round(float(distance[i]), 4),
                     "given": given[i], "suggested": "", "group": "",
                     "detail": f"grey among colour images (colourfulness {colour[i]:.1f}, the median "
                               f"{np.median(colour):.0f})"})
    return rows


def _write(result: Audit, files, classes) -> None:
    out = result.out
    out.mkdir(parents=True, exist_ok=True)

    def write_csv(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            for row in result.rows:
                writer.writerow({**row, "path": printable(row["path"])})

    write_atomic(out / "issues.csv", write_csv)
    write_json_atomic(out / "summary.json", result.summary)
    for kind, title in (("label_issue", "label_issues"), ("duplicate", "duplicates"), ("outlier", "outliers")):
        rows = [r for r in result.rows if r["kind"] == kind or (kind == "outlier" and r["kind"] == "blank")]
        gallery.draw(rows, out / f"{title}.png", kind)
    log.info("audit of %d images written to %s", len(files), printable(out))
