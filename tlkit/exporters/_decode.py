"""The serving signature's decoder: what a SavedModel does with the image bytes it is sent.

It must be pure TensorFlow (the server has no Pillow and no tlkit), so it takes fewer formats
than `tlkit predict`, which hands the others to Pillow. The contract: for every format both
take, both give the same pixels (they share `tlkit.data.decode.decode_image`); every format only
predict takes is refused by serving with a message, never decoded wrong. TensorFlow's BMP
decoder reads a palette BMP's indices as grey levels, so palette BMPs (1, 4 and 8 bits per pixel)
are decoded here, in graph ops, to the colours Pillow gives; compressed BMPs and TIFF are refused.
An animated WebP is refused too (TensorFlow's WebP decoder aborts the process on one; predict
takes its first frame with Pillow), and a JPEG's EXIF orientation is applied as predict applies it.

In a batch, an entry serving cannot decode (empty, corrupt, refused format) fails the whole call
with one message naming every such entry by its 0-based index: a client that sent 32 images
learns which to fix, and never gets answers shifted against its inputs.
"""
from __future__ import annotations

import tensorflow as tf

from tlkit.data.decode import decode_image, image_signatures

SERVING_FORMATS = "JPEG, PNG, GIF (first frame), still WebP and uncompressed BMP"
REFUSED = f"image_bytes entries that are not images this model decodes ({SERVING_FORMATS}), by 0-based index:"


def _uint(head: tf.Tensor, pos: int, dtype) -> tf.Tensor:
    size = tf.dtypes.as_dtype(dtype).size
    return tf.io.decode_raw(tf.strings.substr(head, pos, size), dtype, little_endian=True)[0]


def _bmp(head: tf.Tensor, bits: list[int]) -> tf.Tensor:
    """Whether `head` starts an uncompressed BMP of one of these bits per pixel."""
    return tf.logical_and(
        tf.equal(tf.strings.substr(head, 0, 2), b"BM"),
        tf.logical_and(tf.reduce_any(tf.equal(tf.cast(_uint(head, 28, tf.uint16), tf.int32), bits)),
                       tf.equal(_uint(head, 30, tf.int32), 0)),  # compression: BI_RGB
    )


def _head(data: tf.Tensor) -> tf.Tensor:
    return tf.strings.join([tf.strings.substr(data, 0, 34), "\0" * 34])  # padded: substr needs pos <= length


def serving_reads(data: tf.Tensor) -> tf.Tensor:
    """Whether the serving decoder takes these bytes, from their signature (and a BMP's header)."""
    head = _head(data)
    return tf.reduce_any([*image_signatures(head), _bmp(head, [1, 4, 8, 24, 32])])


def decode_palette_bmp(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """An uncompressed 1, 4 or 8-bit palette BMP -> (uint8 (h, w, 3) RGB, the colours Pillow
    reads; whether the palette is all grey)."""
    offset, header = _uint(data, 10, tf.int32), _uint(data, 14, tf.int32)
    width, height = _uint(data, 18, tf.int32), _uint(data, 22, tf.int32)
    bits = tf.cast(_uint(data, 28, tf.uint16), tf.int32)
    colours = _uint(data, 46, tf.int32)
    colours = tf.where(colours == 0, tf.bitwise.left_shift(1, bits), colours)
    palette = tf.reshape(tf.io.decode_raw(tf.strings.substr(data, 14 + header, 4 * colours), tf.uint8), [-1, 4])
    palette = tf.reverse(palette[:, :3], [1])  # stored as blue, green, red, 0
    rows = tf.abs(height)  # negative: stored top row first
    stride = (width * bits + 31) // 32 * 4  # rows are padded to 4 bytes
    packed = tf.reshape(tf.io.decode_raw(tf.strings.substr(data, offset, stride * rows), tf.uint8), [rows, stride])
    per_byte = 8 // bits  # pixels in a byte, the leftmost in the high bits
    shifts = tf.cast(8 - bits * (tf.range(per_byte) + 1), tf.uint8)
    mask = tf.cast(tf.bitwise.left_shift(1, bits) - 1, tf.uint8)
    indices = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[..., None], shifts), mask)
    indices = tf.reshape(indices, [rows, stride * per_byte])[:, :width]
    image = tf.gather(palette, tf.cast(indices, tf.int32))
    image = tf.cond(height > 0, lambda: tf.reverse(image, [0]), lambda: image)
    return image, tf.reduce_all(tf.equal(palette, palette[:, :1]))


def _decode_palette_bmp(data: tf.Tensor, image_size: tuple[int, int], channels: int) -> tf.Tensor:
    """Pixels as `decode_image` gives them for the PNG that predict makes of a palette BMP with
    Pillow (a grey palette gives a grey PNG there, which a one-channel model takes as it is)."""
    image, grey = decode_palette_bmp(data)
    image = tf.cast(image, tf.float32)
    if channels == 1:
        image = tf.cond(grey, lambda: image[..., :1], lambda: tf.image.rgb_to_grayscale(image))
    return tf.image.resize(image, image_size)


def decode_for_serving(data: tf.Tensor, image_size: tuple[int, int], channels: int) -> tf.Tensor:
    """One entry's bytes -> float32 (h, w, channels) in [0, 255], or an error if serving refuses it."""
    check = tf.debugging.Assert(serving_reads(data), ["refused format"])
    with tf.control_dependencies([check]):
        data = tf.identity(data)
    return tf.cond(_bmp(_head(data), [1, 4, 8]),
                   lambda: _decode_palette_bmp(data, image_size, channels),
                   lambda: decode_image(data, image_size, channels))


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
