"""Atomic writers give files and folders the modes the umask gives ordinary ones."""
from __future__ import annotations

import os
import stat

import pytest

from tlkit._util.io import write_atomic, write_dir_atomic, write_text_atomic


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode",
                         [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)])
def test_atomic_writes_follow_the_umask(umask, tmp_path, mask, file_mode, dir_mode):
    umask(mask)
    write_text_atomic(tmp_path / "a.txt", "a")
    write_atomic(tmp_path / "b.bin", lambda tmp: tmp.write_bytes(b"b"))
    write_dir_atomic(tmp_path / "folder", lambda tmp: (tmp / "inside.txt").write_text("c"))
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.bin") == mode(tmp_path / "folder" / "inside.txt") == file_mode
    assert mode(tmp_path / "folder") == dir_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "folder"]  # no temporary left


def test_a_failed_folder_write_leaves_nothing(tmp_path):
    def fail(tmp):
        (tmp / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(tmp_path / "folder", fail)
    assert list(tmp_path.iterdir()) == []
