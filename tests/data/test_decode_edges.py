"""Decoding edge cases: float and 16-bit TIFFs, symbolic links, names that are not UTF-8, class
names that cannot be one line of labels.txt."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tifffile
from PIL import Image

from tlkit.data import checks, folders
from tlkit.data import pipeline as data
from tlkit.errors import TlkitError


@pytest.fixture
def folder(tiny_images, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_images, tmp_path / "images"))


def ramp(low: float, high: float, dtype) -> np.ndarray:
    """A (10, 12) ramp from `low` to `high`."""
    return np.linspace(low, high, 120).reshape(10, 12).astype(dtype)


def tiff(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path, "TIFF") if mode else Image.fromarray(array).save(path, "TIFF")
    return path


def gray3(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, -1).astype(np.float32)


def test_float_tiffs_keep_their_values(tmp_path):
    unit = ramp(0, 1, np.float32)  # the float image convention: [0, 1] means black to white
    got = data.load_image(tiff(tmp_path / "unit.tif", unit), (10, 12))
    np.testing.assert_array_equal(got, gray3(np.round(unit * 255)))
    assert got.max() == 255  # not the black square Pillow's own conversion to RGB gives

    levels = ramp(0, 255, np.float32)  # already on the 8-bit scale: kept, as Pillow's "F" -> "L" keeps it
    np.testing.assert_array_equal(data.load_image(tiff(tmp_path / "levels.tif", levels), (10, 12)),
                                  gray3(np.round(levels)))

    wide = ramp(-100, 400, np.float32)  # out of range: clipped
    wide[0, 0] = np.nan
    expected = np.clip(np.round(np.nan_to_num(wide)), 0, 255)
    np.testing.assert_array_equal(data.load_image(tiff(tmp_path / "wide.tif", wide), (10, 12)), gray3(expected))


def test_16_and_32_bit_integer_tiffs(tmp_path):
    sixteen = ramp(0, 65535, np.uint16)
    expected = gray3(sixteen >> 8)  # the high byte, as TensorFlow decodes a 16-bit PNG
    np.testing.assert_array_equal(data.load_image(tiff(tmp_path / "le.tif", sixteen), (10, 12)), expected)
    big_endian = tmp_path / "be.tif"
    Image.frombytes("I;16B", (12, 10), sixteen.astype(">u2").tobytes()).save(big_endian, "TIFF")
    assert Image.open(big_endian).mode == "I;16B"
    np.testing.assert_array_equal(data.load_image(big_endian, (10, 12)), expected)

    wide = ramp(-50, 1000, np.int32)  # 32-bit: rounded and clipped, as Pillow's "I" -> "L"
    np.testing.assert_array_equal(data.load_image(tiff(tmp_path / "i32.tif", wide, "I"), (10, 12)),
                                  gray3(np.clip(wide, 0, 255)))


def test_16_bit_rgb_tiff(tmp_path):
    # Pillow cannot write 16-bit RGB; tifffile comes with scikit-image (the test extra)
    rgb = np.stack([ramp(0, 65535, np.uint16), ramp(65535, 0, np.uint16), ramp(0, 30000, np.uint16)], -1)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    got = data.load_image(tmp_path / "rgb16.tif", (10, 12))
    assert np.abs(got - (rgb >> 8)).max() <= 1  # Pillow reads it at 8 bits, rounding rather than shifting


def test_a_tiff_pillow_cannot_read_is_named_as_such(folder):
    tifffile.imwrite(folder / "red" / "float_rgb.tif", np.zeros((8, 8, 3), np.float32), photometric="rgb")
    with pytest.raises(TlkitError) as caught:
        folders.scan(folder)
    assert str(caught.value).splitlines()[1] == (
        f"  {folder}/red/float_rgb.tif: a TIFF of a kind Pillow cannot read (for example float RGB or 64-bit "
        "samples); save it as 8- or 16-bit, or as float gray"
    )


def test_symbolic_link_loops_and_dangling_links_are_named(folder, tmp_path):
    os.symlink("self.png", folder / "red" / "self.png")
    os.symlink("ping.png", folder / "red" / "pong.png")
    os.symlink("pong.png", folder / "red" / "ping.png")
    os.symlink("gone.png", folder / "blue" / "dangling.png")
    Image.open(folder / "blue" / "0.png").rotate(90).save(tmp_path / "elsewhere.png")
    os.symlink(tmp_path / "elsewhere.png", folder / "blue" / "linked.png")  # a good link is an image
    with pytest.raises(TlkitError) as caught:
        folders.scan(folder)
    loop = "symbolic link loop (the link leads back to itself); remove it or point it at an image"
    assert str(caught.value).splitlines()[1:] == [
        f"  {folder}/blue/dangling.png: dangling symbolic link (its target 'gone.png' does not exist)",
        f"  {folder}/red/ping.png: {loop}",
        f"  {folder}/red/pong.png: {loop}",
        f"  {folder}/red/self.png: {loop}",
    ]
    images = folders.scan(folder, skip_bad=True)
    assert len(images) == 25 and len(images.skipped) == 4 and folder / "blue" / "linked.png" in images.files


def test_file_and_folder_names_that_are_not_utf8(folder):
    root = os.fsencode(folder)
    latin1 = os.fsdecode(root + b"/green/caf\xe9.png")  # "café" in Latin-1: not valid UTF-8
    Path(folder / "green" / "0.png").rename(latin1)
    os.mkdir(os.fsdecode(root + b"/blue/\xff\xfe sub"))
    shutil.copy(folder / "blue" / "0.png", os.fsdecode(root + b"/blue/\xff\xfe sub/x.png"))
    (folder / "blue" / "0.png").unlink()

    images = folders.scan(folder)
    assert len(images) == 24 and images.counts() == [8, 8, 8]
    weird = [f for f in images.files if checks.printable(f) != str(f)]
    shown = [checks.printable(f)[len(str(folder)):] for f in weird]
    assert shown == ["/blue/\\xff\\xfe sub/x.png", "/green/caf\\xe9.png"]
    batch = next(iter(data.make_dataset(images, (8, 8), batch_size=24)))[0].numpy()
    np.testing.assert_array_equal(batch, data.load_images(images.files, (8, 8)))

    # a bad file with such a name is named, printably
    Path(os.fsdecode(root + b"/red/bad\xe9.jpg")).write_bytes(b"not a jpeg")
    with pytest.raises(TlkitError) as caught:
        folders.scan(folder)
    message = str(caught.value)
    message.encode("utf-8")  # printable on any console
    assert f"  {folder}/red/bad\\xe9.jpg: not an image" in message


def test_a_class_folder_name_that_is_not_utf8_is_refused_by_name(folder):
    os.mkdir(os.fsdecode(os.fsencode(folder) + b"/gr\xfcn"))
    shutil.copy(folder / "green" / "0.png", os.fsdecode(os.fsencode(folder) + b"/gr\xfcn/0.png"))
    with pytest.raises(TlkitError, match=r"^class folder name 'gr\\xfcn' in '.*' is not valid UTF-8, so it cannot"):
        folders.scan(folder)


@pytest.mark.parametrize("name", ["two\nlines", "carriage\rreturn", "next\x85line", "para\u2029graph", "form\x0cfeed"])
def test_a_class_folder_name_that_is_not_one_line_is_refused_by_name(folder, name):
    (folder / "green").rename(folder / name)
    with pytest.raises(TlkitError) as caught:
        folders.scan(folder)
    assert str(caught.value) == (
        f"class folder name {name!r} in '{folder}' holds a line break, so it cannot be one line of labels.txt: "
        "rename the folder"
    )
    assert "\n" not in str(caught.value)


def test_class_names_with_spaces_and_unicode_are_fine(folder):
    (folder / "green").rename(folder / " grün 🌿 ")
    assert folders.scan(folder).classes == [" grün 🌿 ", "blue", "red"]


def test_a_large_jpeg_decodes_at_reduced_size(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:256, :320]
    photo = np.stack([x * 0.7, y * 0.9, 128 + 60 * np.sin(x / 9.0) * np.cos(y / 7.0)], -1)
    photo = np.clip(photo + rng.normal(0, 20, photo.shape), 0, 255).astype(np.uint8)  # fine detail, as in a photo
    for mode in ("RGB", "L", "CMYK"):
        path = tmp_path / f"{mode}.jpg"
        Image.fromarray(photo).convert(mode).save(path, "JPEG", quality=95)
        full = np.asarray(Image.open(path).convert("RGB"), np.float32)[None]
        area = tf.image.resize(full, (32, 40), method="area")[0].numpy()  # the antialiased downscale
        bilinear = tf.image.resize(full, (32, 40))[0].numpy()  # full decode, then resize: aliased
        got = data.load_image(path, (32, 40))  # decoded at 1/8 (32 x 40) by libjpeg
        assert np.abs(got - area).mean() < 3 < np.abs(bilinear - area).mean(), mode
    # small enough: decoded in full, as before
    Image.fromarray(photo[:60, :70]).save(tmp_path / "small.jpg", "JPEG", quality=95)
    full = tf.io.decode_jpeg((tmp_path / "small.jpg").read_bytes())
    np.testing.assert_array_equal(data.load_image(tmp_path / "small.jpg", (32, 40)),
                                  tf.image.resize(tf.cast(full, tf.float32), (32, 40)).numpy())
