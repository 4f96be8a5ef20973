"""Manifests: a table of images and their labels (`path,label[,split]`) instead of class folders.

A manifest is a CSV, TSV or JSON Lines file, or in Python anything shaped like a pandas DataFrame
(it has `columns` and `to_dict("records")`; pandas is not needed). Paths are relative to the
manifest's folder, or to `image_root`; either may be on a bucket (`gs://...`, tlkit.data.folders). Every row is checked before any training, and each problem
is one line naming the file and the line (`labels.csv:12: ...`): a missing or unreadable image,
an empty path or label, an unknown split, a path listed twice, a path outside the image root, the
same content under two labels. The images become the same ImageSet a folder scan makes (one class
per label, sorted; within a class in path order), so a manifest of a folder trains as the folder.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tlkit._util import buckets
from tlkit._util.io import cache_root, write_text_atomic
from tlkit._util.urls import Url, as_path, is_url
from tlkit.data.checks import Progress, inspect_all, printable
from tlkit.data.folders import ImageSet, scan
from tlkit.errors import TlkitError
from tlkit.recipe.schema import MANIFEST_SUFFIXES

SPLITS = ("train", "val", "test")

_MAX_LISTED = 50  # problems listed in one error; the rest are counted


@dataclass(frozen=True)
class Columns:
    """The manifest's column names (--path-column, --label-column, --split-column)."""

    path: str = "path"
    label: str = "label"
    split: str = "split"

    @classmethod
    def of(cls, recipe) -> Columns:
        return cls(recipe.path_column, recipe.label_column, recipe.split_column)


DEFAULT_COLUMNS = Columns()


@dataclass
class Manifest:
    """The checked images of a manifest, and the split each row names ("" where it names none),
    parallel to `images.files`."""

    images: ImageSet
    splits: list[str]

    def part(self, *names: str) -> ImageSet:
        """The images of the rows whose split is one of `names` ("" for rows without one)."""
        return self.images.subset([i for i, s in enumerate(self.splits) if s in names])


def saved_frame(frame) -> Path:
    """A DataFrame's rows as a JSON Lines manifest in tlkit's cache, named by its content, so that
    the recipe of a run trained on it names a file that repeats the run."""
    text = "".join(json.dumps({str(k): v for k, v in row.items()}, default=str) + "\n"
                   for row in frame.to_dict("records"))
    path = cache_root() / "manifests" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    return path


def is_manifest(data) -> bool:
    """Whether `data` is a manifest (a table file, or a DataFrame) rather than a folder."""
    if is_frame(data):
        return True
    if not isinstance(data, str | os.PathLike) or as_path(data).suffix.lower() not in MANIFEST_SUFFIXES:
        return False
    return not (buckets.isdir(data) if is_url(data) else Path(data).is_dir())


def read(source, *, image_root=None, columns: Columns = DEFAULT_COLUMNS, classes=None, skip_bad: bool = False,
         delimiter: str | None = None, progress: Progress | None = None) -> Manifest:
    """The images and labels of a manifest, every row and image checked (see the module's doc).

    `classes` gives the label list and its order (a trained model's); otherwise the labels found,
    sorted. With `skip_bad`, images that cannot be decoded (or whose content is under two labels)
    are skipped and recorded in `skipped`; a problem of the table itself is always an error.
    With a `delimiter` the set is multi-label: a label cell holds any number of labels separated by
    it (none: an image without a label), and the ImageSet has `label_sets`."""
    name, found_columns, rows = _rows(source)
    _check_columns(name, found_columns, columns)
    root = _absolute(as_path(image_root) if image_root is not None else (
        as_path(source).parent if not is_frame(source) else Path.cwd()))
    if not (buckets.isdir(root) if is_url(root) else root.is_dir()):
        raise TlkitError(f"image root '{printable(root)}' of manifest '{name}' is not a folder; pass --image-root DIR")
    problems: list[str] = []  # "where: what", one a line
    entries = []  # (where, path, label, split)
    first_row: dict[str, str] = {}
    for where, row in rows:
        path, label = _cell(row, columns.path), _cell(row, columns.label)
        split = _cell(row, columns.split).lower()
        if not path:
            problems.append(f"{where}: empty path (column '{columns.path}')")
            continue
        if delimiter is not None:
            label = delimiter.join(sorted({token.strip() for token in label.split(delimiter) if token.strip()}))
        elif not label:
            problems.append(f"{where}: empty label (column '{columns.label}') for '{path}'")
        if split not in SPLITS + ("",):
            problems.append(f"{where}: unknown split '{split}' for '{path}'; use train, val or test (or leave it empty)")
        full = root / path if is_url(root) else Path(os.path.normpath(root / path))
        if not full.is_relative_to(root if is_url(root) else Path(os.path.normpath(root))):
            problems.append(f"{where}: '{path}' is outside the image root '{printable(root)}'; "
                            "list images under it, or pass --image-root")
            continue
        if str(full) in first_row:
            problems.append(f"{where}: '{path}' is listed twice (first at {first_row[str(full)]})")
            continue
        first_row[str(full)] = where
        entries.append((where, full, label, split))
    found = sorted({token for _, _, label, _ in entries for token in _labels(label, delimiter)})
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        for where, _, label, _ in entries:
            for token in _labels(label, delimiter):
                if token not in classes:
                    problems.append(f"{where}: label '{token}' is not one of the model's classes ({', '.join(classes)})")
    # the images are checked even when the table has problems, so that one error lists them all
    n_table_problems = len(problems)
    results = inspect_all([full for _, full, _, _ in entries], progress)
    skipped = []
    for (where, full, _, _), (_, problem) in zip(entries, results):
        if problem and skip_bad:
            skipped.append((full, problem))
        elif problem:
            problems.append(f"{where}: '{_shown(full, root)}': {problem}")
    _raise(name, problems, " (or pass --skip-bad to skip bad images)" if len(problems) > n_table_problems else "")
    if len(classes) < 2:
        raise TlkitError(f"manifest '{name}' has {len(classes)} label(s) ({', '.join(classes)}); "
                         "a classifier needs at least 2")

    good = [(entry, digest) for entry, (digest, problem) in zip(entries, results) if not problem]
    keep, duplicates = _one_per_content(good, root, skip_bad, skipped, problems)
    _raise(name, problems, " (or pass --skip-bad to skip them)")
    index = {label: i for i, label in enumerate(classes)}
    if delimiter is None:
        keep.sort(key=lambda item: (index[item[0][2]], item[0][1]))
    else:
        keep.sort(key=lambda item: item[0][1])
    label_sets = [tuple(sorted(index[t] for t in _labels(e[2], delimiter))) for e, _ in keep]
    images = ImageSet(root, classes, [full for (_, full, _, _), _ in keep],
                      [s[0] for s in label_sets] if delimiter is None else [0] * len(keep),
                      skipped, [digest for _, digest in keep], duplicates,
                      label_sets=label_sets if delimiter is not None else [])
    if not images.files:
        raise TlkitError(f"every image of manifest '{name}' is bad ({len(skipped)} skipped)")
    return Manifest(images, [e[3] for e, _ in keep])


def evaluation_set(data, *, classes, skip_bad: bool = False, image_root=None, columns: Columns = DEFAULT_COLUMNS,
                   delimiter: str | None = None, progress: Progress | None = None) -> ImageSet:
    """The images to evaluate a model of `classes` on: a folder's, or a manifest's test rows (all
    its rows when none is marked test)."""
    if not is_manifest(data):
        return scan(data, skip_bad=skip_bad, classes=classes, progress=progress, multilabel=delimiter is not None)
    table = read(data, image_root=image_root, columns=columns, classes=classes, skip_bad=skip_bad, delimiter=delimiter,
                 progress=progress)
    return table.part("test") if "test" in table.splits else table.images


def _one_per_content(good, root: Path, skip_bad: bool, skipped: list, problems: list[str]):
    """The first row of each content; later rows with its label are duplicates, rows with
    another label a problem (or skipped)."""
    by_digest = defaultdict(list)
    for item in good:
        by_digest[item[1]].append(item)
    keep, duplicates = [], []
    for items in by_digest.values():
        labels = {entry[2] for entry, _ in items}
        if len(labels) > 1:
            (where0, full0, label0, _), _ = items[0]
            for (where, full, label, _), _ in items[1:]:
                if label == label0:
                    continue
                why = f"same content as '{_shown(full0, root)}' ({where0}, label '{label0}') but labelled '{label}'"
                if skip_bad:
                    skipped.append((full, why + ": ambiguous label"))
                else:
                    problems.append(f"{where}: '{_shown(full, root)}' has the {why}; keep one label")
            if skip_bad:
                skipped.append((full0, f"its content is also under label(s) {sorted(labels - {label0})}: ambiguous"))
            continue
        keep.append(items[0])
        duplicates += [(entry[1], items[0][0][1]) for entry, _ in items[1:]]
    return keep, duplicates


def _absolute(path: Path | Url) -> Path | Url:
    return path if is_url(path) else path.absolute()


def _labels(label: str, delimiter: str | None) -> list[str]:
    """The labels of a row's (normalised) label cell."""
    if delimiter is None:
        return [label] if label else []
    return label.split(delimiter) if label else []


def _shown(full: Path, root: Path) -> str:
    """An image's path as a manifest row gives it: relative to the image root."""
    return printable(os.path.relpath(full, root))


def _raise(name: str, problems: list[str], also: str = "") -> None:
    if not problems:
        return
    n = len(problems)
    lines = [f"{n} problem{'' if n == 1 else 's'} in manifest '{name}'; fix {'it' if n == 1 else 'them'}{also}:"]
    lines += [f"  {p}" for p in problems[:_MAX_LISTED]]
    if n > _MAX_LISTED:
        lines.append(f"  ... and {n - _MAX_LISTED} more")
    raise TlkitError("\n".join(lines))


def _cell(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None or value != value:  # missing, or a DataFrame's NaN
        return ""
    return str(value).strip()


def _rows(source) -> tuple[str, list[str], list[tuple[str, dict]]]:
    """(the manifest's name in messages, its columns, [(where, row)]): where is `file:line` (the line a row ends
    on) or `DataFrame row INDEX`."""
    if is_frame(source):
        records = source.to_dict("records")
        return "DataFrame", [str(c) for c in source.columns], [(f"DataFrame row {i}", row) for i, row in zip(source.index, records)]
    path = as_path(source)
    name = printable(path)
    if is_url(path) and not buckets.exists(path) or not is_url(path) and not path.exists():
        raise TlkitError(f"manifest '{name}' does not exist")
    if buckets.isdir(path) if is_url(path) else not path.is_file():
        raise TlkitError(f"manifest '{name}' is not a file")
    try:
        text = (buckets.read_bytes(path) if is_url(path) else path.read_bytes()).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise TlkitError(f"cannot read manifest '{name}' ({error})") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise TlkitError(f"{name}:{number}: not a JSON object ({error})") from None
            if not isinstance(row, dict):
                raise TlkitError(f"{name}:{number}: not a JSON object (each line holds one, like "
                                 '{"path": "a.jpg", "label": "cat"})')
            rows.append((f"{name}:{number}", row))
        return name, list(dict.fromkeys(key for _, row in rows for key in row)), rows
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        rows = [(f"{name}:{reader.line_num}", row) for row in reader if any((v or "").strip() for v in row.values())]
    except csv.Error as error:
        raise TlkitError(f"{name}:{reader.line_num}: {error}") from None
    return name, list(reader.fieldnames or []), rows


def _check_columns(name: str, found, columns: Columns) -> None:
    for what in ("path", "label"):
        column = getattr(columns, what)
        if column not in found:
            raise TlkitError(f"manifest '{name}' has no column '{column}' (its columns: {', '.join(found) or 'none'}); "
                             f"name the {what} column with --{what}-column")


def is_frame(data) -> bool:
    return hasattr(data, "columns") and hasattr(data, "to_dict") and hasattr(data, "index")


