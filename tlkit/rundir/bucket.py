"""A run directory on a bucket (`--out gs://bucket/runs/flowers`, any scheme `tf.io.gfile` serves).

A run writes a local folder, its staging copy under the tlkit cache ($TLKIT_CACHE/bucket-runs/),
and `Mirror`s it to the bucket after every epoch (the resume snapshot and best checkpoint
included), and when it ends or stops: the run directory's lock (O_EXCL), its atomic renames and
Keras' checkpoints need a local file system, which a bucket is not. The lock stays local, so it
keeps a second run on this machine out of the staging folder, not a run on another machine out of
the bucket. `--resume URL` copies the bucket's run down into the staging folder first; `load`
copies a run down to read it (evaluate, predict, export).
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from tlkit._util import buckets
from tlkit._util.io import cache_root
from tlkit._util.urls import Url
from tlkit.errors import TlkitError
from tlkit.rundir.files import RunDir


def _local(url: str, kind: str) -> Path:
    return cache_root() / kind / hashlib.sha256(Url(url).encode()).hexdigest()[:16]


def staging(url: str) -> Path:
    """The local folder a run for `url` writes (the same for every run to `url`, so that its lock
    keeps a second run on this machine out)."""
    return _local(url, "bucket-runs")


def check_out(url: str, *, overwrite: bool = False) -> None:
    """Refuse a bucket `--out` a new run cannot write: a file, a folder of other files, an existing
    run without `overwrite`."""
    url = Url(url)
    if not buckets.exists(url):
        return
    if not buckets.isdir(url):
        raise TlkitError(f"--out {url} is a file, not a folder: choose a folder name")
    names = {name.rstrip("/") for name in buckets.listdir(url)}
    if not names:
        return
    if not names & set(RunDir.MARKERS):
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise TlkitError(f"--out {url} holds other files ({shown}), not a tlkit run: choose a new or empty folder")
    if not overwrite:
        raise TlkitError(f"--out {url} is an existing run: choose a new folder, pass --overwrite to replace it, "
                         f"or `--resume {url}` to go on with it")


def pull(url: str, into: Path) -> Path:
    """The run directory at `url` copied into the folder `into` (emptied first); `into`."""
    url = Url(url)
    if not buckets.isdir(url):
        raise TlkitError(f"no run at {url}: "
                         + ("it is a file, not a run directory" if buckets.exists(url) else "there is no such folder"))
    shutil.rmtree(into, ignore_errors=True)
    buckets.download(url, into, skip=(RunDir.LOGS,))
    return into


def load(url: str) -> Path:
    """A local copy of the run at `url` (its logs left out), or of the folder of a `.keras` file
    at `url` with that file's local path, to load from."""
    url = Url(url)
    if url.suffix == ".keras":
        return pull(url.parent, _local(url.parent, "bucket-models")) / url.name
    return pull(url, _local(url, "bucket-models"))


def mirror(local: Path, url: str) -> buckets.Mirror:
    """What keeps `url` a copy of the run writing `local` (see the module): the unfinished marker
    is there before the run's files and goes after them; the lock stays local."""
    return buckets.Mirror(local, url, first=(RunDir.UNFINISHED,), skip=(RunDir.LOCK,))
