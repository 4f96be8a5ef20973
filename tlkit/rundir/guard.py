"""What keeps a run directory whole: `--out` checks, the lock, and the unfinished marker.

No TensorFlow here, so the CLI checks `--out` before anything slow (tlkit.rundir.load, which loads
runs, imports Keras).

- `check_out`: `--out` must be a new or empty folder, or an existing run given with `overwrite`
  (or `resume`); a regular file, a folder of other files, or a folder that cannot be written is
  refused in one line. A bucket's `--out` is checked as its run starts (tlkit.rundir.bucket).
- `RunLock`: RUN/.lock, made with O_CREAT|O_EXCL and holding the PID and host of the run that
  writes RUN, so a second run with the same `--out` is refused while the first is alive. A lock
  whose process is gone (a killed run, on this host) is cleared with a warning.
- `start`/`finish`: RUN/.unfinished is written before a run's first file and removed after its
  last. With `overwrite`, the old run's files go at that moment (after the base has loaded and
  the data was scanned, so a mistake found before leaves the old run as it was): a failure
  half-way leaves a new run marked unfinished, never old files beside new ones; `fail` marks
  a run that stopped on an error (RUN/.failed).
- While a run holds its lock, SIGTERM (`kill`, `docker stop`, a scheduler's pre-emption) stops it
  as Ctrl-C does: `Terminated`, a KeyboardInterrupt, is raised in the main thread, so the run
  says what it saved and how to go on, instead of dying silently.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
from pathlib import Path

from tlkit._util.urls import is_url
from tlkit.errors import TlkitError
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)

# Every run directory this process has locked, in order: the CLI tells what a fault left of the run.
CLAIMED: list[Path] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM while a run holds its lock: the run stops as on Ctrl-C (see the module)."""


def _terminate(signum, frame):
    raise Terminated()


def check_out(out: str | Path, *, overwrite: bool = False, resume: bool = False, locked: bool = False) -> None:
    """Refuse an `--out` that a run cannot use as it is (see the module), or that another run
    holds (unless `locked`: this process holds it); touches nothing."""
    if is_url(out):  # needs TensorFlow's file systems: tlkit.rundir.bucket.stage checks it
        return
    out = Path(out)
    option = "RUN" if resume else "--out"
    if out.is_symlink() and not out.exists():
        raise TlkitError(f"{option} {out} is a dangling symbolic link: remove it or choose another folder")
    if out.exists() and not out.is_dir():
        raise TlkitError(f"{option} {out} is a file, not a folder: choose a folder name")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise TlkitError(f"{option} {out}: {parent} is a file, not a folder: choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TlkitError(f"{option} {out}: {parent} cannot be written (read-only or no permission): "
                         "choose a folder you can write")
    if not out.is_dir():
        return
    if not locked:
        _refuse_live_lock(RunDir(out).lock)
    if resume:
        return
    others = [p.name for p in out.iterdir() if p.name != RunDir.LOCK]
    if not others:
        return
    if not RunDir(out).is_run():
        raise TlkitError(f"--out {out} holds other files ({', '.join(sorted(others)[:3])}"
                         f"{', ...' if len(others) > 3 else ''}), not a tlkit run: choose a new or empty folder")
    if not overwrite:
        raise TlkitError(f"--out {out} is an existing run: choose a new folder, pass --overwrite to replace it, "
                         f"or `--resume {out}` to go on with it")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(lock: Path) -> tuple[int | None, str]:
    """The PID and host written in a lock file (None when it names no process)."""
    try:
        pid_text, _, host = lock.read_text(encoding="utf-8", errors="replace").strip().partition(" ")
        return int(pid_text), host
    except (OSError, ValueError):
        return None, ""


def _refuse_live_lock(lock: Path) -> bool:
    """Refuse when `lock` is held by a live run; True when it exists but its run is gone."""
    if not lock.exists():
        return False
    pid, host = _holder(lock)
    out = lock.parent
    if pid is None:
        raise TlkitError(f"{lock} exists but names no process: if no run is writing {out}, delete it")
    if host != socket.gethostname():
        raise TlkitError(f"{out} is locked by process {pid} on {host} ({lock}): wait for that run, "
                         "or delete the lock file if it is no longer running")
    if _alive(pid):
        raise TlkitError(f"another tlkit run (process {pid}) is writing {out}: wait for it to end or "
                         "choose another --out")
    return True


def claim(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> RunLock:
    """Check `out` (check_out) and take its lock; the caller releases it."""
    lock = RunLock(out)
    check_out(out, overwrite=True, resume=True)  # a file, a folder that cannot be written: before the lock
    lock.acquire()
    try:
        check_out(out, overwrite=overwrite, resume=resume, locked=True)
    except BaseException:
        lock.release()
        raise
    return lock


class RunLock:
    """RUN/.lock while a run writes RUN (see the module); a context manager."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = RunDir(self.out).lock
        self.made_folder = False
        self.held = False
        self._sigterm = None  # the SIGTERM handler before the lock, while the lock handles it

    def acquire(self) -> RunLock:
        if not self.out.exists():
            self.out.mkdir(parents=True)
            self.made_folder = True
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):  # once more after clearing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            CLAIMED.append(self.out)
            if threading.current_thread() is threading.main_thread():  # only it may set handlers
                # None: a handler set outside Python, which cannot be put back
                self._sigterm = signal.signal(signal.SIGTERM, _terminate) or signal.SIG_DFL
            return self
        raise TlkitError(f"{self.path} came back while clearing it: another run is starting in {self.out}")

    def _clear_stale(self) -> None:
        if _refuse_live_lock(self.path):
            log.warning("cleared a stale lock %s of process %d, which is no longer running", self.path,
                        _holder(self.path)[0])
            self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        self.path.unlink(missing_ok=True)
        if self.made_folder:
            try:
                self.out.rmdir()  # only if the run wrote nothing (it failed before its first file)
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def start(out: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Before a run's first file: with `overwrite`, the old run's files go; RUN/.unfinished is
    written (see the module)."""
    if overwrite and not resume and RunDir(out).is_run():
        for entry in out.iterdir():
            if entry.name == RunDir.LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        log.info("--overwrite: removed the run that was in %s", out)
    out.mkdir(parents=True, exist_ok=True)
    RunDir(out).failed.unlink(missing_ok=True)
    RunDir(out).unfinished.write_text("this run has not finished: its model.keras is missing or not its last\n",
                                  encoding="utf-8")


def fail(out: Path, err: BaseException) -> None:
    """A run that had started stopped on `err`: RUN/.failed holds its line, for `tlkit runs`."""
    if RunDir(out).unfinished.is_file():
        line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        try:
            RunDir(out).failed.write_text(f"{type(err).__name__}: {line}\n", encoding="utf-8")
        except OSError:  # a full disk, say: `err` is what the user must see; the run stays marked unfinished
            pass


def finish(out: Path) -> None:
    """After a run's last file."""
    RunDir(out).unfinished.unlink(missing_ok=True)
