"""Decode once: the decoded, resized images of a set, kept for every later epoch and stage.

`tlkit.data.pipeline.make_dataset(..., cache=MODE)` and `tlkit.data.pipeline.decode_once` use this module (a leaf:
the decoder and the content hashes come in as arguments). Every epoch without a cache reads,
decodes and resizes every file again. With one, each distinct file content is decoded once
(exactly as `tlkit.data.decode.decode_image` decodes it, float32, before any augmentation, so
augmentation stays fresh every epoch) and later epochs read the pixels back:

- "memory": a numpy array in this process;
- "disk": one file under the tlkit cache (`$TLKIT_CACHE/images`, else ~/.cache/tlkit/images),
  `<key>.f32` (the rows, raw float32) beside `<key>.json` (what made it, and the content hash of
  each row). The key is a hash of the image size, channels, the decoder's version and the files'
  contents (SHA-256), as in the feature cache: a renamed file still hits, a changed one misses.
  Rows are read with `os.pread`, not a memory map, so they pass through the page cache without
  growing this process's memory as the data grows;
- "auto": memory when the decoded set fits in `memory_budget`, else disk.

A cache can only cost time: an entry that does not match its key is rebuilt, and a cache folder
that cannot be written is reported once as a warning and the set is fed uncached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf

from tlkit._util.io import cache_root, write_atomic, write_json_atomic

log = logging.getLogger(__name__)

MODES = ("auto", "memory", "disk", "none")
# Bump when tlkit.data.pipeline's decoding or resizing change, so entries made the old way are not reused.
FORMAT = 2  # 2: JPEGs turned upright by their EXIF orientation
# decode(files, image_size, channels): (place in files, float32 (height, width, channels) image) of
# each file, in any order (a pack's records come in the order of their shards)
Decoder = Callable[[list[Path], tuple[int, int], int], Iterable[tuple[int, np.ndarray]]]
MEMORY_BUDGET = 2 << 30  # bytes of decoded images "auto" keeps in memory, at most a quarter of free RAM
# Cache folders reported unusable and not usable since: a run's training and validation sets
# each try the cache, and the user is told once.
_unusable: set[Path] = set()


def cache_dir(path: str | Path | None = None) -> Path:
    """The image cache folder: `path`, else $TLKIT_CACHE/images, else ~/.cache/tlkit/images."""
    if path:
        return Path(path)
    return cache_root() / "images"


class DecodedImages:
    """The decoded images of a set, one row per distinct content, and which row each image is."""

    def __init__(self, shape: tuple[int, int, int], rows: np.ndarray, *, array: np.ndarray | None = None,
                 path: Path | None = None):
        self.shape = shape
        self.rows = rows  # image index in the set -> row
        self.array = array  # "memory": (rows, *shape) float32
        self.path = path  # "disk": the .f32 file
        self._row_bytes = int(np.prod(shape)) * 4
        if path is not None:
            self._fd = os.open(path, os.O_RDONLY)
            weakref.finalize(self, os.close, self._fd)

    @property
    def kind(self) -> str:
        return "memory" if self.array is not None else "disk"

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, index) -> np.ndarray:
        """The decoded image number `index` of the set: float32 (height, width, channels)."""
        row = int(self.rows[int(index)])
        if self.array is not None:
            return self.array[row]
        data = os.pread(self._fd, self._row_bytes, row * self._row_bytes)
        return np.frombuffer(data, np.float32).reshape(self.shape)

    def lookup(self, index: tf.Tensor) -> tf.Tensor:
        """`read` inside a tf.data pipeline."""
        return tf.ensure_shape(tf.numpy_function(self.read, [index], tf.float32, stateful=False), self.shape)


def decoded(files: list[Path], digests: list[str], image_size: tuple[int, int], channels: int, mode: str,
            decode: Decoder, *, cache: str | Path | None = None,
            memory_budget: int | None = None) -> DecodedImages | None:
    """The images of `files` (whose SHA-256 are `digests`) decoded by `decode`, kept in `mode`
    (MODES); None for "none", or when the disk cache cannot be used (a warning says why)."""
    if mode not in MODES:
        raise ValueError(f"image cache must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none" or not files:
        return None
    distinct = sorted(set(digests))
    row_of = {d: i for i, d in enumerate(distinct)}
    rows = np.array([row_of[d] for d in digests], np.int64)
    shape = (*image_size, channels)
    size = len(distinct) * int(np.prod(shape)) * 4
    if mode == "auto":
        mode = "memory" if size <= memory_budget_of(memory_budget) else "disk"
    path_of = dict(zip(digests, files))
    files = [path_of[d] for d in distinct]
    if mode == "memory":
        start = time.perf_counter()
        array = np.empty((len(distinct), *shape), np.float32)
        for i, image in decode(files, image_size, channels):
            array[i] = image
        log.info("decoded %d images once into memory (%.0f MB) in %.1f s", len(files), size / 2**20,
                 time.perf_counter() - start)
        return DecodedImages(shape, rows, array=array)
    key = hashlib.sha256(json.dumps({
        "format": FORMAT, "image_size": list(image_size), "channels": channels, "files": distinct,
    }).encode()).hexdigest()
    entry = cache_dir(cache) / f"{key}.f32"
    try:
        if _matches(entry, distinct, shape):
            log.info("decoded images of %d files from the image cache: %s", len(files), entry)
        else:
            _write(entry, decode(files, image_size, channels), distinct, shape)
        _unusable.discard(entry.parent)
        return DecodedImages(shape, rows, path=entry)
    except OSError as error:
        if entry.parent not in _unusable:
            _unusable.add(entry.parent)
            log.warning("image cache %s cannot be used (%s); reading the images from their files every epoch",
                        entry.parent, error.strerror or error)
        return None


def _matches(entry: Path, digests: list[str], shape) -> bool:
    """Whether `entry` holds the decoded images of exactly these contents; a mismatch is reported."""
    if not entry.exists():
        return False
    try:
        meta = json.loads(entry.with_suffix(".json").read_text(encoding="utf-8"))
        whole = entry.stat().st_size == len(digests) * int(np.prod(shape)) * 4
        if meta.get("files") == digests and meta.get("shape") == list(shape) and whole:
            return True
        why = "does not match its key"
    except (OSError, ValueError) as error:
        why = f"cannot be read ({error})"
    log.warning("image cache entry %s %s; decoding the images again", entry, why)
    return False


def _write(entry: Path, images: Iterable[tuple[int, np.ndarray]], digests: list[str], shape) -> None:
    """The entry's description first, then its rows: a reader that finds the rows finds them whole
    (written to a temporary name and renamed) and described."""
    start = time.perf_counter()
    write_json_atomic(entry.with_suffix(".json"), {"shape": list(shape), "format": FORMAT, "files": digests})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.truncate(len(digests) * int(np.prod(shape)) * 4)
            for row, image in images:
                f.seek(row * int(np.prod(shape)) * 4)
                f.write(np.ascontiguousarray(image, np.float32).tobytes())

    try:
        write_atomic(entry, write)
    except OSError:
        entry.with_suffix(".json").unlink(missing_ok=True)  # a description of no rows only takes space
        raise
    log.info("decoded %d images once in %.1f s; cached in %s (%.0f MB)", len(digests), time.perf_counter() - start,
             entry, entry.stat().st_size / 2**20)


def memory_budget_of(memory_budget: int | None = None) -> int:
    """Bytes a per-image cache may hold in memory: `memory_budget`, else MEMORY_BUDGET and at
    most a quarter of the free memory."""
    if memory_budget is not None:
        return memory_budget
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every system
        return MEMORY_BUDGET
    return min(MEMORY_BUDGET, free // 4)
