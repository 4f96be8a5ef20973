"""Files as they come from phones, cameras and file systems: animated WebP, EXIF orientation, huge
images, formats and names the scan would pass over, named pipes. Whatever the file, each path
(the scan, the training pipeline, predict, the exported SavedModel) ends as the README promises,
and all of them agree on the pixels of the same bytes.

What could abort the process in native code, or block for ever, runs in a child process with a
timeout, so that it shows as a failure and not as a dead or hung test worker.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tlkit.data import checks, decode, folders, splits
from tlkit.data import pipeline as data
from tlkit.data.report import DataReport
from tlkit.errors import TlkitError

ROOT = Path(__file__).resolve().parents[2]


def python(script: str, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    """`script` in a fresh Python; a native abort (exit 134) or a hang fails the test, not the worker."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
    return done


def animated_webp(path: Path) -> Path:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue", "green")]
    frames[0].save(path, "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    assert Image.open(path).n_frames == 3
    return path


def upright_pixels() -> np.ndarray:
    """A (48, 64) RGB image whose orientation shows: smooth (little JPEG loss), unlike any turn of it."""
    y, x = np.mgrid[:48, :64]
    return np.stack([x * 4, y * 5, 255 - (x + y) * 2], -1).clip(0, 255).astype(np.uint8)


def sideways_jpeg(path: Path, orientation: int = 6) -> Path:
    """The upright image stored turned (as a phone stores a photo), with the EXIF tag that turns it back."""
    stored = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(upright_pixels()).transpose(stored[orientation]).save(path, "JPEG", quality=95, exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert shown.shape == (48, 64, 3) and np.abs(shown.astype(int) - upright_pixels()).max() < 12
    return path


@pytest.fixture
def folder(tiny_images, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_images, tmp_path / "images"))


# --- animated WebP --------------------------------------------------------------------------


@pytest.mark.integration
def test_animated_webp_is_read_as_its_first_frame_by_scan_and_predict_and_refused_by_serving(folder):
    webp = animated_webp(folder / "red" / "moving.webp")
    done = python("""
        import json, sys
        from pathlib import Path
        import numpy as np, tensorflow as tf
        from PIL import Image
        from tlkit.data import folders
        from tlkit.data import pipeline as data
        from tlkit.exporters._decode import decode_batch
        root, webp = Path(sys.argv[1]), Path(sys.argv[2])
        images = folders.scan(root)
        first = np.asarray(Image.open(webp).convert("RGB"), np.float32)  # Pillow's frame 0
        got = data.load_image(webp, (30, 40))
        png = open(root / "red" / "0.png", "rb").read()
        try:
            decode_batch(tf.constant([png, webp.read_bytes(), png]), (30, 40), 3)
            refused = None
        except tf.errors.InvalidArgumentError as error:
            refused = error.message
        print(json.dumps({"scanned": webp in images.files, "skipped": images.skipped,
                          "error": float(np.abs(got - first).max()), "refused": refused}))
    """, folder, webp)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["scanned"] and not result["skipped"]
    assert result["error"] < 1e-3
    assert "still WebP" in result["refused"] and re.search(r"by 0-based index:\W*1(\]|$)", result["refused"])


# --- EXIF orientation -----------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_a_sideways_jpeg_with_its_exif_tag_decodes_upright_in_predict_training_and_serving(orientation, tmp_path):
    import tensorflow as tf

    from tlkit.exporters._decode import decode_batch

    upright = tmp_path / "upright.jpg"
    Image.fromarray(upright_pixels()).save(upright, "JPEG", quality=95)
    sideways = sideways_jpeg(tmp_path / "sideways.jpg", orientation)
    size = (24, 32)
    expected = data.load_image(upright, size)
    predicted = data.load_image(sideways, size)  # predict, evaluate and the pictures
    images = folders.ImageSet(tmp_path, ["a"], [upright, sideways], [0, 0])
    trained = next(iter(data.make_dataset(images, size, 2, cache="none")))[0].numpy()
    served = decode_batch(tf.constant([upright.read_bytes(), sideways.read_bytes()]), size, 3).numpy()
    for got in (predicted, trained[1], served[1]):
        assert np.abs(got - expected).max() < 8  # JPEG loss; a turned image is off by over 100
    np.testing.assert_allclose(served, trained, atol=1e-3)  # the same bytes give the same pixels


def test_exif_orientation_is_read_in_either_byte_order_and_ignored_when_absent_or_broken(tmp_path):
    import struct

    import tensorflow as tf

    def jpeg(exif: bytes | None) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (8, 8)).save(out, "JPEG", **({"exif": exif} if exif else {}))
        return out.getvalue()

    def tiff(order: str, entries: list[tuple[int, int]]) -> bytes:
        head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", 8)
        ifd = struct.pack(order + "H", len(entries))
        ifd += b"".join(struct.pack(order + "HHIHH", tag, 3, 1, value, 0) for tag, value in entries)
        return b"Exif\0\0" + head + ifd + struct.pack(order + "I", 0)

    cases = {jpeg(None): 1, jpeg(tiff("<", [(0x0110, 9), (0x0112, 6)])): 6,
             jpeg(tiff(">", [(0x0112, 8), (0x0132, 3)])): 8, jpeg(tiff("<", [(0x0112, 42)])): 1,
             jpeg(b"Exif\0\0II*\0\xff\xff\xff\x7f"): 1, b"": 1}
    for encoded, orientation in cases.items():
        assert int(decode.exif_orientation(tf.constant(encoded))) == orientation, encoded[:60]


@pytest.mark.slow  # trains and exports a model, then loads it in a fresh TensorFlow
def test_the_exported_savedmodel_turns_a_sideways_jpeg_upright_and_refuses_an_animated_webp(tiny_images, tmp_path):
    from tlkit.cli import main

    run, exported = tmp_path / "run", tmp_path / "export"
    main(["-q", "train", "--arch", "lenet5", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
          "--data", str(tiny_images), "--out", str(run)])
    main(["-q", "export", "--model", str(run), "--format", "savedmodel", "--out", str(exported)])
    upright, untagged = tmp_path / "upright.jpg", tmp_path / "untagged.jpg"
    Image.fromarray(upright_pixels()).save(upright, "JPEG", quality=95)
    Image.open(sideways_jpeg(tmp_path / "sideways.jpg")).save(untagged, "JPEG", quality=95)  # the EXIF dropped
    done = python("""
        import json, sys
        import numpy as np, tensorflow as tf
        serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
        files = [open(p, "rb").read() for p in sys.argv[2:]]
        got = serve(image_bytes=tf.constant(files[:3]))
        order = [np.argsort(c.numpy()) for c in got["classes"]]
        p = [v.numpy()[o] for v, o in zip(got["probabilities"], order)]
        try:
            serve(image_bytes=tf.constant(files))
            refused = None
        except tf.errors.InvalidArgumentError as error:
            refused = error.message
        print(json.dumps({"difference": float(np.abs(p[0] - p[1]).max()), "turned": float(np.abs(p[0] - p[2]).max()),
                          "refused": refused}))
    """, next(p for p in exported.iterdir() if p.is_dir()), upright, tmp_path / "sideways.jpg", untagged,
        animated_webp(tmp_path / "moving.webp"), timeout=300)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["difference"] < 0.02 and result["turned"] > 5 * result["difference"]
    assert re.search(r"by 0-based index:\W*3(\]|$)", result["refused"])


# --- huge images ----------------------------------------------------------------------------

PEAK = """
    import resource, sys
    from pathlib import Path
    from tlkit.data import checks
    from tlkit.data import pipeline as data

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # MiB

    small, *huge = map(Path, sys.argv[1:])
    data.load_images([small], (32, 32))
    checks.check_images([small])
    before = peak()
    for path in huge:
        checks.check_images([path, path])  # the scan's check, with two threads at it
        data.load_images([path], (32, 32))  # predict
    print(peak() - before)
"""


@pytest.mark.integration
@pytest.mark.parametrize("kind, size, limit", [("JPEG", 12000, 150), ("PNG", 9000, 650)])
def test_memory_for_a_huge_image_is_bounded(kind, size, limit, tiny_images, tmp_path):
    path = tmp_path / f"huge.{kind.lower()}"
    Image.new("RGB", (size, size), (200, 40, 90)).save(path, kind, **({"compress_level": 1} if kind == "PNG" else {}))
    grown = int(python(PEAK, tiny_images / "red" / "0.png", path, timeout=300).stdout.split()[-1])
    # before: 2.7 GB for the 12000 x 12000 JPEG (a full uint8 and a full float32 copy in each decoder);
    # and 2.7 GB for the PNG, which cannot be decoded reduced: now one 243 MB copy in each decoder
    assert grown < limit, f"peak memory grew by {grown} MiB for a {size} x {size} {kind}"


def test_an_image_over_the_pixel_limit_is_refused_by_name(folder, tmp_path):
    bomb = folder / "red" / "bomb.png"
    Image.new("1", (9500, 9500), 1).save(bomb)  # 90.25 megapixels; 11 MB of memory to make
    with pytest.raises(TlkitError) as error:
        folders.scan(folder)
    assert f"{bomb}: image too large (9500 x 9500 pixels, over the limit of {checks.MAX_PIXELS:,} pixels" \
        in str(error.value)
    images = folders.scan(folder, skip_bad=True)
    assert [path for path, _ in images.skipped] == [bomb]
    assert checks.check_images([bomb])[0][1].startswith("image too large")  # predict refuses it too


# --- files the scan would pass over ---------------------------------------------------------


def test_every_file_left_out_is_listed_with_why_and_training_reads_what_predict_reads(folder):
    from tlkit.evaluation.predict import _walk_images

    Image.open(folder / "red" / "0.png").save(folder / "red" / "phone.avif")
    heic = folder / "red" / "IMG_0001.HEIC"
    heic.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64))  # the header of an iPhone photo
    Image.open(folder / "green" / "0.png").convert("RGB").save(folder / "green" / "IMG_0002", "JPEG")
    Image.open(folder / "blue" / "0.png").save(folder / "stray.png")
    (folder / "blue" / "notes.txt").write_text("taken on a Tuesday")

    images = folders.scan(folder, skip_bad=True)
    assert folder / "red" / "phone.avif" in images.files
    assert (folder / "red" / "phone.avif") in _walk_images(folder)  # predict reads the same files
    assert dict(images.skipped) == {heic: "a HEIC/HEIF image, which this installation cannot read (Pillow has no "
                                          "HEIF plugin here): convert it to JPEG or PNG"}
    why = dict(images.ignored)
    assert set(why) == {folder / "stray.png", folder / "green" / "IMG_0002", folder / "blue" / "notes.txt"}
    assert why[folder / "stray.png"].startswith("beside the class folders")
    assert why[folder / "green" / "IMG_0002"].startswith("a JPEG image without an image extension")
    assert why[folder / "blue" / "notes.txt"].startswith("not an image file name (.txt")

    train, val = splits.split(images, 0.25, 0)
    report = DataReport.of(train, val)
    assert dict(report.ignored) == {str(p): w for p, w in why.items()}
    assert DataReport.from_json(json.loads(json.dumps(report.to_json()))).ignored == report.ignored
    assert any(w.startswith("3 files in the data not used") and "IMG_0002" in w for w in report.warnings)


def test_a_named_pipe_in_the_data_is_named_and_never_opened(folder):
    pipe = folder / "red" / "pipe.jpg"
    os.mkfifo(pipe)
    os.mkfifo(folder / "green" / "pipe")  # without an image extension: listed, not opened either
    done = python("""
        import sys
        from tlkit.data import folders
        from tlkit.errors import TlkitError
        try:
            folders.scan(sys.argv[1])
        except TlkitError as error:
            print(error)
        images = folders.scan(sys.argv[1], skip_bad=True)
        print(images.skipped, images.ignored)
    """, folder, timeout=60)
    assert f"{pipe}: not an image (not a regular file: a named pipe, socket or device)" in done.stdout
    assert "pipe.jpg" in done.stdout.splitlines()[-1] and "green/pipe" in done.stdout.splitlines()[-1]
