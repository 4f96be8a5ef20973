"""tlkit.data.pipeline: scanning and validating class folders, splitting, decoding, tf.data pipelines, samples."""
from __future__ import annotations

import csv
import io
import itertools
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tlkit.data import decode, folders, splits
from tlkit.data import pipeline as data
from tlkit.errors import TlkitError
from tlkit.rundir import load as rundir

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"


@pytest.fixture
def folder(tiny_images, tmp_path) -> Path:
    """A copy of tiny_images that a test may change."""
    return Path(shutil.copytree(tiny_images, tmp_path / "images"))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def gradient(width=12, height=10) -> np.ndarray:
    """A smooth RGB image, so lossy formats stay close to the original."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x * 20, y * 25, 255 - x * 10 - y * 5], -1).astype(np.uint8)


# --- scan -----------------------------------------------------------------------------------


def test_scan_finds_sorted_classes_and_every_image(tiny_images):
    images = folders.scan(tiny_images)
    assert images.classes == ["blue", "green", "red"]
    assert len(images) == 24 and images.skipped == []
    assert Counter(images.labels) == {0: 8, 1: 8, 2: 8}
    assert images.files[:2] == [tiny_images / "blue" / "0.png", tiny_images / "blue" / "1.png"]
    assert all(f.parent.name == images.classes[label] for f, label in zip(images.files, images.labels))


def test_scan_ignores_hidden_and_non_image_files_and_searches_sub_folders(folder):
    (folder / "red" / ".DS_Store").write_bytes(b"\0\1junk")
    (folder / "red" / "._0.png").write_bytes(b"AppleDouble junk")  # macOS resource fork
    (folder / "red" / "notes.txt").write_text("not an image")
    (folder / ".hidden_class").mkdir()
    (folder / "blue" / ".ipynb_checkpoints").mkdir()
    shutil.copy(folder / "blue" / "0.png", folder / "blue" / ".ipynb_checkpoints" / "0.png")
    (folder / "green" / "more").mkdir()
    flipped = Image.open(folder / "green" / "0.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.save(folder / "green" / "more" / "0.PNG")  # another content: a copy would count once
    (folder / "README.md").write_text("loose file at the top: ignored")

    images = folders.scan(folder)
    assert images.classes == ["blue", "green", "red"]
    assert Counter(images.labels) == {0: 8, 1: 9, 2: 8}
    assert folder / "green" / "more" / "0.PNG" in images.files


def test_scan_with_given_classes_uses_their_order_and_allows_missing_folders(folder):
    shutil.rmtree(folder / "green")
    images = folders.scan(folder, classes=["red", "green", "blue", "violet"])
    assert images.classes == ["red", "green", "blue", "violet"]
    assert Counter(images.labels) == {0: 8, 2: 8}
    assert all(f.parent.name == "red" for f, label in zip(images.files, images.labels) if label == 0)


def test_scan_with_given_classes_rejects_an_unknown_folder(folder):
    with pytest.raises(TlkitError, match=r"folder 'red' in .* is not one of the model's classes \(blue, green\)"):
        folders.scan(folder, classes=["blue", "green"])


def test_scan_names_every_bad_file_by_path_and_problem(bad_images):
    root = bad_images.root
    png = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)), "PNG")
    (root / "blue" / "empty.png").write_bytes(b"")
    (root / "blue" / "text.jpg").write_text("this is not a JPEG\n")
    (root / "green" / "scrambled.png").write_bytes(png[:2000] + bytes(500) + png[2500:])  # image data zeroed
    (root / "green" / "no_end.png").write_bytes(png[:-12])  # lost its end chunk: Pillow still reads it
    expected = [  # (file, what its line must say)
        (root / "blue" / "empty.png", "empty file"),
        (root / "blue" / "text.jpg", "not an image"),
        (root / "green" / "scrambled.png", "corrupt image"),
        (root / "green" / "no_end.png", "TensorFlow cannot decode it"),
        (bad_images.empty, "empty file"),
        (bad_images.truncated, "truncated image"),
    ]
    with pytest.raises(TlkitError) as caught:
        folders.scan(root)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"6 bad image files in '{root}'; fix or remove them, or pass --skip-bad to skip them:"
    assert len(lines) == 7
    for path, problem in expected:
        (line,) = [line for line in lines if line.startswith(f"  {path}: ")]
        assert problem in line, line


def _damaged_jpegs(count: int) -> list[bytes]:
    """`count` seeded damages of small JPEGs (baseline and progressive, RGB and gray, with and
    without restart markers, and one under 8 pixels a side, which the check decodes another way):
    cut short, bytes changed, runs zeroed, bytes inserted or deleted."""
    rng = np.random.default_rng(0)
    sources = [encoded(Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).convert(mode), "JPEG",
                       quality=85, progressive=progressive, **({"restart_marker_blocks": 2} if restart else {}))
               for mode in ("RGB", "L") for progressive in (False, True) for restart in (False, True)]
    sources.append(encoded(Image.fromarray(rng.integers(0, 256, (5, 7, 3), np.uint8)), "JPEG"))
    damaged = []
    while len(damaged) < count:
        data = bytearray(sources[rng.integers(len(sources))])
        at = int(rng.integers(3, len(data)))
        kind = rng.integers(5)
        if kind == 0:
            del data[at:]
        elif kind == 1:
            for i in rng.integers(3, len(data), rng.integers(1, 20)):
                data[i] = rng.integers(256)
        elif kind == 2:
            run = min(int(rng.integers(1, 300)), len(data) - at)
            data[at:at + run] = bytes(run)
        elif kind == 3:
            data[at:at] = rng.integers(0, 256, rng.integers(1, 50), np.uint8).tobytes()
        else:
            del data[at:at + rng.integers(1, 200)]
        damaged.append(bytes(data))
    return damaged


def test_the_check_refuses_every_jpeg_either_decoder_refuses(tmp_path):
    """The check decodes a JPEG with TensorFlow alone (tlkit.data.checks._inspect): it must refuse
    every damaged JPEG that Pillow's decode or TensorFlow's refuses, as a check by both would."""
    from tlkit.data import checks

    paths, refused, verdicts = [], set(), Counter()  # verdicts: (Pillow reads it, TensorFlow decodes it)
    for i, jpeg in enumerate(_damaged_jpegs(400)):
        path = write(tmp_path / f"{i}.jpg", jpeg)
        paths.append(path)
        try:
            with checks._pillow_open(jpeg) as image:
                image.load()
            pillow = True
        except Exception:
            pillow = False
        try:
            decode.decoded_shape(tf.constant(jpeg))
            tensorflow = True
        except tf.errors.OpError:
            tensorflow = False
        verdicts[pillow, tensorflow] += 1
        if not (pillow and tensorflow):
            refused.add(path)
    assert verdicts[True, False] > 0 and verdicts[False, False] > 50, verdicts  # the damage is varied
    assert verdicts[False, True] == 0, "Pillow refuses a damaged JPEG that TensorFlow decodes"
    bad = {path for path, _ in checks.check_images(paths)}  # in the scan's threads
    assert bad == refused


def test_skip_bad_leaves_bad_files_out_and_records_them(bad_images):
    images = folders.scan(bad_images.root, skip_bad=True)
    assert len(images) == 24 and Counter(images.labels) == {0: 8, 1: 8, 2: 8}
    assert dict(images.skipped).keys() == {bad_images.empty, bad_images.truncated}
    assert dict(images.skipped)[bad_images.empty] == "empty file"
    assert bad_images.truncated not in images.files
    train, val = splits.split(images, 0.25, seed=0)
    assert train.skipped == val.skipped == images.skipped


def test_skip_bad_that_empties_a_class_is_an_error(folder):
    shutil.rmtree(folder / "red")
    (folder / "red").mkdir()
    (folder / "red" / "a.jpg").write_bytes(b"")
    with pytest.raises(TlkitError, match=r"^class 'red' has 0 images \(1 bad skipped\); need at least 1$"):
        folders.scan(folder, skip_bad=True)


def remove_all(root: Path) -> None:
    for d in list(root.iterdir()):
        shutil.rmtree(d)


def flatten(root: Path) -> None:
    """Images straight in the data folder instead of in class folders."""
    for d in list(root.iterdir()):
        shutil.copy(d / "0.png", root / f"{d.name}.png")
        shutil.rmtree(d)


def replace_with_file(root: Path) -> None:
    shutil.rmtree(root)
    root.write_text("x")


@pytest.mark.parametrize(
    "arrange, message",
    [
        (shutil.rmtree, r"^data folder '.*' does not exist$"),
        (replace_with_file, r"^data path '.*' is not a folder; give a folder with one sub-folder per class$"),
        (remove_all, r"^no class sub-folders in '.*': put each class's images in '.*/<class>/'$"),
        (flatten, r"^no class sub-folders .* \(the images directly inside it have no class\)$"),
        (
            lambda root: [shutil.rmtree(root / c) for c in ("blue", "green")],
            r"^only one class folder \('red'\) in '.*': a classifier needs at least 2 classes$",
        ),
        (
            lambda root: [p.unlink() for p in (root / "green").iterdir()],
            r"^class 'green' has no images in '.*green'; add some or remove the folder$",
        ),
    ],
    ids=["missing", "file", "no-classes", "loose-images", "single-class", "empty-class"],
)
def test_scan_errors_for_unusable_folders(folder, arrange, message):
    arrange(folder)
    with pytest.raises(TlkitError, match=message):
        folders.scan(folder)


def test_scan_min_per_class(folder):
    for p in sorted((folder / "green").iterdir())[1:]:
        p.unlink()
    assert len(folders.scan(folder)) == 17
    with pytest.raises(TlkitError, match=r"^class 'green' has 1 image; need at least 2$"):
        folders.scan(folder, min_per_class=2)


# --- split ----------------------------------------------------------------------------------


def test_split_is_seeded_stratified_and_complete(tiny_images):
    images = folders.scan(tiny_images)
    train, val = splits.split(images, 0.25, seed=1)
    assert Counter(train.labels) == {0: 6, 1: 6, 2: 6} and Counter(val.labels) == {0: 2, 1: 2, 2: 2}
    assert sorted(train.files + val.files) == sorted(images.files)
    assert all(images.labels[images.files.index(f)] == label for f, label in zip(val.files, val.labels))
    again_train, again_val = splits.split(images, 0.25, seed=1)
    assert (again_train.files, again_val.files) == (train.files, val.files)
    assert splits.split(images, 0.25, seed=2)[1].files != val.files


def test_split_keeps_one_image_on_each_side(tiny_images):
    images = folders.scan(tiny_images).subset([0, 1, 8, 9, 10, 16, 17, 18, 19, 20])  # 2, 3 and 5 images
    train, val = splits.split(images, 0.9, seed=0)
    assert Counter(train.labels) == {0: 1, 1: 1, 2: 1} and Counter(val.labels) == {0: 1, 1: 2, 2: 4}
    train, val = splits.split(images, 0.01, seed=0)
    assert Counter(val.labels) == {0: 1, 1: 1, 2: 1}


def test_split_errors(tiny_images):
    images = folders.scan(tiny_images)
    with pytest.raises(TlkitError, match=r"^class 'green' has 1 image; need at least 2 to split, or pass --val-data$"):
        splits.split(images.subset([0, 1, 8, 16, 17]), 0.2, seed=0)
    for bad in (0, 1, 1.5):
        with pytest.raises(TlkitError, match="validation split must be between 0 and 1"):
            splits.split(images, bad, seed=0)


# --- decoding -------------------------------------------------------------------------------


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def test_every_mode_and_format_becomes_rgb_with_its_values(tmp_path):
    rgb = gradient()
    gray = rgb[..., 1]
    alpha = np.full_like(gray, 7)
    palette = Image.fromarray(rgb).quantize(colors=16)
    sixteen = (gray.astype(np.uint16) << 8) | 0x5A  # 16-bit: the high byte is `gray`
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cases = {
        "L.png": (Image.fromarray(gray), "PNG", {}, np.repeat(gray[..., None], 3, -1)),
        "LA.png": (Image.fromarray(np.stack([gray, alpha], -1), "LA"), "PNG", {}, np.repeat(gray[..., None], 3, -1)),
        "RGBA.png": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG", {}, rgb),
        "P.png": (palette, "PNG", {"transparency": 0}, np.asarray(palette.convert("RGB"))),
        "I16.png": (Image.fromarray(sixteen), "PNG", {}, np.repeat(gray[..., None], 3, -1)),
        "1.png": (Image.fromarray(gray > 128), "PNG", {}, np.repeat(np.where(gray > 128, 255, 0)[..., None], 3, -1)),
        "P.gif": (palette, "GIF", {}, np.asarray(palette.convert("RGB"))),
        "P.bmp": (palette, "BMP", {}, np.asarray(palette.convert("RGB"))),  # TensorFlow alone gives palette indices
        "RGB.bmp": (Image.fromarray(rgb), "BMP", {}, rgb),
        "RGB.tif": (Image.fromarray(rgb), "TIFF", {}, rgb),
        "I16.tif": (Image.fromarray(sixteen), "TIFF", {}, np.repeat(gray[..., None], 3, -1)),
        "CMYK.tif": (cmyk, "TIFF", {}, np.asarray(cmyk.convert("RGB"))),
        "RGBA.webp": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "WEBP", {"lossless": True}, rgb),
    }
    for name, (image, fmt, options, expected) in cases.items():
        path = write(tmp_path / name, encoded(image, fmt, **options))
        got = data.load_image(path, gray.shape)
        assert got.dtype == np.float32 and got.shape == (10, 12, 3), name
        np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=name)


def test_lossy_and_cmyk_jpegs_decode_close_to_pillow(tmp_path):
    rgb = gradient()
    for mode in ("RGB", "L", "CMYK"):
        image = Image.fromarray(rgb).convert(mode)
        path = write(tmp_path / f"{mode}.jpg", encoded(image, "JPEG", quality=95))
        expected = np.asarray(Image.open(path).convert("RGB"), np.float32)
        # libjpeg builds differ by a few levels (TensorFlow's default IDCT is the fast integer one);
        # a CMYK image read with its ink inverted would be off by about 100
        assert np.abs(data.load_image(path, rgb.shape[:2]) - expected).mean() < 5, mode


def test_one_channel_images(tmp_path):
    rgb = gradient()
    gray_file = write(tmp_path / "gray.png", encoded(Image.fromarray(rgb[..., 0]), "PNG"))
    rgb_file = write(tmp_path / "rgb.png", encoded(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(data.load_image(gray_file, (10, 12), channels=1)[..., 0], rgb[..., 0])
    expected = rgb.astype(np.float32) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    np.testing.assert_allclose(data.load_image(rgb_file, (10, 12), channels=1)[..., 0], expected, atol=1e-3)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        data.load_image(rgb_file, (10, 12), channels=4)


def test_decode_image_is_graph_safe_and_matches_load_image(tiny_images, tmp_path):
    jpeg = write(tmp_path / "a.jpg", encoded(Image.open(tiny_images / "red" / "0.png"), "JPEG"))
    serve = tf.function(lambda b: decode.decode_image(b, (20, 24)), input_signature=[tf.TensorSpec([], tf.string)])
    assert serve.get_concrete_function().structured_outputs.shape.as_list() == [20, 24, 3]
    for path in (tiny_images / "red" / "0.png", jpeg):
        got = serve(tf.constant(path.read_bytes())).numpy()
        np.testing.assert_array_equal(got, data.load_image(path, (20, 24)))
        assert got.dtype == np.float32 and 0 <= got.min() and got.max() <= 255


def test_load_images_names_bad_and_missing_files(bad_images, tiny_images):
    good = tiny_images / "blue" / "0.png"
    assert data.load_images([good, good], (8, 8)).shape == (2, 8, 8, 3)
    assert data.load_images([], (8, 8)).shape == (0, 8, 8, 3)
    with pytest.raises(TlkitError, match=r"^1 bad image file:\n  .*nothing.png: no such file$"):
        data.load_images([good, tiny_images / "nothing.png"], (8, 8))
    with pytest.raises(TlkitError) as caught:
        data.load_images([bad_images.empty, good, bad_images.truncated], (8, 8))
    assert str(caught.value).splitlines()[1:] == [
        f"  {bad_images.empty}: empty file",
        f"  {bad_images.truncated}: truncated image (Truncated File Read)",
    ]


# --- tf.data --------------------------------------------------------------------------------


def batches(dataset, epochs=1):
    return [(x.numpy(), y.numpy()) for _ in range(epochs) for x, y in dataset]


def test_make_dataset_without_shuffle_or_augment_feeds_what_load_images_gives(tiny_images):
    images = folders.scan(tiny_images)
    got = batches(data.make_dataset(images, (16, 16), batch_size=10))
    assert [x.shape for x, _ in got] == [(10, 16, 16, 3), (10, 16, 16, 3), (4, 16, 16, 3)]
    assert got[0][0].dtype == np.float32 and got[0][1].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), data.load_images(images.files, (16, 16)))
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), images.labels)
    again = batches(data.make_dataset(images, (16, 16), batch_size=10))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got, again))


def test_shuffle_and_augment_are_reproducible_from_the_seed(tiny_images):
    images = folders.scan(tiny_images)

    def run(seed):
        dataset = data.make_dataset(images, (16, 16), batch_size=8, shuffle=True, augment=True, seed=seed)
        return batches(dataset, epochs=2)

    first, second = run(5), run(5)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, second))
    epoch1, epoch2 = first[:3], first[3:]
    assert not np.array_equal(np.concatenate([y for _, y in epoch1]), np.concatenate([y for _, y in epoch2]))
    assert sorted(np.concatenate([y for _, y in epoch1])) == sorted(images.labels)
    assert not np.array_equal(run(6)[0][0], first[0][0])
    pixels = np.concatenate([x for x, _ in first])
    assert pixels.shape == (48, 16, 16, 3) and pixels.min() >= 0 and pixels.max() <= 255


def test_augment_changes_images_but_keeps_them_recognisable(tiny_images):
    images = folders.scan(tiny_images)
    plain = data.load_images(images.files, (32, 32))
    augmented = batches(data.make_dataset(images, (32, 32), batch_size=24, augment=True, seed=0))[0][0]
    assert not np.array_equal(plain, augmented)
    # the class colour stays the strongest channel
    assert (augmented.mean(axis=(1, 2)).argmax(-1) == 2 - np.array(images.labels)).all()


# --- labels ---------------------------------------------------------------------------------


def test_labels_file_round_trip(tmp_path):
    path = tmp_path / "labels.txt"
    rundir.write_labels(path, ["cat", "hot dog", "2"])
    assert path.read_text() == "cat\nhot dog\n2\n"
    assert rundir.read_labels(path) == ["cat", "hot dog", "2"]
    assert [p.name for p in tmp_path.iterdir()] == ["labels.txt"]
    with pytest.raises(TlkitError, match="no labels file"):
        rundir.read_labels(tmp_path / "missing.txt")


# --- data_samples ---------------------------------------------------------------------------


def test_sample_photos_have_enough_classes_and_images():
    images = folders.scan(SAMPLES / "photos")
    counts = Counter(images.labels)
    assert len(images.classes) >= 4 and min(counts.values()) >= 30
    assert {Image.open(f).size for f in images.files} == {(96, 96)}
    assert {Image.open(f).mode for f in images.files} == {"RGB"}


def test_sample_photo_crops_never_overlap():
    with open(SAMPLES / "photos" / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    files = {str(p.relative_to(SAMPLES / "photos")) for p in (SAMPLES / "photos").rglob("*.jpg")}
    assert {row["file"] for row in rows} == files and len(rows) == len(files)
    by_source = defaultdict(list)
    for row in rows:
        assert row["file"].split("/")[0] == row["class"]
        by_source[row["source"]].append(tuple(int(row[k]) for k in ("left", "top", "right", "bottom")))
    assert len(by_source) == len({row["class"] for row in rows})  # one photo per class
    for boxes in by_source.values():
        for (l1, t1, r1, b1), (l2, t2, r2, b2) in itertools.combinations(boxes, 2):
            assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, (l1, t1, r1, b1, l2, t2, r2, b2)


def test_sample_digits_are_all_1797_grayscale_8x8():
    images = folders.scan(SAMPLES / "digits")
    assert images.classes == [str(d) for d in range(10)] and len(images) == 1797
    assert Counter(images.labels)[0] == 178
    first = Image.open(SAMPLES / "digits" / "0" / "0000.png")
    assert (first.mode, first.size) == ("L", (8, 8))
    assert np.asarray(first)[0].tolist() == [0, 0, 80, 207, 143, 16, 0, 0]  # load_digits()[0] row 0: 0 0 5 13 9 1 0 0
