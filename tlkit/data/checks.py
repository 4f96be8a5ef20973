"""Is this file an image that decodes as training decodes it? Each file is read once: checked by
the decoder's own rules (TensorFlow's formats, Pillow's for the rest, size limits, EXIF), and
hashed (SHA-256) from the same bytes, so that copies are found.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tensorflow as tf
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from tlkit._util import buckets
from tlkit._util.urls import is_url
from tlkit.data import scan_cache
from tlkit.data.decode import decode_eighth_jpeg, decoded_shape

log = logging.getLogger(__name__)


# progress(done, total): called while files are checked, first with done=0
Progress = Callable[[int, int], None]


# Images that would decode to more pixels are refused by name: Pillow's decompression-bomb limit
# (about 89.5 megapixels). A JPEG counts at 1/8 of its size, the scale every path decodes it at
# when it is large, so a 12,000 x 12,000 photo is taken and a PNG of that size is not.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


# Decodes of more pixels than this (after any JPEG reduction) run one at a time in the scan, so
# its threads never hold several huge images at once: a 9,000 x 9,000 PNG alone is 243 MB.
_LARGE_DECODE = 16_000_000


_large_decodes = threading.BoundedSemaphore(1)


def check_images(paths: Sequence[Path], progress: Progress | None = None) -> list[tuple[Path, str]]:
    """(path, problem) for each file that does not decode the way training decodes it."""
    return [(p, problem) for p, (_, problem) in zip(paths, inspect_all(paths, progress)) if problem]


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") if is_url(path) else open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(paths: Sequence[Path]) -> list[str]:
    # threads: hashlib releases the GIL while it hashes
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(file_digest, paths))


def inspect_all(paths: Sequence[Path], progress: Progress | None) -> list[tuple[str | None, str | None]]:
    """(digest, problem) of each file, in order; `progress` hears of each as it is done.

    A file the scan cache holds for its current size, times and inode is not read
    (tlkit.data.scan_cache). The others are checked in threads (`_in_threads`), one file each at a
    time, so memory stays bounded however many files there are."""
    total = len(paths)
    if progress:
        progress(0, total)
    absolute = [p if is_url(p) else os.path.abspath(p) for p in paths]  # str: a Path each costs a re-scan half its time
    keys = scan_cache.file_keys(absolute)
    store = scan_cache.ScanCache()
    results: list = [None] * total
    for i, result in store.lookup(absolute, keys).items():
        results[i] = result
    todo = [i for i in range(total) if results[i] is None]
    done = total - len(todo)
    if progress and done:
        progress(done, total)
    for i, result in zip(todo, _in_threads([paths[i] for i in todo])):
        results[i] = result
        done += 1
        if progress:
            progress(done, total)
    store.store([(absolute[i], keys[i], *results[i]) for i in todo])
    store.close()
    return results


# Threads per core. The check's native work (reading, hashing, libjpeg in TensorFlow, Pillow's
# decoders) runs without the GIL, but each file also holds it a while (Pillow's header parsing,
# TensorFlow's call); with more threads than cores one thread's native work overlaps another's
# Python. On the shared 2 cores 1, 2, 4 and 8 a core were within the noise, 4 never the slowest;
# worker processes were slower (BENCHMARKS.md, issue 27). Each thread holds one file, so at most
# 16 decodes of up to _LARGE_DECODE pixels (and one larger) are in memory at once.
_THREADS_PER_CORE = 4
_MAX_THREADS = 16


def _in_threads(paths: Sequence[Path]):
    with ThreadPoolExecutor(max_workers=min(_MAX_THREADS, _THREADS_PER_CORE * (os.cpu_count() or 1))) as pool:
        yield from pool.map(_inspect, paths)


def _inspect(path: Path) -> tuple[str | None, str | None]:
    """(SHA-256 of the bytes, None if the file decodes in full, by Pillow and the way training
    decodes it, else what is wrong with it). The file is read once, for the hash and the decoders.

    Both decoders decode every format but JPEG: one may read damage the other refuses (Pillow
    reads a PNG missing its last bytes, TensorFlow refuses it). A JPEG is decoded by TensorFlow
    alone (Pillow reads only its header, for its size): TensorFlow refuses every damaged JPEG that
    Pillow refuses (cut short, bytes changed, zeroed, inserted or deleted: hundreds are tried in
    tests/data/test_data.py) and some that Pillow reads, so Pillow's decode would find nothing
    more, and cost as much as TensorFlow's. A JPEG TensorFlow refuses is then decoded by Pillow
    too, to say what is wrong in its words where it sees the damage.

    A file that is not a regular file (a named pipe, a socket, a device) is never opened: reading
    a pipe would wait for a writer for ever. A JPEG is decoded at 1/8 of its size, an image over
    MAX_PIXELS not at all, and large decodes one at a time, so the scan's memory stays bounded."""
    try:
        if is_url(path):
            data = buckets.read_bytes(path)
        elif not stat.S_ISREG(os.stat(path).st_mode):
            return None, "not an image (not a regular file: a named pipe, socket or device)"
        else:
            data = path.read_bytes()
    except OSError as error:
        return None, unreadable(path, error)
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return digest, "empty file"
    jpeg = data[:3] == _JPEG
    try:
        with _pillow_open(data) as image:
            size = image.size
            # the scale Pillow's draft chose, by the rule `decoded_shape` follows too: 8 unless the
            # JPEG is under 8 pixels on a side
            eighth = jpeg and image.decoderconfig[:1] == (8,)
        if size[0] * size[1] > MAX_PIXELS:
            return digest, _too_large(size)
        with _large_decodes if size[0] * size[1] > _LARGE_DECODE else contextlib.nullcontext():
            if not jpeg:
                _pillow_load(data)
            try:
                decode_eighth_jpeg(data) if eighth else decoded_shape(tf.constant(data))
            except tf.errors.OpError:
                if jpeg:
                    _pillow_load(data)  # Pillow's words for the damage, where it sees it too
                raise
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


_JPEG = b"\xff\xd8\xff"


def _pillow_load(data: bytes) -> None:
    with _pillow_open(data) as image:
        image.load()


def _pillow_open(data: bytes) -> Image.Image:
    """The image in `data`, a JPEG set to decode at 1/8 of its size (its `size` is then that
    size). A JPEG is opened without `Image.open`, whose decompression-bomb check counts it at full
    size."""
    opener = JpegImagePlugin.JpegImageFile if data[:3] == _JPEG else Image.open
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


def printable(path) -> str:
    """A path as text, the bytes of a name that is not valid UTF-8 shown as \\x escapes (such a
    name is held as lone surrogates, which no console or UTF-8 file can print)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
