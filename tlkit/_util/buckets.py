"""Files on a file system TensorFlow serves by scheme (`gs://`, `ram://`, S3 through its plugin),
through `tf.io.gfile`: its errors as one line each, a folder's tree in one walk, and a run
directory's files copied down from a bucket or mirrored up to it."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

import tensorflow as tf

from tlkit._util.urls import Url, scheme
from tlkit.errors import TlkitError

log = logging.getLogger(__name__)

# what serves a scheme TensorFlow lacks here
_PLUGINS = {"s3": "tensorflow-io, whose plugin serves s3:// (pip install tensorflow-io)",
            "hdfs": "tensorflow-io (pip install tensorflow-io) and a Hadoop client"}


@contextlib.contextmanager
def served(url: str):
    """TensorFlow's errors on `url`, other than a missing file, as one TlkitError line."""
    try:
        yield
    except tf.errors.UnimplementedError:
        name = scheme(url)
        plugin = _PLUGINS.get(name, "the file-system plugin that serves it")
        raise TlkitError(f"'{url}': TensorFlow here does not serve {name}:// (it serves "
                         f"{', '.join(f'{s}://' for s in tf.io.gfile.get_registered_schemes() if s)}): "
                         f"install {plugin}, or copy the data to a local folder") from None
    except tf.errors.NotFoundError:
        raise
    except tf.errors.OpError as error:
        raise TlkitError(f"cannot reach '{url}' ({error.message.strip().splitlines()[0]}): check the bucket's name, "
                         "the network and the credentials") from None


def exists(url: str) -> bool:
    with served(url):
        return tf.io.gfile.exists(url)


def isdir(url: str) -> bool:
    with served(url):
        return tf.io.gfile.isdir(url)


def listdir(url: str) -> list[str]:
    with served(url):
        return tf.io.gfile.listdir(url)


def read_bytes(url: str, size: int = -1) -> bytes:
    """The file's bytes (its first `size` of them); FileNotFoundError, as a local file's, when it is missing."""
    try:
        with served(url), tf.io.gfile.GFile(url, "rb") as f:
            return f.read(size)
    except tf.errors.NotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", url) from None


def tree(root: Url) -> dict[Url, tuple[list[str], list[str]]]:
    """{folder: (its sub-folder names, its file names)} of `root` and every folder under it, in one
    walk of the bucket."""
    with served(root):
        return {Url(folder): ([d.rstrip("/") for d in dirs], list(files))
                for folder, dirs, files in tf.io.gfile.walk(root)}


def file_key(url: str) -> tuple[int, int, int, int] | None:
    """(size, modification time in ns, 0, 0): what a cached check of the file at `url` is valid
    for (a bucket has no inode or change time); None for a folder, a missing file, or a file system
    that keeps no modification time (ram://: a rewrite of the same size would look unchanged)."""
    try:
        with served(url):
            st = tf.io.gfile.stat(url)
    except tf.errors.NotFoundError:
        return None
    if st.is_directory or not st.mtime_nsec:
        return None
    return st.length, st.mtime_nsec, 0, 0


def download(url: str, local: Path, *, skip: tuple[str, ...] = ()) -> None:
    """Copy the folder `url` into `local` (made if needed; files there are replaced), but for the
    sub-folders named in `skip`."""
    root = Url(url)
    for folder, (_, files) in tree(root).items():
        relative = folder[len(root):].lstrip("/")
        if relative.split("/")[0] in skip:
            continue
        (local / relative).mkdir(parents=True, exist_ok=True)
        for name in files:
            with served(url):
                tf.io.gfile.copy(folder / name, str(local / relative / name), overwrite=True)


class Mirror:
    """The folder `local` kept copied to the folder `url`: `push` uploads the files that changed
    since the last push and removes from `url` those no longer in `local`, the names in `first`
    uploaded before the others and removed after them (a marker of an unfinished run is there
    before the run's files are, and goes after they are whole); names in `skip` stay local."""

    def __init__(self, local: Path, url: str, *, first: tuple[str, ...] = (), skip: tuple[str, ...] = ()):
        self.local, self.url, self.first, self.skip = Path(local), Url(url), first, skip
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) last uploaded

    def push(self) -> None:
        here = {}
        for folder, _, files in os.walk(self.local):
            for name in files:
                path = Path(folder, name)
                relative = path.relative_to(self.local).as_posix()
                if name not in self.skip:
                    st = path.stat()
                    here[relative] = (st.st_size, st.st_mtime_ns)
        with served(self.url):
            there, folders = self._remote()
            for relative in sorted(here, key=lambda r: r not in self.first):
                if self._pushed.get(relative) != here[relative] or relative not in there:
                    target = self.url / relative
                    tf.io.gfile.makedirs(target.parent)
                    if relative in there:  # ram:// appends to a file written again (it opens it without truncating)
                        tf.io.gfile.remove(target)
                    tf.io.gfile.copy(str(self.local / relative), target)
                    self._pushed[relative] = here[relative]
            for relative in sorted(set(there) - set(here), key=lambda r: r in self.first):
                tf.io.gfile.remove(self.url / relative)
                self._pushed.pop(relative, None)
            for relative in sorted(folders, reverse=True):  # a file system with folders keeps them when emptied
                if relative and not (self.local / relative).is_dir() and tf.io.gfile.exists(self.url / relative):
                    tf.io.gfile.rmtree(self.url / relative)
        log.debug("mirrored %s to %s", self.local, self.url)

    def _remote(self) -> tuple[set[str], set[str]]:
        """The files and the folders under `url`, relative to it."""
        if not tf.io.gfile.exists(self.url):
            return set(), set()
        listed = tree(self.url)
        files = {(folder / name)[len(self.url):].lstrip("/") for folder, (_, names) in listed.items() for name in names}
        return files, {folder[len(self.url):].lstrip("/") for folder in listed}
