"""The serving signature's decoder: what a SavedModel does with the image bytes it is sent.

It must be pure TensorFlow (the server has no Pillow and no tlkit), so it takes fewer formats
than `tlkit predict`, which hands the others to Pillow. The contract: for every format both
take, both give the same pixels (they share `tlkit.data.decode_image`); every format only
predict takes is refused by serving with a message, never decoded wrong. TensorFlow's BMP
decoder reads a palette BMP's indices as grey levels and knows no compressed BMP, so serving
takes only uncompressed 24 and 32-bit BMPs.

In a batch, an entry serving cannot decode (empty, corrupt, refused format) fails the whole call
with one message naming every such entry by its 0-based index: a client that sent 32 images
learns which to fix, and never gets answers shifted against its inputs.
"""
from __future__ import annotations

import tensorflow as tf

from tlkit.data import decode_image

SERVING_FORMATS = "JPEG, PNG, GIF (first frame), WebP and BMP (uncompressed, 24 or 32 bits per pixel)"
REFUSED = f"image_bytes entries that are not images this model decodes ({SERVING_FORMATS}), by 0-based index:"


def _uint(head: tf.Tensor, pos: int, dtype) -> tf.Tensor:
    size = tf.dtypes.as_dtype(dtype).size
    return tf.io.decode_raw(tf.strings.substr(head, pos, size), dtype, little_endian=True)[0]


def serving_reads(data: tf.Tensor) -> tf.Tensor:
    """Whether the serving decoder takes these bytes, from their signature (and a BMP's header)."""
    head = tf.strings.join([tf.strings.substr(data, 0, 34), "\0" * 34])  # padded: substr needs pos <= length

    def starts(prefix, pos=0):
        return tf.equal(tf.strings.substr(head, pos, len(prefix)), prefix)

    bmp = tf.logical_and(
        starts(b"BM"),
        tf.logical_and(
            tf.reduce_any(tf.equal(_uint(head, 28, tf.uint16), [24, 32])),  # bits per pixel
            tf.equal(_uint(head, 30, tf.int32), 0),  # compression: BI_RGB
        ),
    )
    return tf.reduce_any([
        starts(b"\xff\xd8\xff"),  # JPEG
        starts(b"\x89PNG\r\n\x1a\n"),
        starts(b"GIF8"),
        tf.logical_and(starts(b"RIFF"), starts(b"WEBP", 8)),
        bmp,
    ])


def decode_for_serving(data: tf.Tensor, image_size: tuple[int, int], channels: int) -> tf.Tensor:
    """One entry's bytes -> float32 (h, w, channels) in [0, 255], or an error if serving refuses it."""
    check = tf.debugging.Assert(serving_reads(data), ["refused format"])
    with tf.control_dependencies([check]):
        return decode_image(tf.identity(data), image_size, channels)


def decode_batch(image_bytes: tf.Tensor, image_size: tuple[int, int], channels: int) -> tf.Tensor:
    """A batch of encoded images -> float32 (n, h, w, channels); fails naming every bad entry.

    tf.data's `ignore_errors` is the one way a graph can go on past a failed decode, so each entry
    is decoded in a dataset that drops failures, and the indices that come back tell which failed.
    """
    n = tf.size(image_bytes)
    entries = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes))
    decoded = entries.map(lambda i, data: (i, decode_for_serving(data, image_size, channels)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    empty = (tf.zeros([0], tf.int32), tf.zeros([0, *image_size, channels], tf.float32))
    good, images = decoded.batch(tf.cast(tf.maximum(n, 1), tf.int64)).reduce(empty, lambda _, batch: batch)
    bad = tf.sets.difference(tf.range(n)[None], good[None]).values
    check = tf.debugging.Assert(tf.equal(tf.size(bad), 0), [REFUSED, bad], summarize=64)
    with tf.control_dependencies([check]):
        return tf.identity(images)
