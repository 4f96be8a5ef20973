"""Folders of images: scan and validate them, split them, and feed them to Keras with tf.data.

A data folder holds one sub-folder per class: `DIR/<class>/<image>` (deeper sub-folders inside a
class are searched too). Every image goes through one decoder, `decode_image`, which is pure
TensorFlow so that the exported serving signature decodes exactly as training did. TensorFlow
reads JPEG, PNG, GIF and WebP; the other formats Pillow opens (BMP, TIFF, ...) are re-encoded
by Pillow as PNG on the way in, so they too end up in `decode_image`.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from tlkit.errors import TlkitError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Modes Pillow can write as PNG unchanged; any other mode is converted to RGB first.
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B")
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

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        return replace(self, files=[self.files[i] for i in indices], labels=[self.labels[i] for i in indices])


def scan(root, *, skip_bad: bool = False, classes: Sequence[str] | None = None, min_per_class: int = 1) -> ImageSet:
    """Find the classes and images under `root` and check that every image decodes.

    Classes are the sub-folders, sorted by name, unless `classes` gives the list and its order
    (a trained model's labels); then a sub-folder outside it is an error, and classes without a
    folder are allowed. Hidden files and folders and files without an image extension are ignored.
    Each image is decoded in full, the way training will decode it, so a bad file is found now
    rather than mid-training: by default one TlkitError lists them all; with `skip_bad` they are
    left out and recorded in `skipped`.
    """
    root = _folder(root, "give a folder with one sub-folder per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = any(_is_image_name(p) for p in root.iterdir() if p.is_file())
        raise TlkitError(
            f"no class sub-folders in '{root}': put each class's images in '{root}/<class>/'"
            + (" (the images directly inside it have no class)" if loose else "")
        )
    if classes is None:
        classes = folders
        if len(classes) == 1:
            raise TlkitError(
                f"only one class folder ('{classes[0]}') in '{root}': a classifier needs at least 2 classes"
            )
    else:
        classes = list(classes)
        for name in folders:
            if name not in classes:
                raise TlkitError(
                    f"folder '{name}' in '{root}' is not one of the model's classes ({', '.join(classes)}); "
                    "remove it or use a folder with only those classes"
                )

    files, labels = [], []
    for label, name in enumerate(classes):
        if name not in folders:
            continue
        found = _list_images(root / name)
        if not found:
            raise TlkitError(f"class '{name}' has no images in '{root / name}'; add some or remove the folder")
        files += found
        labels += [label] * len(found)

    problems = _check_all(files, root, skip_bad)
    bad = {path for path, _ in problems}
    good = [i for i, f in enumerate(files) if f not in bad]
    images = ImageSet(root, classes, [files[i] for i in good], [labels[i] for i in good], problems)

    counts = np.bincount(images.labels, minlength=len(classes))
    skipped = np.bincount(labels, minlength=len(classes)) - counts
    for label, name in enumerate(classes):
        if name in folders and counts[label] < min_per_class:
            raise TlkitError(
                f"class '{name}' has {_images(counts[label])}"
                + (f" ({skipped[label]} bad skipped)" if skipped[label] else "")
                + f"; need at least {min_per_class}"
            )
    return images


def scan_unlabeled(root, *, skip_bad: bool = False) -> ImageSet:
    """Every image under `root`, directly in it or in sub-folders at any depth, for training without
    labels (an autoencoder). Folder names are ignored: the set has one class, "unlabeled", so that
    `split` draws a plain random validation split from it. Images are validated as in `scan`.
    """
    root = _folder(root, "give a folder of images (sub-folders are searched too)")
    files = _list_images(root)
    if not files:
        raise TlkitError(f"no images in '{root}' or its sub-folders")
    problems = _check_all(files, root, skip_bad)
    bad = {path for path, _ in problems}
    good = [f for f in files if f not in bad]
    if not good:
        raise TlkitError(f"every image in '{root}' is bad ({len(files)} skipped)")
    return ImageSet(root, ["unlabeled"], good, [0] * len(good), problems)


def split(images: ImageSet, val_split: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded, stratified train/validation split: each class gives `val_split` of its images
    (rounded, at least one) to validation and keeps at least one for training."""
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
    `keras.utils.image_dataset_from_directory`.
    """
    return tf.image.resize(_to_channels(_decode(data), channels), image_size)


def load_images(paths: Sequence, image_size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """Images from files as float32 (N, height, width, channels), exactly as `make_dataset` feeds them."""
    paths = [Path(p) for p in paths]
    if not paths:
        return np.zeros((0, *image_size, channels), np.float32)
    problems = [(p, "no such file") for p in paths if not p.is_file()] or check_images(paths)
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
    augment: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """A tf.data pipeline of (float32 images (B, h, w, channels) in [0, 255], int32 labels (B,)).

    Decoding runs in parallel and keeps the order. With `shuffle`, the order changes every epoch;
    with `augment`, each image gets a random horizontal flip, a zoom (a random crop of 80-100% of
    each side, resized back) and a brightness shift, drawn afresh every epoch. Both are seeded
    from `seed`: the same seed gives the same batches, epoch after epoch.
    """
    ds = tf.data.Dataset.from_tensor_slices(([str(f) for f in images.files], np.asarray(images.labels, np.int32)))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda path, label: (_load(path, image_size, channels), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if augment:
        # One random number per image and epoch from a seeded stream drives stateless ops, so
        # the result does not depend on the order in which parallel calls run (Keras' Random*
        # layers draw from a shared generator state instead).
        def augment_one(example, draw):
            image, label = example
            return _augment(image, tf.stack([tf.constant(seed, tf.int64), draw])), label

        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws).map(augment_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def check_images(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """(path, problem) for each file that does not decode the way training decodes it."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = pool.map(_problem, paths)
    return [(p, problem) for p, problem in zip(paths, problems) if problem]


def _check_all(files: list[Path], root: Path, skip_bad: bool) -> list[tuple[Path, str]]:
    """The bad files among `files`; unless `skip_bad`, one error that names them all."""
    problems = check_images(files)
    if problems and not skip_bad:
        advice = f" in '{root}'; fix or remove them, or pass --skip-bad to skip them"
        raise TlkitError(_bad_files_message(problems, advice))
    return problems


# --- decoding -------------------------------------------------------------------------------


def _decode(data: tf.Tensor) -> tf.Tensor:
    # uint8 rather than float32: TensorFlow's WebP decoder only gives uint8, and its PNG decoder
    # scales 16-bit images to 8 bits (the high byte), so every format lands on [0, 255].
    # Channels are left as stored (channels=0) because the WebP decoder accepts no other request,
    # and so gray and RGB conversions are done one way for all formats in `_to_channels`.
    image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    return tf.cast(image, tf.float32)


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


def _augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    flip, zoom, crop, light = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    image = tf.image.stateless_random_flip_left_right(image, flip)
    height, width, channels = image.shape
    size = tf.cast(tf.round(tf.random.stateless_uniform([], zoom, 0.8, 1.0) * [height, width]), tf.int32)
    image = tf.image.stateless_random_crop(image, tf.concat([size, [channels]], 0), crop)
    image = tf.image.resize(image, (height, width))
    image = tf.image.stateless_random_brightness(image, 0.1 * 255, light)
    return tf.clip_by_value(image, 0.0, 255.0)


def _tf_reads(data: tf.Tensor) -> tf.Tensor:
    """Whether TensorFlow decodes these bytes, from their signature (as tf.io.decode_image tells
    formats apart). BMP is left to Pillow: TensorFlow reads palette BMPs as their raw indices."""
    head = tf.strings.join([tf.strings.substr(data, 0, 12), "\0" * 12])  # padded: substr needs pos <= length

    def starts(prefix, pos=0):
        return tf.equal(tf.strings.substr(head, pos, len(prefix)), prefix)

    return tf.reduce_any([
        starts(b"\xff\xd8\xff"),  # JPEG
        starts(b"\x89PNG\r\n\x1a\n"),
        starts(b"GIF8"),
        tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8)),
    ])


def _png_bytes(data: bytes) -> np.ndarray:
    """Any image Pillow reads, re-encoded as PNG (the few modes PNG cannot hold become RGB)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in _PNG_MODES:
            image = image.convert("RGB")
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=1)
    # an object array: numpy's fixed-width bytes would drop trailing NUL bytes
    return np.array(out.getvalue(), dtype=object)


def _file_bytes(path: tf.Tensor) -> tf.Tensor:
    """The bytes of an image file in a format `decode_image` reads."""
    data = tf.io.read_file(path)
    return tf.cond(
        _tf_reads(data),
        lambda: data,
        lambda: tf.ensure_shape(tf.numpy_function(_png_bytes, [data], tf.string, stateful=False), []),
    )


def _load(path: tf.Tensor, image_size, channels: int) -> tf.Tensor:
    return decode_image(_file_bytes(path), image_size, channels)


def _decoded(paths: Sequence[Path], image_size, channels: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).map(
        lambda path: _load(path, image_size, channels), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decoded_shape(path):
    return tf.shape(_decode(_file_bytes(path)))


def _problem(path: Path) -> str | None:
    """None if the file decodes in full, by Pillow and the way training decodes it, else what is
    wrong with it. Both, because each accepts some damage the other refuses: TensorFlow decodes
    a JPEG cut short (greying the missing rows), Pillow a PNG missing its last bytes."""
    if not os.access(path, os.R_OK):
        return "cannot be read (no permission)"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image (no image format recognised in it)"
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad data
        return f"{'truncated' if 'truncated' in str(error).lower() else 'corrupt'} image ({error})"
    try:
        _decoded_shape(tf.constant(str(path)))
    except tf.errors.OpError:
        return "corrupt or truncated image (Pillow reads it but TensorFlow cannot decode it; often a file cut short)"
    return None


# --- helpers --------------------------------------------------------------------------------


def _folder(root, advice: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise TlkitError(f"data folder '{root}' does not exist")
    if not root.is_dir():
        raise TlkitError(f"data path '{root}' is not a folder; {advice}")
    return root


def _is_image_name(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in sorted(filenames) if _is_image_name(Path(f))]
    return found


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _bad_files_message(problems: list[tuple[Path, str]], advice: str) -> str:
    n = len(problems)
    lines = [f"{n} bad image {'file' if n == 1 else 'files'}{advice}:"]
    lines += [f"  {path}: {problem}" for path, problem in problems[:_MAX_LISTED]]
    if n > _MAX_LISTED:
        lines.append(f"  ... and {n - _MAX_LISTED} more")
    return "\n".join(lines)
