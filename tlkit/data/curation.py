"""Acting on an audit: leave files out of a scanned set (`--exclude CSV`) or give them another
class (`--relabel CSV`). Either CSV names files in a `path` column (an audit's issues.csv works
as it is); a relabel CSV has a `label` column too. A path is matched as written, from the current
folder, or from the data folder."""
from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path

from tlkit.data.checks import printable
from tlkit.data.folders import ImageSet, n_images
from tlkit.errors import TlkitError, unknown_name

log = logging.getLogger(__name__)


def read_rows(path: str | Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV that must have `columns`; one line naming the file and the missing column else."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except OSError as err:
        raise TlkitError(f"cannot read '{printable(path)}': {err.strerror or err}") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise TlkitError(f"'{printable(path)}' is not a UTF-8 CSV file ({err})") from None
    for column in columns:
        if column not in header:
            raise TlkitError(f"'{printable(path)}' has no '{column}' column (its header: {', '.join(header) or 'none'}); "
                             f"give a CSV with a header line naming {', '.join(columns)}")
    return rows


def _index(images: ImageSet) -> dict[Path, int]:
    return {Path(f).resolve(): i for i, f in enumerate(images.files)}


def _find(index: dict[Path, int], root: Path, text: str) -> int | None:
    for candidate in (Path(text), root / text):
        found = index.get(candidate.resolve())
        if found is not None:
            return found
    return None


def exclude(images: ImageSet, csv_path: str | Path) -> tuple[ImageSet, list[Path]]:
    """`images` without the files the CSV's `path` column names, and the files left out. Paths
    that are not among the images (already gone, another folder) are counted in a warning."""
    rows = read_rows(csv_path, ("path",))
    index = _index(images)
    drop = {_find(index, images.root, row["path"]) for row in rows}
    missing = sum(1 for row in rows if _find(index, images.root, row["path"]) is None)
    drop.discard(None)
    if missing:
        log.warning("%d of the %d paths in %s are not images of '%s': nothing to leave out for them", missing,
                    len(rows), printable(csv_path), printable(images.root))
    kept = images.subset([i for i in range(len(images)) if i not in drop])
    for name, n, m in zip(images.classes, images.counts(), kept.counts()):
        if n and not m:
            raise TlkitError(f"--exclude {printable(csv_path)} leaves class '{name}' with no images (all {n} listed); "
                             "remove some of its rows")
    left_out = [images.files[i] for i in sorted(drop)]
    log.info("%s left out (--exclude %s)", n_images(len(left_out)), printable(csv_path))
    return kept, left_out


def relabel(images: ImageSet, csv_path: str | Path) -> tuple[ImageSet, list[tuple[Path, str, str]]]:
    """`images` with the class of each file named in the CSV set to its `label`, and the
    (file, old class, new class) changes. A label that is not a class is an error."""
    if images.multilabel:
        raise TlkitError(f"--relabel {printable(csv_path)}: the data is multi-label; edit the labels in its manifest")
    rows = read_rows(csv_path, ("path", "label"))
    index = _index(images)
    labels, changes, missing = list(images.labels), [], 0
    for row in rows:
        i = _find(index, images.root, row["path"])
        if i is None:
            missing += 1
            continue
        name = row["label"]
        if name not in images.classes:
            raise unknown_name("class", name, images.classes,
                               hint=f"choose one of: {', '.join(images.classes)} (--relabel {printable(csv_path)})")
        new = images.classes.index(name)
        if new != labels[i]:
            changes.append((images.files[i], images.classes[labels[i]], name))
            labels[i] = new
    if missing:
        log.warning("%d of the %d paths in %s are not images of '%s': not relabelled", missing, len(rows),
                    printable(csv_path), printable(images.root))
    log.info("%s relabelled (--relabel %s)", n_images(len(changes)), printable(csv_path))
    return replace(images, labels=labels), changes
