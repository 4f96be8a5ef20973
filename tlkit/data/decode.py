"""Decoding: every image goes through one decoder, `decode_image`, which is pure TensorFlow so that
the exported serving signature decodes exactly as training did. TensorFlow reads JPEG, PNG, GIF
and WebP; the other formats Pillow opens (BMP, TIFF, ...) are re-encoded by Pillow as PNG on the
way in, so they too end up in `decode_image`.
"""
from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

# Modes Pillow writes as 8-bit PNG unchanged; `_eight_bit` converts the others.
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")


JPEG_RATIOS = (8, 4, 2)  # the scales libjpeg decodes at, largest reduction first


# A reduced JPEG keeps at least this many times the target size on each side. 1, because a
# bilinear resize from under twice the size hardly aliases: on photos of 2,000-4,000 px it came
# closest to an area-averaged downscale, nearer than margin 2 and than the full decode.
JPEG_MARGIN = 1


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


def _decode(data: tf.Tensor) -> tf.Tensor:
    # uint8: TensorFlow's WebP decoder only gives uint8, and its PNG decoder scales 16-bit images
    # to 8 bits (the high byte), so every format lands on [0, 255]; and a float32 copy of a large
    # image would take four times its memory. Channels are left as stored (channels=0) because the
    # WebP decoder accepts no other request, and so gray and RGB conversions are done one way for
    # all formats in `_to_channels`.
    return tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)


def _decode_for(data: tf.Tensor, size, margin: int | None = None, upright: bool = True) -> tf.Tensor:
    """`_decode`, but a large JPEG at the largest of 1/8, 1/4, 1/2 of its size that leaves at least
    `margin` (JPEG_MARGIN) times `size` on each side, turned upright by its EXIF orientation
    (unless not `upright`)."""
    margin = JPEG_MARGIN if margin is None else margin

    def jpeg():
        orientation = exif_orientation(data) if upright else tf.constant(1)
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


def load_file(path: tf.Tensor, image_size, channels: int) -> tf.Tensor:
    return _loader(tuple(image_size), channels)(path)


@functools.lru_cache(maxsize=8)
def _loader(image_size: tuple[int, int], channels: int):
    # Traced once per size: every pipeline built after the first (one per extraction, per split,
    # per run in a process) calls it instead of tracing the decoders again, which cost about as
    # much as decoding a few hundred small photos.
    return tf.function(lambda path: decode_image(_file_bytes(path), image_size, channels),
                       input_signature=[tf.TensorSpec([], tf.string)])


def decoded_dataset(paths: Sequence[Path], image_size, channels: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(tf_paths(paths)).map(
        lambda path: load_file(path, image_size, channels), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def decoded_shape(data):
    # a JPEG at 1/8 of its size: libjpeg still reads all of it, so damage is found as in full;
    # not turned upright, which cannot fail (an unreadable orientation is 1) and took over half
    # of the time (bench/scan_rate.py)
    return tf.shape(_decode_for(_decodable(data), (1, 1), upright=False))


def decode_eighth_jpeg(data: bytes) -> None:
    """Raises tf.errors.OpError where `decoded_shape` would for a JPEG of at least 8 x 8 pixels:
    the same libjpeg decode at 1/8, run eagerly. Nothing to trace: tracing `decoded_shape` takes
    a second or two, a tenth of a scan of 10,000 photos, and its graph costs more a call."""
    tf.io.decode_jpeg(data, channels=0, ratio=8)


def tf_paths(paths: Sequence[Path]) -> list[bytes]:
    """Paths as TensorFlow reads them: the file system's bytes, so names that are not UTF-8 work."""
    return [os.fsencode(p) for p in paths]
