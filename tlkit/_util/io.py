"""Files written atomically: to a temporary name beside the target, then renamed over it, so an
interrupted run never leaves a half-written file where a whole one is expected.

Everything written here gets the modes the umask gives an ordinary new file or folder (0644 and
0755 under umask 022): `tempfile` makes its files 0600 and its folders 0700, which would lock
out a model server running as its own user, `docker run --user`, or a colleague on a shared disk.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """tlkit's cache folder on this machine: $TLKIT_CACHE, else ~/.cache/tlkit."""
    return Path(os.environ.get("TLKIT_CACHE") or Path.home() / ".cache" / "tlkit")


def umask() -> int:
    """The process's umask (read by setting it and putting it back: POSIX has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_modes(path: Path) -> None:
    """Give `path` the modes `open` (a file) or `mkdir` (a folder) would have given it."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())


def write_atomic(path: Path, write) -> None:
    """Write through `write(tmp_path)` to a temporary name beside `path`, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        ordinary_modes(Path(tmp))  # before `write`: writers that reopen the file keep its modes
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        # a write deep in a library (a full disk) names no file, or the temporary one: name `path`
        if error.errno is None or error.filename not in (None, tmp):
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dir_atomic(path: Path, write) -> None:
    """Fill a temporary folder beside `path` through `write(tmp_path)`, then rename it to `path`,
    which must not exist (a folder cannot be renamed over a full one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        ordinary_modes(tmp)
        tmp.rename(path)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno is None or error.filename not in (None, str(tmp)):  # as in write_atomic
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_csv_atomic(path: str | Path, rows) -> None:
    """A CSV file of `rows` (lists; the first the header), with "\\n" line ends."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    write_text_atomic(path, text.getvalue())


def save_model_atomic(model, path: str | Path) -> None:
    """`model.save` (a .keras file) through `write_atomic`."""
    write_atomic(Path(path), lambda tmp: model.save(tmp))
