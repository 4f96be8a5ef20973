"""The scan cache (tlkit.data.scan_cache): an unchanged file is not read again, a changed one is."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tlkit.data import folders, scan_cache

_opened: list[str] | None = None  # while a list, every file the process opens is added to it


def _audit(event, args):
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def opened_during(fn, under: Path) -> tuple[object, set[str]]:
    """fn()'s result and the files under `under` it opened, relative to it."""
    global _opened
    _opened = []
    try:
        result = fn()
    finally:
        seen, _opened = _opened, None
    return result, {str(Path(os.path.abspath(p)).relative_to(under)) for p in seen
                    if Path(os.path.abspath(p)).is_relative_to(under)}


@pytest.fixture
def folder(tiny_images, tmp_path, monkeypatch) -> Path:
    """A copy of tiny_images modified an hour ago (older than the cache's racy window), with its own cache."""
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    root = Path(shutil.copytree(tiny_images, tmp_path / "images"))
    for path in root.rglob("*.png"):
        os.utime(path, (time.time() - 3600,) * 2)
    return root


def test_a_rescan_of_an_unchanged_folder_reads_no_image_file(folder):
    first, opened = opened_during(lambda: folders.scan(folder), folder)
    assert len(opened) == 24
    again, opened = opened_during(lambda: folders.scan(folder), folder)
    assert opened == set()
    assert (again.files, again.labels, again.digests) == (first.files, first.labels, first.digests)
    assert (scan_cache.cache_file()).is_file()


def test_a_touched_rewritten_or_renamed_file_is_read_again(folder):
    first = folders.scan(folder)
    touched, rewritten, renamed = folder / "red/0.png", folder / "red/1.png", folder / "blue/2.png"
    os.utime(touched)
    stamp = rewritten.stat()
    rewritten.write_bytes((folder / "red/2.png").read_bytes()[: stamp.st_size].ljust(stamp.st_size, b"\0"))
    os.utime(rewritten, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same size and time: ctime tells
    assert rewritten.stat().st_size == stamp.st_size
    renamed.rename(folder / "blue/moved.png")
    again, opened = opened_during(lambda: folders.scan(folder, skip_bad=True), folder)
    assert opened == {"red/0.png", "red/1.png", "blue/moved.png"}
    assert again.digests[again.files.index(touched)] == first.digests[first.files.index(touched)]
    assert [path for path, _ in again.skipped] == [rewritten]  # its new bytes: another PNG cut or padded
    assert len(again) == 23


def test_a_bad_file_is_remembered_as_bad(bad_images, monkeypatch, tmp_path):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    for path in bad_images.root.rglob("*.*"):
        os.utime(path, (time.time() - 3600,) * 2)
    first = folders.scan(bad_images.root, skip_bad=True)
    again, opened = opened_during(lambda: folders.scan(bad_images.root, skip_bad=True), bad_images.root)
    assert opened == set()
    assert again.skipped == first.skipped and {p for p, _ in again.skipped} == {bad_images.truncated, bad_images.empty}


def test_a_cache_that_cannot_be_written_costs_only_time(folder, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TLKIT_CACHE", str(blocker / "cache"))
    for _ in range(2):
        images, opened = opened_during(lambda: folders.scan(folder), folder)
        assert len(images) == 24 and len(opened) == 24
    assert "scan cache" in caplog.text and "every file is checked" in caplog.text


def test_a_cache_file_that_is_not_a_database_costs_only_time(folder, caplog):
    scan_cache.cache_file().parent.mkdir(parents=True)
    scan_cache.cache_file().write_bytes(b"not SQLite " * 100)
    images, opened = opened_during(lambda: folders.scan(folder), folder)
    assert len(images) == 24 and len(opened) == 24
    assert "scan cache" in caplog.text


def test_another_set_of_decoders_starts_another_cache(folder, monkeypatch):
    """A verdict depends on the decoders installed: a plugin that adds a format must not find the
    refusals made without it."""
    from PIL import Image

    before = scan_cache.cache_file()
    monkeypatch.setitem(Image.OPEN, "HEIF", Image.OPEN["PNG"])
    assert scan_cache.cache_file() != before
