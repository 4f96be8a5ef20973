"""The audit of a labelled folder: what is wrong with its labels, its copies and its odd images.

- label issues: out-of-fold probabilities of K linear heads (scaled logistic regression) fitted
  on the base's pooled features (tlkit.engine.frozen.extract: its cache makes a second audit
  cost seconds), then cleanlab's confident learning (`find_label_issues`) and its label quality
  score (`get_label_quality_scores`, lower is worse);
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
from tlkit.data import folders, shards, splits
from tlkit.data.checks import Progress, printable
from tlkit.data.pipeline import load_images
from tlkit.engine import frozen
from tlkit.errors import TlkitError

log = logging.getLogger(__name__)

DUPLICATE_BITS = 10  # of 64: re-saved, resized, brightened copies are within; different photos ~32 apart
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
          cache=None, batch_size: int = 32, verbose: str | int = "auto", progress: Progress | None = None) -> Audit:
    """Audit the class folders of `data` (and `val_data`, else the split training would make) with
    the features of `base` (a base spec) or of the trained run `model`; write the audit to `out`."""
    if bool(base) == bool(model):
        raise TlkitError("pass --base NAME (see `tlkit bases`) or --model RUN (a trained run's base), one of them")
    if folds < 2:
        raise TlkitError(f"--folds must be at least 2, not {folds}")
    start = time.perf_counter()
    size = (image_size, image_size) if image_size else None
    the_base = load_base(model or base, image_size=size)  # before the scan: a base that cannot load is told first
    size = tuple(the_base.model.input_shape[1:3])
    if None in size:
        size = the_base.input_size
    images = shards.scan_or_read(data, skip_bad=skip_bad, progress=progress)
    if val_data:
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
    _check_folds(classes, labels, folds)

    log.info("auditing %d images in %d classes with %s (%d folds)", len(files), len(classes), the_base.name, folds)
    features = frozen.extract(the_base, files, size, cache=cache, batch_size=batch_size,
                              verbose=verbose)
    grey = _grey(files, progress)
    colour = colourfulness(files)
    probs = out_of_fold(features, labels, folds, seed)
    out = Path(out)
    rows = (_label_issues(files, labels, probs, classes)
            + _duplicates(files, labels, sides, classes, phash(grey), copies)
            + _outliers(files, labels, features, grey, colour, classes))
    side_of = dict(zip(files, sides))
    for row in rows:
        row.setdefault("split", side_of.get(row["path"], ""))
    result = Audit(out, rows)
    result.summary = {
        "data": printable(data), "val_data": printable(val_data) if val_data else None, "base": the_base.name,
        "image_size": list(size), "folds": folds, "seed": seed, "images": len(files), "classes": classes,
        "out_of_fold_accuracy": round(float(np.mean(probs.argmax(1) == labels)), 4),
        "counts": result.counts(), "seconds": round(time.perf_counter() - start, 1),
        "settings": {"duplicate_bits": DUPLICATE_BITS, "neighbours": K_NEIGHBOURS, "outlier_z": OUTLIER_Z,
                     "grey_colourfulness": GREY_COLOURFULNESS,
                     "blank_std": BLANK_STD},
    }
    _write(result, files, classes)
    return result


def _check_folds(classes: list[str], labels: np.ndarray, folds: int) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    few = [(name, int(n)) for name, n in zip(classes, counts) if n < folds]
    if few:
        listed = ", ".join(f"'{name}' has {folders.n_images(n)}" for name, n in few)
        raise TlkitError(f"{folds}-fold audit needs at least {folds} images per class: {listed}; add images or "
                         f"pass --folds {max(2, min(n for _, n in few))}" if min(n for _, n in few) >= 2 else
                         f"{folds}-fold audit needs at least {folds} images per class: {listed}; add images")


def out_of_fold(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's class probabilities from a head fitted on the other folds (stratified, seeded)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.3))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(head, features, labels, cv=cv, method="predict_proba")


def _label_issues(files, labels, probs, classes) -> list[dict]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs)
    found = find_label_issues(labels, probs, filter_by="both", return_indices_ranked_by="self_confidence")
    return [{"path": files[i], "kind": "label_issue", "score": round(float(quality[i]), 4),
             "given": classes[labels[i]], "suggested": classes[int(probs[i].argmax())], "group": "",
             "detail": f"p(given) {probs[i, labels[i]]:.2f}, p(suggested) {probs[i].max():.2f}"} for i in found]


def _duplicates(files, labels, sides, classes, hashes, copies) -> list[dict]:
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
        return (len({sides[i] for i in members}) == 1, len({labels[i] for i in members}) == 1, members[0])

    rows = []
    for number, members in enumerate(sorted(found, key=order), start=1):
        across = [w for w, many in (("across the split", len({sides[i] for i in members}) > 1),
                                    ("across classes", len({labels[i] for i in members}) > 1)) if many]
        detail = ", ".join(across) or "same class, same side"
        for i in members:
            rows.append({"path": files[i], "kind": "duplicate", "score": distance.get(i, 0), "given": classes[labels[i]],
                         "suggested": "", "group": number, "split": sides[i], "detail": detail})
            rows += [{"path": copy, "kind": "duplicate", "score": 0, "given": classes[labels[i]], "suggested": "",
                      "group": number, "split": sides[i], "detail": f"exact copy of {printable(files[i])} (left out "
                      "by the scan)"} for copy in exact.get(i, [])]
    return rows


def _grey(files, progress: Progress | None) -> np.ndarray:
    """The images as grey (N, SIZE, SIZE) in [0, 1], decoded as training decodes them."""
    out = []
    if progress:
        progress(0, len(files))
    for first in range(0, len(files), 256):
        batch = load_images(files[first:first + 256], (SIZE, SIZE), 1)[..., 0] / 255.0
        out.append(batch)
        if progress:
            progress(first + len(batch), len(files))
    return np.concatenate(out) if out else np.zeros((0, SIZE, SIZE))


def colourfulness(files) -> np.ndarray:
    """Hasler and Suesstrunk's colourfulness of each image (0 for a grey one), on SIZE-px thumbnails."""
    values = []
    for first in range(0, len(files), 256):
        rgb = load_images(files[first:first + 256], (SIZE, SIZE), 3).astype(np.float64)
        rgb = rgb.reshape(len(rgb), -1, 3)
        rg = rgb[..., 0] - rgb[..., 1]
        yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
        values.append(np.hypot(rg.std(1), yb.std(1)) + 0.3 * np.hypot(rg.mean(1), yb.mean(1)))
    return np.concatenate(values) if values else np.zeros(0)


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


def _outliers(files, labels, features, grey, colour, classes) -> list[dict]:
    std = grey.reshape(len(grey), -1).std(axis=1)
    blank = std < BLANK_STD
    distance = neighbour_distance(features)
    z = robust_z(distance[~blank]) if (~blank).sum() > 1 else np.zeros(0)
    far = np.zeros(len(files), bool)
    far[~blank] = z > OUTLIER_Z
    rows = [{"path": files[i], "kind": "blank", "score": round(float(std[i]), 4), "given": classes[labels[i]],
             "suggested": "", "group": "", "detail": f"grey levels vary by {std[i]:.3f} of the range"}
            for i in np.flatnonzero(blank)]
    z_all = np.zeros(len(files))
    z_all[~blank] = z
    for i in sorted(np.flatnonzero(far), key=lambda i: -distance[i]):
        rows.append({"path": files[i], "kind": "outlier", "score": round(float(distance[i]), 4),
                     "given": classes[labels[i]], "suggested": "", "group": "",
                     "detail": f"{z_all[i]:.1f} robust standard deviations farther from its nearest images"})
    grey_among_colour = (colour < GREY_COLOURFULNESS) & (np.median(colour) > COLOUR_MEDIAN) if len(colour) else far
    for i in np.flatnonzero(~blank & ~far & grey_among_colour):
        rows.append({"path": files[i], "kind": "outlier", "score": round(float(distance[i]), 4),
                     "given": classes[labels[i]], "suggested": "", "group": "",
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
