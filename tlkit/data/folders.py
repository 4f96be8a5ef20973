"""Folders of images: scan and check them (every file, before any training), hash them, and say
what is wrong with a bad one. A data folder holds one sub-folder per class: `DIR/<class>/<image>`
(deeper sub-folders inside a class are searched too).

Every scanned file is also hashed (SHA-256 of its bytes, from the same read that checks it), so
that copies of one content are found: within a class they count once, across two classes they
are an error (the label is ambiguous), and a split never puts one content on both sides.

The folder may be on a bucket (`gs://...`, any scheme `tf.io.gfile` serves): it is listed in one
walk, its files are held as `Url`s (a Path would fold `gs://` into `gs:/`) and read by
`tf.io.gfile` and `tf.io.read_file`."""
from __future__ import annotations

import logging
import os
import stat
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tlkit._util import buckets
from tlkit._util.urls import Url, is_url
from tlkit.data.checks import Progress, inspect_all, printable
from tlkit.errors import TlkitError

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".avif", ".bmp", ".gif", ".heic", ".heif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


_MAX_LISTED = 50  # bad files listed in one error; the rest are counted


@dataclass
class ImageSet:
    """The images of a class-folder dataset, in scan order, with their integer labels."""

    root: Path | Url
    classes: list[str]
    files: list[Path] = field(repr=False)
    labels: list[int] = field(repr=False)
    # files the scan skipped, with the reason; kept on subsets so a split still reports them
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    # SHA-256 of each file's bytes, parallel to `files` (empty for a set not made by a scan)
    digests: list[str] = field(default_factory=list, repr=False)
    # (copy, kept): files left out because an earlier file of the same class has the same content
    duplicates: list[tuple[Path, Path]] = field(default_factory=list, repr=False)
    # (file, why): files in the folder that are not read at all (no image extension, no class)
    ignored: list[tuple[Path, str]] = field(default_factory=list, repr=False)
    # a multi-label set's labels of each file (parallel to `files`; empty for a single-label set,
    # whose `labels` then hold each file's one label; a multi-label set's `labels` are unused, 0)
    label_sets: list[tuple[int, ...]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        return replace(
            self, files=[self.files[i] for i in indices], labels=[self.labels[i] for i in indices],
            digests=[self.digests[i] for i in indices] if self.digests else [],
            label_sets=[self.label_sets[i] for i in indices] if self.label_sets else [],
        )

    @property
    def multilabel(self) -> bool:
        return bool(self.label_sets)

    def multi_hot(self) -> np.ndarray:
        """(images, classes) float32: 1 where an image has the class."""
        targets = np.zeros((len(self.files), len(self.classes)), np.float32)
        for row, labels in enumerate(self.label_sets):
            targets[row, list(labels)] = 1
        return targets

    def counts(self) -> list[int]:
        """Images per class, in the order of `classes` (of a multi-label set: images with it)."""
        if self.multilabel:
            return self.multi_hot().sum(axis=0).astype(np.int64).tolist()
        return np.bincount(np.asarray(self.labels, np.int64), minlength=len(self.classes)).tolist()


def scan(root, *, skip_bad: bool = False, classes: Sequence[str] | None = None, min_per_class: int = 1,
         progress: Progress | None = None, multilabel: bool = False) -> ImageSet:
    """Find the classes and images under `root` and check that every image decodes.

    Classes are the sub-folders, sorted by name, unless `classes` gives the list and its order
    (a trained model's labels); then a sub-folder outside it is an error, and classes without a
    folder are allowed. Hidden files and folders are ignored; files without an image extension, and
    files beside the class folders, are not read and are listed in `ignored`, with the reason.
    Each image is decoded the way training will decode it (a large JPEG at 1/8 of its size, which
    still reads all of it), so a bad file is found now
    rather than mid-training: by default one TlkitError lists them all; with `skip_bad` they are
    left out and recorded in `skipped`. `progress(done, total)` is called as files are checked.

    Files with the same content (SHA-256 of the bytes): within a class the first in scan order is
    kept and the copies are left out, listed in `duplicates`; in two classes they are an error
    naming both paths, or with `skip_bad` every copy is skipped, with the reason; of a
    `multilabel` set they are one image with the labels of all their folders (`label_sets`).
    """
    root = _folder(root, "give a folder with one sub-folder per class")
    folders, beside, list_images = _children(root)
    if not folders:
        loose = any(_is_image_name(p) for p in beside)
        raise TlkitError(
            f"no class sub-folders in '{printable(root)}': put each class's images in '{printable(root)}/<class>/'"
            + (" (the images directly inside it have no class)" if loose else "")
        )
    for name in folders:
        _check_class_name(name, root)
    if classes is None:
        classes = folders
        if len(classes) == 1:
            raise TlkitError(
                f"only one class folder ('{classes[0]}') in '{printable(root)}': a classifier needs at least 2 classes"
            )
    else:
        classes = list(classes)
        for name in folders:
            if name not in classes:
                raise TlkitError(
                    f"folder '{name}' in '{printable(root)}' is not one of the model's classes ({', '.join(classes)}); "
                    "remove it or use a folder with only those classes"
                )

    files, labels = [], []
    ignored = [(p, "beside the class folders, so it has no class: move it into a class folder") for p in beside]
    for label, name in enumerate(classes):
        if name not in folders:
            continue
        found = list_images(root / name, ignored)
        if not found:
            raise TlkitError(
                f"class '{name}' has no images in '{printable(root / name)}'; add some or remove the folder"
            )
        files += found
        labels += [label] * len(found)

    digests, problems = _check_all(files, root, skip_bad, progress)
    images = _without_copies(ImageSet(root, classes, files, labels, problems, digests, ignored=ignored), skip_bad,
                             multilabel)

    counts = images.counts()
    label_of = dict(zip(files, labels))
    skipped = np.bincount([label_of[path] for path, _ in images.skipped], minlength=len(classes))
    copies = np.bincount([label_of[copy] for copy, _ in images.duplicates], minlength=len(classes))
    for label, name in enumerate(classes):
        if name in folders and counts[label] < min_per_class:
            raise TlkitError(
                f"class '{name}' has {n_images(counts[label])}"
                + (f" ({skipped[label]} bad skipped)" if skipped[label] else "")
                + (f" ({copies[label]} copies of its other images counted once)" if copies[label] else "")
                + f"; need at least {min_per_class}"
            )
    return images


def scan_unlabeled(root, *, skip_bad: bool = False, progress: Progress | None = None) -> ImageSet:
    """Every image under `root`, directly in it or in sub-folders at any depth, for training without
    labels (an autoencoder). Folder names are ignored: the set has one class, "unlabeled", so that
    `split` draws a plain random validation split from it. Images are validated as in `scan`, and
    copies of one content count once.
    """
    root = _folder(root, "give a folder of images (sub-folders are searched too)")
    ignored = []
    files = _list_images(root, ignored, buckets.tree(root) if is_url(root) else None)
    if not files:
        raise TlkitError(f"no images in '{printable(root)}' or its sub-folders")
    digests, problems = _check_all(files, root, skip_bad, progress)
    images = _without_copies(ImageSet(root, ["unlabeled"], files, [0] * len(files), problems, digests,
                                      ignored=ignored), skip_bad)
    if not images.files:
        raise TlkitError(f"every image in '{printable(root)}' is bad ({len(files)} skipped)")
    return images


def _without_copies(images: ImageSet, skip_bad: bool, multilabel: bool = False) -> ImageSet:
    """`images` (all checked, bad ones in `skipped`) without bad files and extra copies of a content
    (of a `multilabel` set, copies in other classes give the kept file their labels).

    A scanned set holds each content once, so `split` cannot put one content on both sides."""
    bad = {path for path, _ in images.skipped}
    by_digest = defaultdict(list)  # digest -> indices of the good files with it, in scan order
    for i, (path, digest) in enumerate(zip(images.files, images.digests)):
        if path not in bad:
            by_digest[digest].append(i)
    keep, duplicates, conflicts = [], [], []
    label_sets = {}
    for indices in by_digest.values():
        if multilabel:
            label_sets[indices[0]] = tuple(sorted({images.labels[i] for i in indices}))
            keep.append(indices[0])
            duplicates += [(images.files[i], images.files[indices[0]]) for i in indices[1:]
                           if images.labels[i] in {images.labels[j] for j in indices[:indices.index(i)]}]
            continue
        if len({images.labels[i] for i in indices}) > 1:
            conflicts.append(indices)
            continue
        keep.append(indices[0])
        duplicates += [(images.files[i], images.files[indices[0]]) for i in indices[1:]]
    skipped = list(images.skipped)
    if conflicts:
        def where(i):
            return f"'{printable(images.files[i])}' (class '{images.classes[images.labels[i]]}')"

        if not skip_bad:
            lines = [f"{len(conflicts)} {'image is' if len(conflicts) == 1 else 'images are'} filed under two "
                     f"classes in '{printable(images.root)}' (same file content, so the label is ambiguous); "
                     "keep each in one class, or pass --skip-bad to skip them:"]
            lines += [f"  {' = '.join(where(i) for i in indices)}" for indices in conflicts[:_MAX_LISTED]]
            if len(conflicts) > _MAX_LISTED:
                lines.append(f"  ... and {len(conflicts) - _MAX_LISTED} more")
            raise TlkitError("\n".join(lines))
        for indices in conflicts:
            for i in indices:
                others = ", ".join(where(j) for j in indices if j != i)
                skipped.append((images.files[i], f"same content as {others}: ambiguous label"))
    keep.sort()
    kept = replace(images.subset(keep), skipped=skipped, duplicates=duplicates)
    if multilabel:
        kept.label_sets = [label_sets[i] for i in keep]
    return kept


def _check_all(files: list[Path], root: Path, skip_bad: bool, progress: Progress | None):
    """The digest of every file (None for a file that cannot be read) and the bad files among
    them; unless `skip_bad`, one error that names every bad file."""
    log.info("checking %s in %s", n_images(len(files)), printable(root))
    results = inspect_all(files, progress)
    problems = [(path, problem) for path, (_, problem) in zip(files, results) if problem]
    if problems and not skip_bad:
        advice = f" in '{printable(root)}'; fix or remove them, or pass --skip-bad to skip them"
        raise TlkitError(bad_files_message(problems, advice))
    return [digest for digest, _ in results], problems


def images_at(url: str) -> list[Url]:
    """The images a bucket's `url` names (as `tlkit predict` takes its paths): the file itself, or
    the image files under the folder, at any depth (hidden ones and other files left out)."""
    url = Url(url)
    if not buckets.exists(url):
        raise TlkitError(f"'{printable(url)}' does not exist: pass image files or folders of images")
    if not buckets.isdir(url):
        return [url]
    found = _list_images(url, [], buckets.tree(url))
    if not found:
        raise TlkitError(f"no images in folder '{printable(url)}' or its sub-folders")
    return found


def _folder(root, advice: str) -> Path | Url:
    if is_url(root):
        root = Url(root)
        if not buckets.exists(root):
            raise TlkitError(f"data folder '{printable(root)}' does not exist: check the bucket and the path")
        if not buckets.isdir(root):
            raise TlkitError(f"data path '{printable(root)}' is not a folder; {advice}")
        return root
    root = Path(root)
    if not root.exists():
        raise TlkitError(f"data folder '{printable(root)}' does not exist")
    if not root.is_dir():
        raise TlkitError(f"data path '{printable(root)}' is not a folder; {advice}")
    return root


def _check_class_name(name: str, root: Path) -> None:
    """A class name must be one line of valid UTF-8: labels.txt holds one name a line."""
    if printable(name) != name:
        raise TlkitError(
            f"class folder name '{printable(name)}' in '{printable(root)}' is not valid UTF-8, so it cannot be "
            "written to labels.txt: rename the folder"
        )
    if name.splitlines() != [name]:
        raise TlkitError(
            f"class folder name {name!r} in '{printable(root)}' holds a line break, so it cannot be one line "
            "of labels.txt: rename the folder"
        )


def _is_image_name(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _children(root: Path | Url):
    """The class folders of `root` (names, sorted), the other entries beside them (sorted), hidden
    ones left out, and what lists the images of a folder (`_list_images`): of a bucket, from the
    one walk made here."""
    if is_url(root):
        tree = buckets.tree(root)
        dirs, files = tree[root]
        return (sorted(d for d in dirs if not d.startswith(".")),
                [root / f for f in sorted(files) if not f.startswith(".")],
                lambda folder, ignored: _list_images(folder, ignored, tree))
    children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    return [p.name for p in children if p.is_dir()], [p for p in children if not p.is_dir()], _list_images


def _walk(folder, tree: dict | None):
    """(folder, its file names) of `folder` and the folders under it, depth first, sub-folders in
    name order, hidden ones left out: by `os.walk`, or over a bucket's `tree` (buckets.tree)."""
    if tree is None:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            yield Path(dirpath), filenames
        return
    dirs, files = tree[folder]
    yield folder, files
    for name in sorted(d for d in dirs if not d.startswith(".")):
        yield from _walk(folder / name, tree)


def _list_images(folder: Path | Url, ignored: list[tuple[Path, str]], tree: dict | None = None) -> list[Path]:
    """The image files under `folder`, at any depth (of a bucket: in its `tree`); the other files
    (not hidden) are added to `ignored` with the reason."""
    found = []
    for dirpath, filenames in _walk(folder, tree):
        for name in sorted(filenames):
            path = dirpath / name
            if _is_image_name(path):
                found.append(path)
            elif not name.startswith("."):
                ignored.append((path, _not_an_image_name(path)))
    return found


# the first bytes of the formats Pillow reads here, to name an image that lacks its extension
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"II*\0": "TIFF",
          b"MM\0*": "TIFF"}


def _not_an_image_name(path: Path) -> str:
    """Why a file without an image extension is not read; a regular file's first bytes are
    looked at, to say when it is an image all the same."""
    head = b""
    try:
        if is_url(path):
            head = buckets.read_bytes(path, 16)
        elif stat.S_ISREG(os.stat(path).st_mode):  # never open a pipe: reading it could wait for ever
            with open(path, "rb") as f:
                head = f.read(16)
    except OSError:
        pass
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WebP"
    extensions = ", ".join(IMAGE_EXTENSIONS)
    if kind:
        return f"a {kind} image without an image extension: rename it with one ({extensions}) to use it"
    return f"not an image file name ({path.suffix or 'no extension'}; images end in {extensions})"


def n_images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def bad_files_message(problems: list[tuple[Path, str]], advice: str) -> str:
    n = len(problems)
    lines = [f"{n} bad image {'file' if n == 1 else 'files'}{advice}:"]
    lines += [f"  {printable(path)}: {problem}" for path, problem in problems[:_MAX_LISTED]]
    if n > _MAX_LISTED:
        lines.append(f"  ... and {n - _MAX_LISTED} more")
    return "\n".join(lines)
