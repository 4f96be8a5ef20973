"""Paths on a file system TensorFlow serves by scheme (`gs://bucket/flowers`, `ram://`, `s3://`
through its plugin): told apart from local paths without importing TensorFlow, and kept whole.
`pathlib.Path` folds the `//` of a URL into one slash (`ram:/x`), so a URL is held as `Url`, a str
with the few parts of a Path the data code uses."""
from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path) -> bool:
    """Whether `path` names a file by a scheme (`gs://...`) rather than on this machine."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def scheme(url: str) -> str:
    return url.partition("://")[0]


class Url(str):
    """A URL as a path: `/`, `name`, `suffix`, `parent`, `is_relative_to`, with `..` and doubled
    or trailing slashes after the scheme normalised (as `os.path.normpath` does to a local path)."""

    __slots__ = ()

    def __new__(cls, url):
        prefix, _, rest = str(url).partition("://")
        rest = posixpath.normpath(rest) if rest.strip("/") else ""
        return super().__new__(cls, f"{prefix}://{'' if rest == '.' else rest}")

    @property
    def _rest(self) -> str:
        return self.partition("://")[2]

    @property
    def name(self) -> str:
        return posixpath.basename(self._rest)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> Url:
        return Url(f"{scheme(self)}://{posixpath.dirname(self._rest)}")

    def __truediv__(self, other) -> Url:
        return Url(f"{self}/{os.fspath(other)}")

    def is_symlink(self) -> bool:  # a bucket has no links
        return False

    def is_relative_to(self, other) -> bool:
        return self == other or self.startswith(str(other).rstrip("/") + "/")


def as_path(path) -> Path | Url:
    """`path` as a Url when it is one, else as a Path."""
    return Url(path) if is_url(path) else Path(path)
