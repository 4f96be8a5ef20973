"""The scan cache: what checking a file found (its SHA-256 and its problem, if any), kept under the
tlkit cache ($TLKIT_CACHE/scan-*.sqlite) so that a file the scan has checked before is not read again.

An entry is used only while the file's path, size, modification time, inode and change time
(ctime, which no program can set back, so a rewrite of the same size that restores the old
modification time still misses) are what they were; anything else is checked again. A file
modified within the last two seconds is not stored: a file system's clock ticks coarsely, so a
rewrite within the same tick could keep every one of those numbers (git's "racily clean" files).
A cache that cannot be read or written costs only time: the files are checked as without it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tlkit._util import buckets
from tlkit._util.io import cache_root
from tlkit._util.urls import is_url

log = logging.getLogger(__name__)

_RACY_NS = 2_000_000_000  # files modified this recently are checked but not stored

_SCHEMA = """CREATE TABLE IF NOT EXISTS checks (
    path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, ctime_ns INTEGER,
    digest TEXT, problem TEXT)"""

Key = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


def cache_file() -> Path:
    """One store per decoder set: a verdict depends on the decoders installed (a HEIC file refused
    before pillow-heif was installed decodes after), so another Pillow or plugin starts afresh."""
    import PIL
    from PIL import Image

    Image.init()
    decoders = f"{PIL.__version__} {sorted(Image.OPEN)}".encode()
    return cache_root() / f"scan-{hashlib.sha256(decoders).hexdigest()[:12]}.sqlite"


def file_key(path: str | Path) -> Key | None:
    """What a cached check of `path` is valid for; None for what is never cached (no such file,
    not a regular file; a bucket's: buckets.file_key)."""
    if is_url(path):
        return buckets.file_key(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def file_keys(paths: Sequence[str]) -> list[Key | None]:
    """`file_key` of each path; a bucket's in threads: each is a request to it."""
    if not any(is_url(p) for p in paths):
        return [file_key(p) for p in paths]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(file_key, paths))


class ScanCache:
    """Checks kept in one SQLite file; every failure to use it is logged and ignored."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_file()
        self._db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=10)
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            self._off(error)

    def _off(self, error: Exception) -> None:
        log.info("scan cache '%s' not used (%s): every file is checked", self.path, error)
        if self._db is not None:
            self._db.close()
        self._db = None

    def lookup(self, paths: Sequence[str | Path], keys: Sequence[Key | None]) -> dict[int, tuple[str, str | None]]:
        """{index: (digest, problem)} of the paths whose check is cached for their current key."""
        if self._db is None:
            return {}
        found = {}
        try:
            for start in range(0, len(paths), 500):  # SQLite's limit on the parameters of one query
                names = [os.fsencode(p) for p in paths[start:start + 500]]
                rows = self._db.execute(
                    f"SELECT path, size, mtime_ns, inode, ctime_ns, digest, problem FROM checks "
                    f"WHERE path IN ({','.join('?' * len(names))})", names).fetchall()
                cached = {row[0]: row[1:] for row in rows}
                for i, name in enumerate(names, start=start):
                    row = cached.get(name)
                    if row and keys[i] is not None and tuple(row[:4]) == keys[i]:
                        found[i] = (row[4], row[5])
        except sqlite3.Error as error:
            self._off(error)
            return {}
        return found

    def store(self, entries: Sequence[tuple[str | Path, Key | None, str | None, str | None]]) -> None:
        """Keep (path, key, digest, problem) of checked files; racy and uncacheable ones are left out."""
        if self._db is None:
            return
        now = time.time_ns()
        rows = [(os.fsencode(path), *key, digest, problem) for path, key, digest, problem in entries
                if key is not None and digest is not None and now - key[1] > _RACY_NS]
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as error:
            self._off(error)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
