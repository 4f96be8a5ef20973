"""The tf.data pipeline of a set of images: decoded (once, with the image cache), shuffled,
augmented and batched for Keras; and images loaded as training sees them."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tlkit._util.urls import as_path
from tlkit.data import augment as augmentation
from tlkit.data import imagecache, shards
from tlkit.data.checks import check_images, file_digests
from tlkit.data.decode import decode_image, load_file, tf_paths
from tlkit.data.folders import ImageSet, bad_files_message
from tlkit.errors import TlkitError


def load_images(paths: Sequence, image_size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """Images from files as float32 (N, height, width, channels), exactly as `make_dataset` feeds them."""
    paths = [as_path(p) for p in paths]
    if not paths:
        return np.zeros((0, *image_size, channels), np.float32)
    problems = [] if shards.is_record(paths[0]) else check_images(paths)  # a pack's records were verified by pack
    if problems:
        raise TlkitError(bad_files_message(problems, ""))
    images = np.empty((len(paths), *image_size, channels), np.float32)
    for at, image in _decode_files(paths, image_size, channels):
        images[at] = image
    return images


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
    labels = targets(images)
    buffer = len(images)
    if cache is None and shuffle and _is_pack(images.files):
        # training reads a pack's records as it goes, shuffled by a buffer: the pack is shuffled already
        ds, buffer = shards.records(images.files, labels, shuffle=True, seed=seed), shards.SHUFFLE_BUFFER
        load = _decoder(image_size, channels)
    elif cache is None:
        sources, load = _sources(images.files, image_size, channels)
        ds = tf.data.Dataset.from_tensor_slices((sources, labels))
    else:
        if len(cache) != len(images) or cache.shape != (*image_size, channels):
            raise ValueError(f"decoded images of {len(cache)} x {cache.shape}, not of these {len(images)} images "
                             f"at {(*image_size, channels)}")
        # indices in place of paths: the same shuffle, so the same batches as without a cache
        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(images), dtype=np.int64), labels))
        load = cache.lookup
    if shuffle:
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda item, label: (load(item), label), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return augmentation.apply(ds.batch(batch_size), augment, seed, len(images.classes)).prefetch(tf.data.AUTOTUNE)


def targets(images: ImageSet) -> np.ndarray:
    """What a model of `images` learns: int32 labels, or a multi-label set's float32 multi-hot rows."""
    return images.multi_hot() if images.multilabel else np.asarray(images.labels, np.int32)


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
    """(place in `files`, decoded image) of each of `files`, in no set order: a pack's records
    streamed from their shards in the shards' order (none held), other files read in order."""
    record = np.array([shards.is_record(f) for f in files], bool)
    if record.any():
        named = [f for f, r in zip(files, record) if r]
        decode = _decoder(image_size, channels)
        ds = shards.records(named, np.flatnonzero(record)).map(lambda encoded, at: (at, decode(encoded)),
                                                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        for places, images in shards.read_records(ds.batch(64), named):
            yield from zip(places, images)
    rest = np.flatnonzero(~record)
    if rest.size:
        ds = tf.data.Dataset.from_tensor_slices((rest, tf_paths([files[i] for i in rest]))).map(
            lambda at, path: (at, load_file(path, image_size, channels)), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
        for places, images in ds.batch(64):
            yield from zip(places.numpy(), images.numpy())


def _is_pack(files) -> bool:
    return bool(files) and shards.is_record(files[0])


def _decoder(image_size, channels: int):
    return lambda encoded: decode_image(encoded, image_size, channels)


def _sources(files: list[Path], image_size, channels: int):
    """What a pipeline of `files` in their order starts from, and what decodes one: the files'
    paths; or for a pack's records (shards.image_set), their places in `files`, each looked up in
    the records' encoded bytes, held (a pass that keeps the set's order: training streams them)."""
    if _is_pack(files):
        encoded, decode = shards.record_bytes(files), _decoder(image_size, channels)
        # looked up, not a constant in the graph: tf.data copied a constant of them several times over
        return np.arange(len(files)), lambda at: decode(tf.ensure_shape(tf.numpy_function(
            lambda i: np.array(encoded[i], object), [at], tf.string, stateful=False), []))
    return tf_paths(files), lambda path: load_file(path, image_size, channels)
