"""The data report: what a run trains and validates on, found before any training.

`prepare` scans the data (with a progress callback), splits it or scans the separate validation
folder, removes training copies of validation images, and returns the two sets with a
`DataReport`: images per class on each side, warnings (class imbalance, small classes), the
files skipped, the copies counted once, and the SHA-256 of every training image. The report is
saved as `data_report.json` in the run directory, so that `seen_in_training` can later tell
which images of an evaluated folder the run trained on.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tlkit._util.io import write_json_atomic
from tlkit._util.urls import as_path
from tlkit.data import curation, manifest, shards
from tlkit.data.checks import Progress, file_digests, printable
from tlkit.data.folders import ImageSet, scan
from tlkit.data.splits import split
from tlkit.errors import TlkitError
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)

IMBALANCE = 3  # warn when the largest class has more than this many times the smallest's images
FEW = 20  # warn for a class with fewer images than this
_TABLE_ROWS = 20  # classes shown one a line on screen; the JSON always has all of them
_LISTED = 5  # files named on screen per kind of finding; the JSON has all of them


@dataclass
class DataReport:
    """What a run's data holds. Paths are text (names that are not UTF-8 shown with \\x escapes)."""

    data: str
    val_data: str | None
    classes: list[str]
    train: list[int]  # images per class, in the order of `classes`
    val: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file, why): not an image name, no class
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (copy left out, file kept), same class
    overlap: list[tuple[str, str]] = field(default_factory=list)  # (training copy removed, validation file)
    train_digests: list[str] = field(default_factory=list, repr=False)  # SHA-256 of the training images
    # a multi-label set's label combinations ("a|b", "" for none) and their images, commonest first
    combinations: list[tuple[str, int]] | None = None
    excluded: list[str] = field(default_factory=list)  # files left out by --exclude
    relabeled: list[tuple[str, str, str]] = field(default_factory=list)  # (file, class, new class) by --relabel
    split_column: bool = False  # the manifest's `val` rows are the validation set (no seeded split)
    images: list[int] | None = None  # [training, validation] images: of a multi-label set, not the label sum

    @classmethod
    def of(cls, train: ImageSet, val: ImageSet, *, val_data=None,
           overlap: Sequence[tuple[Path, Path]] = ()) -> DataReport:
        """The report of a split (or of training and separate validation sets)."""
        skipped = train.skipped + (val.skipped if val_data else [])
        duplicates = train.duplicates + (val.duplicates if val_data else [])
        ignored = train.ignored + (val.ignored if val_data else [])
        return cls(
            data=printable(train.root), val_data=printable(val.root) if val_data else None, classes=list(train.classes),
            train=train.counts(), val=val.counts(),
            skipped=[(printable(p), why) for p, why in skipped],
            ignored=[(printable(p), why) for p, why in ignored],
            duplicates=[(printable(a), printable(b)) for a, b in duplicates],
            overlap=[(printable(a), printable(b)) for a, b in overlap],
            train_digests=sorted(train.digests),
            combinations=_combinations(train, val) if train.multilabel else None,
            images=[len(train), len(val)],
        )

    @property
    def warnings(self) -> list[str]:
        totals = np.add(self.train, self.val)
        found = []
        if len(self.classes) > 1:
            big, small = int(np.argmax(totals)), int(np.argmin(totals))
            if totals[big] > IMBALANCE * totals[small]:
                found.append(
                    f"class imbalance: '{self.classes[big]}' has {totals[big]} images, '{self.classes[small]}' "
                    f"{totals[small]} ({totals[big] / max(totals[small], 1):.0f}x); the model will lean towards "
                    "the larger classes, and accuracy alone will hide it"
                )
        few = [(name, n) for name, n in zip(self.classes, totals) if n < FEW]
        if few:
            listed = ", ".join(f"'{name}' ({n})" for name, n in few[:_TABLE_ROWS])
            more = f" and {len(few) - _TABLE_ROWS} more" if len(few) > _TABLE_ROWS else ""
            found.append(f"{len(few)} {'class has' if len(few) == 1 else 'classes have'} fewer than {FEW} images: "
                         f"{listed}{more}; too few to learn a class well or to measure it")
        if self.ignored:
            found.append(f"{len(self.ignored)} {_files(len(self.ignored))} in the data not used (every one in "
                         f"{RunDir.DATA_REPORT})" + _examples(f"{p}: {why}" for p, why in self.ignored))
        return found

    def table(self) -> list[str]:
        """Images per class in the training and validation sets, one class a line."""
        width = max(len("total"), *(len(c) for c in self.classes))
        rows = [f"  {'class':<{width}}  {'train':>6}  {'val':>6}"]
        rows += [f"  {c:<{width}}  {t:>6}  {v:>6}" for c, t, v in zip(self.classes, self.train, self.val)]
        if self.combinations is None or self.images is None:
            rows.append(f"  {'total':<{width}}  {sum(self.train):>6}  {sum(self.val):>6}")
        else:  # an image with several labels is in several rows: the images, not the sum
            rows.append(f"  {'images':<{width}}  {self.images[0]:>6}  {self.images[1]:>6}")
        return rows

    def lines(self) -> list[str]:
        """The report in a few lines for the console (the warnings are `warnings`)."""
        where = f"'{self.data}'" + (f", validation '{self.val_data}'" if self.val_data else "")
        if self.combinations is None:
            out = [f"data {where}: {sum(self.train)} training and {sum(self.val)} validation images "
                   f"in {len(self.classes)} classes"]
        else:  # the table counts images per label, so an image is counted once per label it has
            images = sum(n for _, n in self.combinations)
            none = sum(n for combination, n in self.combinations if not combination)
            out = [f"data {where}: {images} images with {len(self.classes)} labels (multi-label), "
                   f"{len(self.combinations)} label combinations, {none} images without a label; images per label:"]
        if len(self.classes) <= _TABLE_ROWS:
            out += self.table()
        else:
            totals = np.add(self.train, self.val)
            low, high = int(np.argmin(totals)), int(np.argmax(totals))
            out.append(f"  images per class: fewest {totals[low]} ('{self.classes[low]}'), median "
                       f"{int(np.median(totals))}, most {totals[high]} ('{self.classes[high]}'); "
                       f"every class in {RunDir.DATA_REPORT}")
        if self.combinations:
            out.append("  commonest combinations: " + ", ".join(
                f"{combination or '(none)'} {n}" for combination, n in self.combinations[:_LISTED]))
        if self.duplicates:
            n = len(self.duplicates)
            out.append(f"{n} {'file repeats' if n == 1 else 'files repeat'} the content of another file of "
                       "its class: counted once, the copies left out"
                       + _examples(f"{copy} = {kept}" for copy, kept in self.duplicates))
        ambiguous = [(p, why) for p, why in self.skipped if why.endswith("ambiguous label")]
        if ambiguous:
            out.append(f"{len(ambiguous)} {_files(len(ambiguous))} with the same content in two classes skipped "
                       "(--skip-bad)" + _examples(p for p, _ in ambiguous))
        if len(self.skipped) > len(ambiguous):
            out.append(f"{len(self.skipped) - len(ambiguous)} bad {_files(len(self.skipped) - len(ambiguous))} "
                       "skipped (--skip-bad)"
                       + _examples(f"{p}: {why}" for p, why in self.skipped if not why.endswith("ambiguous label")))
        if self.excluded:
            out.append(f"{len(self.excluded)} {_files(len(self.excluded))} left out (--exclude)"
                       + _examples(self.excluded))
        if self.relabeled:
            out.append(f"{len(self.relabeled)} {_files(len(self.relabeled))} relabelled (--relabel)"
                       + _examples(f"{p}: {a} -> {b}" for p, a, b in self.relabeled))
        if self.overlap:
            out.append(f"{len(self.overlap)} training {_files(len(self.overlap))} left out: the same content is in "
                       "the validation folder" + _examples(f"{t} = {v}" for t, v in self.overlap))
        return out

    def log(self) -> None:
        """The summary lines at INFO, each warning at WARNING."""
        for line in self.lines():
            log.info("%s", line)
        for warning in self.warnings:
            log.warning("%s", warning)

    def to_json(self) -> dict:
        out = asdict(self)
        out["warnings"] = self.warnings
        out["per_class"] = {c: {"train": t, "val": v} for c, t, v in zip(self.classes, self.train, self.val)}
        return out

    @classmethod
    def from_json(cls, data: dict) -> DataReport:
        names = cls.__dataclass_fields__
        return cls(**{k: [tuple(x) for x in v] if k in ("skipped", "duplicates", "overlap", "ignored", "combinations",
                                                      "relabeled") and v is not None else v
                      for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> DataReport:
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            raise TlkitError(f"cannot read the data report '{path}' ({error})") from None


def prepare(data, *, val_data=None, val_split: float = 0.2, seed: int = 0, skip_bad: bool = False,
            classes: Sequence[str] | None = None, progress: Progress | None = None,
            image_root=None, columns: manifest.Columns = manifest.DEFAULT_COLUMNS, delimiter: str | None = None,
            exclude: str | Path | None = None, relabel: str | Path | None = None,
            ) -> tuple[ImageSet, ImageSet, DataReport]:
    """Scan and check the data (a folder of class folders or a manifest; every file, before any
    training), split it or scan `val_data`, and report. With `val_data`, training files whose
    content is also in the validation folder are left out of training (and listed in the report).
    A manifest's split column decides the split when it names validation rows (its test rows are
    never trained on; rows without a split train). A `delimiter` makes the set multi-label: a
    manifest's label cells split by it, a folder's copies of one content in several class folders
    one image with those labels. `exclude` and `relabel` (CSV files, tlkit.data.curation) leave
    files of `data` out or change their class, before the split."""
    def load(source, classes):
        if shards.is_pack(source):
            return shards.image_set(source), None
        if not manifest.is_manifest(source):
            return scan(source, skip_bad=skip_bad, classes=classes, progress=progress,
                        multilabel=delimiter is not None), None
        table = manifest.read(source, image_root=image_root, columns=columns, classes=classes, skip_bad=skip_bad,
                              delimiter=delimiter, progress=progress)
        if "val" in table.splits and not val_data:
            return table.part("train", ""), table.part("val")
        return table.part("train", "val", ""), None

    images, val = load(data, classes)
    excluded, relabeled = [], []
    if exclude:
        images, excluded = curation.exclude(images, exclude)
        if val is not None:  # the manifest's own validation rows
            val, more = curation.exclude(val, exclude)
            excluded += more
    if relabel:
        images, relabeled = curation.relabel(images, relabel)
        if val is not None:
            val, more = curation.relabel(val, relabel)
            relabeled += more
    split_column = val is not None
    if val is not None:
        train, overlap = without(images, val)
    elif val_data:
        val = load(val_data, images.classes)[0]
        train, overlap = without(images, val)
    else:
        (train, val), overlap = split(images, val_split, seed), []
    report = DataReport.of(train, val, val_data=val_data, overlap=overlap)
    report.excluded = [printable(p) for p in excluded]
    report.relabeled = [(printable(p), a, b) for p, a, b in relabeled]
    report.split_column = split_column
    return train, val, report


def _combinations(train: ImageSet, val: ImageSet) -> list[tuple[str, int]]:
    counts = Counter("|".join(train.classes[i] for i in labels) for labels in train.label_sets + val.label_sets)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def without(train: ImageSet, val: ImageSet) -> tuple[ImageSet, list[tuple[Path, Path]]]:
    """`train` without the files whose content is in `val`, and the (training file, validation
    file) pairs left out. A class left with no training images is an error."""
    in_val = dict(zip(val.digests, val.files))
    keep = [i for i, d in enumerate(train.digests) if d not in in_val]
    overlap = [(train.files[i], in_val[d]) for i, d in enumerate(train.digests) if d in in_val]
    kept = train.subset(keep)
    before = train.counts()
    for name, n, m in zip(train.classes, before, kept.counts()):
        if n and not m:
            raise TlkitError(
                f"class '{name}' has no training images left: all {n} are also in the validation folder "
                f"'{printable(val.root)}'; a model cannot be validated on the images it trains on"
            )
    return kept, overlap


def seen_in_training(run, images: ImageSet | Sequence[Path]) -> list[Path] | None:
    """The files of `images` whose content (SHA-256) was among the training images of the run
    directory `run`, in order; None when the run has no data report (made by an older tlkit)."""
    path = RunDir(run).data_report
    if not path.is_file():
        return None
    trained = set(DataReport.load(path).train_digests)
    if isinstance(images, ImageSet):
        files, digests = images.files, images.digests or file_digests(images.files)
    else:
        files = [as_path(p) for p in images]
        digests = file_digests(files)
    return [f for f, d in zip(files, digests) if d in trained]


def training_overlap_warning(run, images: ImageSet) -> str | None:
    """The line `tlkit evaluate` shows when images it evaluates were among the run's training
    images (by content), or None when none were (or the run has no data report)."""
    seen = seen_in_training(run, images)
    if not seen:
        return None
    return (f"{len(seen)} of the {len(images)} images in '{printable(images.root)}' were among the training images "
            f"of '{printable(run)}' (same content, e.g. '{printable(seen[0])}'): the accuracy on them is not a "
            "fair test")


def console_progress(stream=None, what: str = "checked") -> Progress:
    """A `progress` callback for `scan` that shows a bar on `stream` (stderr by default), a new
    one each time a scan starts (done == 0), with the rate and the time left. On a terminal the
    bar is redrawn in place at most ten times a second; elsewhere (a log file) a plain line is written every 10 seconds and at
    the end, so a long scan is never silent."""
    stream = stream or sys.stderr
    live = stream.isatty()
    state = {"start": 0.0, "last": 0.0}

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0:
            state["start"] = state["last"] = now
            return
        if done < total and now - state["last"] < (0.1 if live else 10):
            return
        state["last"] = now
        elapsed = now - state["start"]
        filled = int(30 * done / total)
        eta = f", {elapsed * (total - done) / done:.0f} s left" if done < total else ""
        rate = f", {done / elapsed:,.0f}/s" if elapsed > 0 else ""
        line = (f"{done:>{len(str(total))}}/{total} [{'=' * filled}{'.' * (30 - filled)}] "
                f"{what} in {elapsed:.1f} s{rate}{eta}")
        stream.write(f"\r{line}\033[K" if live else f"{line}\n")
        if live and done == total:
            stream.write("\n")
        stream.flush()

    return update


def _files(n: int) -> str:
    return "file" if n == 1 else "files"


def _examples(items) -> str:
    items = list(items)
    shown = "; ".join(items[:_LISTED])
    return f": {shown}" + (f"; ... ({len(items) - _LISTED} more in {RunDir.DATA_REPORT})" if len(items) > _LISTED else "")
