"""tlkit.data.imagecache through tlkit.data.pipeline: images decoded once, in memory or on disk, the same batches."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlkit.data import folders
from tlkit.data import pipeline as data

SIZE = (16, 16)


@pytest.fixture
def folder(tiny_images, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_images, tmp_path / "images"))


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


def batches(dataset, epochs=2):
    return [(x.numpy(), y.numpy()) for _ in range(epochs) for x, y in dataset]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x1, x2) and np.array_equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b)
    )


@pytest.mark.parametrize("mode", ["memory", "disk", "auto"])
def test_cached_batches_are_the_uncached_ones(tiny_images, mode):
    images = folders.scan(tiny_images)
    options = dict(batch_size=10, shuffle=True, augment=True, seed=4)
    plain = batches(data.make_dataset(images, SIZE, **options))
    assert same(batches(data.make_dataset(images, SIZE, cache=mode, **options)), plain)
    # augmentation stays fresh every epoch: epoch 2 is not epoch 1 replayed
    fixed = batches(data.make_dataset(images, SIZE, batch_size=24, augment=True, cache=mode))
    assert not np.array_equal(fixed[0][0], fixed[1][0])
    assert same(fixed, batches(data.make_dataset(images, SIZE, batch_size=24, augment=True)))


def test_one_decode_serves_every_stage(tiny_images, cache_home):
    images = folders.scan(tiny_images)
    store = data.decode_once(images, SIZE, 3, "disk")
    assert store.kind == "disk" and store.path.parent == cache_home
    np.testing.assert_array_equal(np.stack([store.read(i) for i in range(len(images))]),
                                  data.load_images(images.files, SIZE))
    first, second = (batches(data.make_dataset(images, SIZE, batch_size=8, shuffle=True, seed=1, cache=store))
                     for _ in range(2))
    assert same(first, second)
    with pytest.raises(ValueError, match="decoded images of 24"):
        data.make_dataset(images.subset([0, 1]), SIZE, batch_size=2, cache=store)


def test_disk_entries_are_keyed_by_content(folder, tmp_path, cache_home, caplog):
    caplog.set_level(logging.INFO, logger="tlkit.data.imagecache")
    data.decode_once(folders.scan(folder), SIZE, 3, "disk")
    moved = Path(shutil.move(folder, tmp_path / "moved"))
    caplog.clear()
    store = data.decode_once(folders.scan(moved), SIZE, 3, "disk")  # renamed files, same contents: a hit
    assert "from the image cache" in caplog.text and len(list(cache_home.glob("*.f32"))) == 1
    Image.open(moved / "red" / "0.png").rotate(90).save(moved / "red" / "0.png")
    caplog.clear()
    changed = data.decode_once(folders.scan(moved), SIZE, 3, "disk")  # one content changed: a miss
    assert "cached in" in caplog.text and changed.path != store.path
    assert data.decode_once(folders.scan(moved), (8, 8), 3, "disk").path not in (store.path, changed.path)


def test_an_entry_that_does_not_match_its_key_is_rebuilt(tiny_images, cache_home, caplog):
    images = folders.scan(tiny_images)
    store = data.decode_once(images, SIZE, 3, "disk")
    expected = store.read(5).copy()
    del store
    entry = next(cache_home.glob("*.f32"))
    entry.write_bytes(entry.read_bytes()[:1000])  # cut short
    caplog.clear()
    store = data.decode_once(images, SIZE, 3, "disk")
    assert "does not match its key; decoding the images again" in caplog.text
    np.testing.assert_array_equal(store.read(5), expected)
    entry.with_suffix(".json").write_text("{broken")
    caplog.clear()
    np.testing.assert_array_equal(data.decode_once(images, SIZE, 3, "disk").read(5), expected)
    assert "cannot be read" in caplog.text


def test_an_unusable_cache_folder_only_costs_time(tiny_images, tmp_path, caplog):
    images = folders.scan(tiny_images)
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    assert data.decode_once(images, SIZE, 3, "disk", cache_dir=blocked / "images") is None
    assert caplog.text.count("cannot be used") == 1 and "reading the images from their files" in caplog.text
    dataset = data.make_dataset(images, SIZE, batch_size=24, cache=None)
    np.testing.assert_array_equal(next(iter(dataset))[0], data.load_images(images.files, SIZE))


def test_auto_keeps_memory_within_its_budget(tiny_images):
    images = folders.scan(tiny_images)
    one = SIZE[0] * SIZE[1] * 3 * 4
    assert data.decode_once(images, SIZE, 3, "auto", memory_budget=24 * one).kind == "memory"
    assert data.decode_once(images, SIZE, 3, "auto", memory_budget=24 * one - 1).kind == "disk"
    assert data.decode_once(images, SIZE, 3, "none") is None
    with pytest.raises(ValueError, match="image cache must be one of auto, memory, disk, none"):
        data.decode_once(images, SIZE, 3, "ram")


def test_one_content_is_decoded_once(tiny_images):
    files = [tiny_images / "red" / "0.png", tiny_images / "blue" / "0.png", tiny_images / "red" / "0.png"]
    images = folders.ImageSet(tiny_images, ["a"], files, [0, 0, 0])  # not scanned: hashed on demand
    store = data.decode_once(images, SIZE, 1, "memory")
    assert store.array.shape == (2, 16, 16, 1) and store.rows[0] == store.rows[2] != store.rows[1]
    np.testing.assert_array_equal(np.stack([store.read(i) for i in range(3)]), data.load_images(files, SIZE, 1))
