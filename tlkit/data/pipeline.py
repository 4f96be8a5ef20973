"""Folders of images: scan and validate them, split them, and feed them to Keras with tf.data.

A data folder holds one sub-folder per class: `DIR/<class>/<image>` (deeper sub-folders inside a
class are searched too). Every image goes through one decoder, `decode_image`, which is pure
TensorFlow so that the exported serving signature decodes exactly as training did. TensorFlow
reads JPEG, PNG, GIF and WebP; the other formats Pillow opens (BMP, TIFF, ...) are re-encoded
by Pillow as PNG on the way in, so they too end up in `decode_image`.

Every scanned file is also hashed (SHA-256 of its bytes, from the same read that checks it), so
that copies of one content are found: within a class they count once, across two classes they
are an error (the label is ambiguous), and a split never puts one content on both sides.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import logging
import os
import stat
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from tlkit.data import augment as augmentation
from tlkit.data import imagecache
from tlkit.errors import TlkitError

log = logging.getLogger(__name__)

# progress(done, total): called while files are checked, first with done=0
Progress = Callable[[int, int], None]

IMAGE_EXTENSIONS = (".avif", ".bmp", ".gif", ".heic", ".heif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Images that would decode to more pixels are refused by name: Pillow's decompression-bomb limit
# (about 89.5 megapixels). A JPEG counts at 1/8 of its size, the scale every path decodes it at
# when it is large, so a 12,000 x 12,000 photo is taken and a PNG of that size is not.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# Decodes of more pixels than this (after any JPEG reduction) run one at a time in the scan, so
# its threads never hold several huge images at once: a 9,000 x 9,000 PNG alone is 243 MB.
_LARGE_DECODE = 16_000_000
_large_decodes = threading.BoundedSemaphore(1)
# Modes Pillow writes as 8-bit PNG unchanged; `_eight_bit` converts the others.
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
JPEG_RATIOS = (8, 4, 2)  # the scales libjpeg decodes at, largest reduction first
# A reduced JPEG keeps at least this many times the target size on each side. 1, because a
# bilinear resize from under twice the size hardly aliases: on photos of 2,000-4,000 px it came
# closest to an area-averaged downscale, nearer than margin 2 and than the full decode.
JPEG_MARGIN = 1
_MAX_LISTED = 50  # bad files listed in one error; the rest are counted


@dataclass
class ImageSet:
    """The images of a class-folder dataset, in scan order, with their integer labels."""

    root: Path
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

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        return replace(
            self, files=[self.files[i] for i in indices], labels=[self.labels[i] for i in indices],
            digests=[self.digests[i] for i in indices] if self.digests else [],
        )

    def counts(self) -> list[int]:
        """Images per class, in the order of `classes`."""
        return np.bincount(np.asarray(self.labels, np.int64), minlength=len(self.classes)).tolist()


def scan(root, *, skip_bad: bool = False, classes: Sequence[str] | None = None, min_per_class: int = 1,
         progress: Progress | None = None) -> ImageSet:
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
    naming both paths, or with `skip_bad` every copy is skipped, with the reason.
    """
    root = _folder(root, "give a folder with one sub-folder per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = any(_is_image_name(p) for p in root.iterdir() if p.is_file())
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
    ignored = [(p, "beside the class folders, so it has no class: move it into a class folder")
               for p in sorted(root.iterdir()) if not p.name.startswith(".") and not p.is_dir()]
    for label, name in enumerate(classes):
        if name not in folders:
            continue
        found = _list_images(root / name, ignored)
        if not found:
            raise TlkitError(
                f"class '{name}' has no images in '{printable(root / name)}'; add some or remove the folder"
            )
        files += found
        labels += [label] * len(found)

    digests, problems = _check_all(files, root, skip_bad, progress)
    images = _without_copies(ImageSet(root, classes, files, labels, problems, digests, ignored=ignored), skip_bad)

    counts = images.counts()
    label_of = dict(zip(files, labels))
    skipped = np.bincount([label_of[path] for path, _ in images.skipped], minlength=len(classes))
    copies = np.bincount([label_of[copy] for copy, _ in images.duplicates], minlength=len(classes))
    for label, name in enumerate(classes):
        if name in folders and counts[label] < min_per_class:
            raise TlkitError(
                f"class '{name}' has {_images(counts[label])}"
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
    files = _list_images(root, ignored)
    if not files:
        raise TlkitError(f"no images in '{printable(root)}' or its sub-folders")
    digests, problems = _check_all(files, root, skip_bad, progress)
    images = _without_copies(ImageSet(root, ["unlabeled"], files, [0] * len(files), problems, digests,
                                      ignored=ignored), skip_bad)
    if not images.files:
        raise TlkitError(f"every image in '{printable(root)}' is bad ({len(files)} skipped)")
    return images


def _without_copies(images: ImageSet, skip_bad: bool) -> ImageSet:
    """`images` (all checked, bad ones in `skipped`) without bad files and extra copies of a content.

    A scanned set holds each content once, so `split` cannot put one content on both sides."""
    bad = {path for path, _ in images.skipped}
    by_digest = defaultdict(list)  # digest -> indices of the good files with it, in scan order
    for i, (path, digest) in enumerate(zip(images.files, images.digests)):
        if path not in bad:
            by_digest[digest].append(i)
    keep, duplicates, conflicts = [], [], []
    for indices in by_digest.values():
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
    return replace(images.subset(keep), skipped=skipped, duplicates=duplicates)


def split(images: ImageSet, val_split: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded, stratified train/validation split: each class gives `val_split` of its images
    (rounded, at least one) to validation and keeps at least one for training. A scanned set holds
    each file content once, so no content lands on both sides."""
    if not 0 < val_split < 1:
        raise TlkitError(f"validation split must be between 0 and 1, got {val_split}")
    labels = np.asarray(images.labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, name in enumerate(images.classes):
        members = np.flatnonzero(labels == label)
        if len(members) == 0:
            continue
        if len(members) < 2:
            raise TlkitError(
                f"class '{name}' has {_images(len(members))}; need at least 2 to split, or pass --val-data"
            )
        n_val = min(max(round(len(members) * val_split), 1), len(members) - 1)
        members = rng.permutation(members)
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return images.subset(sorted(train)), images.subset(sorted(val))


def decode_image(data: tf.Tensor, image_size: tuple[int, int], channels: int = 3) -> tf.Tensor:
    """Encoded image bytes (a scalar string tensor) -> float32 (height, width, channels) in [0, 255].

    Pure TensorFlow, so it serves as the decoder of the exported model: JPEG, PNG (8 or 16 bits),
    GIF (first frame), WebP and 24/32-bit BMP. Alpha is dropped; grayscale is repeated to RGB; RGB
    is made gray with `tf.image.rgb_to_grayscale`; the resize is bilinear, as in
    `keras.utils.image_dataset_from_directory`. A JPEG at least 2 x JPEG_MARGIN times the target
    size on each side is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg scales while it decodes),
    keeping at least JPEG_MARGIN times the target size: on photos of 2,000-4,000 px about twice
    as fast, and nearer an antialiased downscale than a full decode (bench/jpeg_decode.py).
    A JPEG's EXIF orientation is applied as Pillow's `ImageOps.exif_transpose` applies it. The
    full-size image is only ever held as uint8: the resize gives the float32 image at `image_size`.
    """
    return _to_channels(tf.image.resize(_decode_for(data, image_size), image_size), channels)


def load_images(paths: Sequence, image_size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """Images from files as float32 (N, height, width, channels), exactly as `make_dataset` feeds them."""
    paths = [Path(p) for p in paths]
    if not paths:
        return np.zeros((0, *image_size, channels), np.float32)
    problems = check_images(paths)
    if problems:
        raise TlkitError(_bad_files_message(problems, ""))
    return np.concatenate([batch.numpy() for batch in _decoded(paths, image_size, channels).batch(64)])


def load_image(path, image_size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """One image from a file as float32 (height, width, channels), exactly as `make_dataset` feeds it."""
    return load_images([path], image_size, channels)[0]


def make_dataset(
    images: ImageSet,
    image_size: tuple[int, int],
    batch_size: int,
    *,
    channels: int = 3,
    shuffle: bool = False,
    augment: bool | str | augmentation.Augmentation = False,
    seed: int = 0,
    cache: str | imagecache.DecodedImages | None = "none",
) -> tf.data.Dataset:
    """A tf.data pipeline of (float32 images (B, h, w, channels) in [0, 255], int32 labels (B,)).

    Decoding runs in parallel and keeps the order. With `shuffle`, the order changes every epoch;
    `augment` (a preset name, True for light, or a `tlkit.data.augment.Augmentation`) transforms the
    batches, drawn afresh every epoch. Both are seeded from `seed`: the same seed gives the same
    batches, epoch after epoch, with or without a cache.

    `cache` ("auto", "memory", "disk", "none", or what `decode_once` made for these images) keeps
    the decoded, resized images after the first decode, before augmentation (tlkit.data.imagecache).
    Only the file names and labels are held in the pipeline otherwise; images stream through it.
    """
    if isinstance(cache, str):
        cache = decode_once(images, image_size, channels, cache)
    labels = np.asarray(images.labels, np.int32)
    if cache is None:
        ds = tf.data.Dataset.from_tensor_slices((_tf_paths(images.files), labels))

        def load(path):
            return _load(path, image_size, channels)
    else:
        if len(cache) != len(images) or cache.shape != (*image_size, channels):
            raise ValueError(f"decoded images of {len(cache)} x {cache.shape}, not of these {len(images)} images "
                             f"at {(*image_size, channels)}")
        # indices in place of paths: the same shuffle, so the same batches as without a cache
        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(images), dtype=np.int64), labels))
        load = cache.lookup
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda item, label: (load(item), label), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return augmentation.apply(ds.batch(batch_size), augment, seed, len(images.classes)).prefetch(tf.data.AUTOTUNE)


def decode_once(images: ImageSet, image_size: tuple[int, int], channels: int = 3, mode: str = "auto", *,
                cache_dir: str | Path | None = None,
                memory_budget: int | None = None) -> imagecache.DecodedImages | None:
    """The images of `images` decoded once and kept (`mode`: "auto", "memory", "disk" or "none"),
    for `make_dataset(..., cache=...)`: make it once and pass it to every stage's dataset."""
    if mode == "none":  # before hashing every file for a key that is not needed
        return None
    digests = images.digests or file_digests(images.files)
    return imagecache.decoded(images.files, digests, image_size, channels, mode, _decode_files,
                              cache=cache_dir, memory_budget=memory_budget)


def _decode_files(files: list[Path], image_size, channels: int):
    for batch in _decoded(files, image_size, channels).batch(64):
        yield from batch.numpy()


def check_images(paths: Sequence[Path], progress: Progress | None = None) -> list[tuple[Path, str]]:
    """(path, problem) for each file that does not decode the way training decodes it."""
    return [(p, problem) for p, (_, problem) in zip(paths, _inspect_all(paths, progress)) if problem]


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(paths: Sequence[Path]) -> list[str]:
    # threads: hashlib releases the GIL while it hashes
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(file_digest, paths))


def _inspect_all(paths: Sequence[Path], progress: Progress | None) -> list[tuple[str | None, str | None]]:
    """(digest, problem) of each file, in order; `progress` hears of each as it is done."""
    total = len(paths)
    if progress:
        progress(0, total)
    results = []
    # threads: reading, hashing and both decoders release the GIL
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done, result in enumerate(pool.map(_inspect, paths), start=1):
            results.append(result)
            if progress:
                progress(done, total)
    return results


def _check_all(files: list[Path], root: Path, skip_bad: bool, progress: Progress | None):
    """The digest of every file (None for a file that cannot be read) and the bad files among
    them; unless `skip_bad`, one error that names every bad file."""
    log.info("checking %s in %s", _images(len(files)), printable(root))
    results = _inspect_all(files, progress)
    problems = [(path, problem) for path, (_, problem) in zip(files, results) if problem]
    if problems and not skip_bad:
        advice = f" in '{printable(root)}'; fix or remove them, or pass --skip-bad to skip them"
        raise TlkitError(_bad_files_message(problems, advice))
    return [digest for digest, _ in results], problems


# --- decoding -------------------------------------------------------------------------------


def _decode(data: tf.Tensor) -> tf.Tensor:
    # uint8: TensorFlow's WebP decoder only gives uint8, and its PNG decoder scales 16-bit images
    # to 8 bits (the high byte), so every format lands on [0, 255]; and a float32 copy of a large
    # image would take four times its memory. Channels are left as stored (channels=0) because the
    # WebP decoder accepts no other request, and so gray and RGB conversions are done one way for
    # all formats in `_to_channels`.
    return tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)


def _decode_for(data: tf.Tensor, size, margin: int | None = None) -> tf.Tensor:
    """`_decode`, but a large JPEG at the largest of 1/8, 1/4, 1/2 of its size that leaves at least
    `margin` (JPEG_MARGIN) times `size` on each side, turned upright by its EXIF orientation."""
    margin = JPEG_MARGIN if margin is None else margin

    def jpeg():
        orientation = exif_orientation(data)
        shape = tf.image.extract_jpeg_shape(data)  # reads the header only
        shape = tf.cond(orientation >= 5, lambda: tf.reverse(shape[:2], [0]), lambda: shape[:2])  # upright
        fits = [tf.logical_and(shape[0] // r >= margin * size[0], shape[1] // r >= margin * size[1])
                for r in JPEG_RATIOS]
        index = tf.argmax(tf.cast(tf.stack([*fits, True]), tf.int32), output_type=tf.int32)  # first that fits
        branches = [lambda r=r: tf.io.decode_jpeg(data, channels=0, ratio=r) for r in JPEG_RATIOS]
        return _upright(tf.switch_case(index, [*branches, lambda: _decode(data)]), orientation)

    return tf.cond(tf.strings.substr(data, 0, 3) == b"\xff\xd8\xff", jpeg, lambda: _decode(data))


_EXIF_REACH = 1 << 16  # bytes searched for the Exif segment: APP segments come first in a JPEG


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF Orientation tag (int32 1-8; 1 when absent or unreadable) of JPEG bytes, in graph
    ops: the tag 0x0112 of IFD0 in the first APP1 "Exif" segment, in the TIFF's byte order, which
    is where Pillow's `getexif` reads it for `ImageOps.exif_transpose`."""
    padded = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, _EXIF_REACH), b"\0" * _EXIF_REACH]),
                               0, _EXIF_REACH)
    b = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int32)
    marker = b"\xff\xe1\0\0Exif\0\0"  # APP1, its length (any), "Exif\0\0"
    span = _EXIF_REACH - len(marker)
    found = tf.reduce_all(tf.stack([tf.equal(b[k:k + span], byte)
                                    for k, byte in enumerate(marker) if k not in (2, 3)]), 0)
    tiff = tf.argmax(tf.cast(found, tf.int32), output_type=tf.int32) + len(marker)
    little = tf.equal(b[tiff], ord("I"))

    def uint(pos, size):
        pos = pos + tf.range(size)
        digits = tf.gather(b, tf.clip_by_value(pos, 0, _EXIF_REACH - 1), axis=-1)
        weights = tf.bitwise.left_shift(1, 8 * tf.where(little, tf.range(size), tf.range(size - 1, -1, -1)))
        return tf.reduce_sum(digits * weights, -1)

    ifd = tiff + uint(tiff + 4, 4)
    entries = ifd + 2 + 12 * tf.range(64)  # at most 64 entries are looked at; IFD0 has a dozen or so
    tags = uint(entries[:, None], 2)
    is_orientation = (tf.range(64) < uint(ifd, 2)) & (entries + 10 < _EXIF_REACH) & tf.equal(tags, 0x0112)
    value = tf.reduce_max(tf.where(is_orientation, uint(entries[:, None] + 8, 2), 0))
    valid = tf.reduce_any(found) & (ifd > tiff) & (value >= 1) & (value <= 8)
    return tf.where(valid, value, 1)


def _upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """`image` (h, w, c) as Pillow's `ImageOps.exif_transpose` turns it for EXIF `orientation`."""
    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: tf.reverse(image, [1]),  # mirrored
        lambda: tf.image.rot90(image, 2),
        lambda: tf.reverse(image, [0]),  # flipped
        lambda: tf.image.transpose(image),
        lambda: tf.image.rot90(image, 3),  # turned a quarter clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),
        lambda: tf.image.rot90(image, 1),  # a quarter anticlockwise
    ])


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """(h, w, 1-4 stored channels: L, LA, RGB, RGBA) -> (h, w, channels)."""
    gray = tf.shape(image)[-1] < 3
    if channels == 3:
        image = tf.cond(gray, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
    elif channels == 1:
        image = tf.cond(gray, lambda: image[..., :1], lambda: tf.image.rgb_to_grayscale(image[..., :3]))
    else:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return tf.ensure_shape(image, [None, None, channels])


def _tf_reads(data: tf.Tensor) -> tf.Tensor:
    """Whether TensorFlow decodes these bytes, from their signature. BMP is left to Pillow:
    TensorFlow reads palette BMPs as their raw indices."""
    head = tf.strings.join([tf.strings.substr(data, 0, 21), "\0" * 21])  # padded: substr needs pos <= length
    return tf.reduce_any(image_signatures(head))


def image_signatures(head: tf.Tensor) -> list[tf.Tensor]:
    """Whether the first bytes `head` (at least 21) start a JPEG, a PNG, a GIF, a still WebP: the
    formats TensorFlow decodes, told apart as tf.io.decode_image tells them. An animated WebP (a
    VP8X header with the animation flag) is not among them: TensorFlow's decoder aborts the
    process on it ("double free or corruption"), so it goes to Pillow, which takes its first frame."""

    def starts(prefix, pos=0):
        return tf.equal(tf.strings.substr(head, pos, len(prefix)), prefix)

    flags = tf.io.decode_raw(tf.strings.substr(head, 20, 1), tf.uint8)[0]
    animated = tf.logical_and(starts(b"VP8X", 12), tf.not_equal(tf.bitwise.bitwise_and(flags, 2), 0))
    return [
        starts(b"\xff\xd8\xff"),  # JPEG
        starts(b"\x89PNG\r\n\x1a\n"),
        starts(b"GIF8"),
        starts(b"RIFF") & starts(b"WEBP", 8) & tf.logical_not(animated),
    ]


def _png_bytes(data: bytes) -> np.ndarray:
    """Any image Pillow reads (the first frame of an animation), upright by its EXIF orientation,
    re-encoded as PNG with 8 bits a sample (see `_eight_bit`)."""
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        _eight_bit(ImageOps.exif_transpose(image)).save(out, "PNG", compress_level=1)
    # an object array: numpy's fixed-width bytes would drop trailing NUL bytes
    return np.array(out.getvalue(), dtype=object)


def _eight_bit(image: Image.Image) -> Image.Image:
    """An image PNG holds at 8 bits a sample, the values kept on the 0-255 scale: 16-bit integers
    by their high byte (as TensorFlow decodes a 16-bit PNG), floats in [0, 1] times 255 (the float
    image convention of tf.image and scikit-image), other floats and 32-bit integers rounded and
    clipped to [0, 255] (as Pillow's conversion to "L" does). Pillow's own conversion of these
    modes to RGB is not used: it turns a float image in [0, 1] black."""
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.clip(np.asarray(image), 0, None).astype(np.uint32) >> 8).astype(np.uint8))
    if image.mode in ("F", "I"):
        values = np.nan_to_num(np.asarray(image, np.float64))
        if image.mode == "F" and values.min() >= 0 and values.max() <= 1:
            values = values * 255
        return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    return image if image.mode in _PNG_MODES else image.convert("RGB")


def _file_bytes(path: tf.Tensor) -> tf.Tensor:
    """The bytes of an image file in a format `decode_image` reads."""
    return _decodable(tf.io.read_file(path))


def _decodable(data: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes in a format `decode_image` reads (others re-encoded by Pillow)."""
    return tf.cond(
        _tf_reads(data),
        lambda: data,
        lambda: tf.ensure_shape(tf.numpy_function(_png_bytes, [data], tf.string, stateful=False), []),
    )


def _load(path: tf.Tensor, image_size, channels: int) -> tf.Tensor:
    return _loader(tuple(image_size), channels)(path)


@functools.lru_cache(maxsize=8)
def _loader(image_size: tuple[int, int], channels: int):
    # Traced once per size: every pipeline built after the first (one per extraction, per split,
    # per run in a process) calls it instead of tracing the decoders again, which cost about as
    # much as decoding a few hundred small photos.
    return tf.function(lambda path: decode_image(_file_bytes(path), image_size, channels),
                       input_signature=[tf.TensorSpec([], tf.string)])


def _decoded(paths: Sequence[Path], image_size, channels: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_tf_paths(paths)).map(
        lambda path: _load(path, image_size, channels), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decoded_shape(data):
    # a JPEG at 1/8 of its size: libjpeg still reads all of it, so damage is found as in full
    return tf.shape(_decode_for(_decodable(data), (1, 1)))


def _inspect(path: Path) -> tuple[str | None, str | None]:
    """(SHA-256 of the bytes, None if the file decodes in full, by Pillow and the way training
    decodes it, else what is wrong with it). Both decoders, because each accepts some damage the
    other refuses: TensorFlow decodes a JPEG cut short (greying the missing rows), Pillow a PNG
    missing its last bytes. The file is read once, for the hash and both decoders.

    A file that is not a regular file (a named pipe, a socket, a device) is never opened: reading
    a pipe would wait for a writer for ever. A JPEG is decoded at 1/8 of its size, an image over
    MAX_PIXELS not at all, and large decodes one at a time, so the scan's memory stays bounded."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None, "not an image (not a regular file: a named pipe, socket or device)"
        data = path.read_bytes()
    except OSError as error:
        return None, unreadable(path, error)
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return digest, "empty file"
    try:
        with _pillow_open(data) as image:
            size = image.size
        if size[0] * size[1] > MAX_PIXELS:
            return digest, _too_large(size)
        with _large_decodes if size[0] * size[1] > _LARGE_DECODE else contextlib.nullcontext():
            with _pillow_open(data) as image:
                image.load()
            _decoded_shape(tf.constant(data))
    except Image.DecompressionBombError:  # over twice MAX_PIXELS: Pillow refuses to open it
        return digest, _too_large(None)
    except UnidentifiedImageError:
        if data[:4] in (b"II*\0", b"MM\0*"):
            return digest, ("a TIFF of a kind Pillow cannot read (for example float RGB or 64-bit samples); "
                            "save it as 8- or 16-bit, or as float gray")
        if data[4:8] == b"ftyp":  # the ISO media formats of phones: HEIC, and AVIF where Pillow lacks it
            kind = "AVIF" if data[8:12] in (b"avif", b"avis") else "HEIC/HEIF"
            return digest, (f"a {kind} image, which this installation cannot read (Pillow has no "
                            f"{kind.split('/')[-1]} plugin here): convert it to JPEG or PNG")
        return digest, "not an image (no image format recognised in it)"
    except tf.errors.OpError:
        return digest, ("corrupt or truncated image "
                        "(Pillow reads it but TensorFlow cannot decode it; often a file cut short)")
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad data
        return digest, f"{'truncated' if 'truncated' in str(error).lower() else 'corrupt'} image ({error})"
    return digest, None


def _pillow_open(data: bytes) -> Image.Image:
    """The image in `data`, a JPEG set to decode at 1/8 of its size (its `size` is then that
    size). A JPEG is opened without `Image.open`, whose decompression-bomb check counts it at full
    size."""
    opener = JpegImagePlugin.JpegImageFile if data[:3] == b"\xff\xd8\xff" else Image.open
    image = opener(io.BytesIO(data))
    image.draft(image.mode, (1, 1))
    return image


def _too_large(size: tuple[int, int] | None) -> str:
    pixels = f"{size[0]} x {size[1]} pixels, " if size else ""
    return (f"image too large ({pixels}over the limit of {MAX_PIXELS:,} pixels, Pillow's decompression-bomb "
            "limit); shrink it")


def unreadable(path: Path, error: OSError) -> str:
    """Why `path` cannot be read, from the error opening it: a link loop and a dangling link by name."""
    if error.errno == errno.ELOOP:
        return "symbolic link loop (the link leads back to itself); remove it or point it at an image"
    if error.errno == errno.ENOENT:
        if path.is_symlink():
            return f"dangling symbolic link (its target '{printable(os.readlink(path))}' does not exist)"
        return "no such file"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read (no permission)"
    if error.errno == errno.EISDIR:
        return "is a folder, not an image file"
    return f"cannot be read ({error.strerror})"


# --- helpers --------------------------------------------------------------------------------


def _folder(root, advice: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise TlkitError(f"data folder '{printable(root)}' does not exist")
    if not root.is_dir():
        raise TlkitError(f"data path '{printable(root)}' is not a folder; {advice}")
    return root


def printable(path) -> str:
    """A path as text, the bytes of a name that is not valid UTF-8 shown as \\x escapes (such a
    name is held as lone surrogates, which no console or UTF-8 file can print)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _tf_paths(paths: Sequence[Path]) -> list[bytes]:
    """Paths as TensorFlow reads them: the file system's bytes, so names that are not UTF-8 work."""
    return [os.fsencode(p) for p in paths]


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


def _list_images(folder: Path, ignored: list[tuple[Path, str]]) -> list[Path]:
    """The image files under `folder`, at any depth; the other files (not hidden) are added to
    `ignored` with the reason."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath, name)
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
        if stat.S_ISREG(os.stat(path).st_mode):  # never open a pipe: reading it could wait for ever
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


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _bad_files_message(problems: list[tuple[Path, str]], advice: str) -> str:
    n = len(problems)
    lines = [f"{n} bad image {'file' if n == 1 else 'files'}{advice}:"]
    lines += [f"  {printable(path)}: {problem}" for path, problem in problems[:_MAX_LISTED]]
    if n > _MAX_LISTED:
        lines.append(f"  ... and {n - _MAX_LISTED} more")
    return "\n".join(lines)
