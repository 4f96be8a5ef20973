"""The `tlkit` command line: thin click commands over the library's functions. This module holds
the `cli` group the commands register on, logging, TensorFlow's quiet import, and `main`, which
turns a user's mistake into one line and an exit status.

Commands import the library inside their function, so that `tlkit --help` and the commands that
need no TensorFlow answer at once.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
import warnings

import click

from tlkit import __version__
from tlkit.errors import TlkitError
from tlkit.rundir import guard as runguard


def _quiet_tensorflow() -> None:
    """Import TensorFlow and probe for a GPU with stderr closed.

    Its C++ start-up chatter (oneDNN notices, CUDA probing on a machine without a GPU) is noise
    to a user, and part of it is printed before TF_CPP_MIN_LOG_LEVEL is read, so only closing
    the file descriptor silences it. `--debug` keeps it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow(distribute: str = "none") -> None:
    """Import TensorFlow for a command, its start-up chatter silenced unless --debug."""
    if distribute in ("mirrored", "multiworker"):
        # oneDNN is read once, as TensorFlow loads; its CPU kernels get the empty batch wrong that a
        # replica has when a last batch is smaller than the replicas (tlkit.engine.strategy.check_replica_batches).
        # A GPU's kernels do not use it.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if not click.get_current_context().obj["debug"]:
        _quiet_tensorflow()


class _Lines(logging.Formatter):
    """The library's messages as the lines the CLI prints: as they are, warnings marked."""

    def format(self, record):
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _install_logging(level: int) -> None:
    logger = logging.getLogger("tlkit")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Lines())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's warnings (a glyph missing from a font, Pillow's decompression-bomb check) as the
    CLI's one `warning:` line, without the source line of the library that raised them."""
    logging.getLogger("tlkit").warning("%s", message)


def disk_full(err: Exception) -> OSError | None:
    """`err` as an OSError when it says that the disk is full, else None. TensorFlow's own file
    writes (TensorBoard's event files, a SavedModel) raise its error with the path in the text."""
    if isinstance(err, OSError):
        return err if err.errno in (errno.ENOSPC, errno.EDQUOT) else None
    if not type(err).__module__.startswith("tensorflow"):
        return None
    text = re.sub(r"^\{\{[^}]*\}\}\s*", "", str(err))  # the op that failed
    for code in (errno.ENOSPC, errno.EDQUOT):
        found = re.match(rf"(.+?); {re.escape(os.strerror(code))}", text)
        if found:
            return OSError(code, os.strerror(code), found[1])
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tlkit")
@click.option("--debug", is_flag=True, help="Show the full stack trace of an error, and TensorFlow's start-up messages.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors (no progress bars).")
@click.option("-v", "--verbose", is_flag=True, help="Print more detail.")
@click.pass_context
def cli(ctx, debug, quiet, verbose):
    """Transfer learning on a folder of images: fine-tune, extract, pretrain, evaluate, export."""
    ctx.obj = {"debug": debug, "fit_verbose": 0 if quiet else "auto"}
    _install_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


# What to do about an operating-system error, by errno; the line names the path first.
_OS_ADVICE = {
    errno.EACCES: "permission denied: check its permissions, or choose another path",
    errno.EPERM: "operation not permitted: check its permissions, or choose another path",
    errno.ENOENT: "does not exist: check the path",
    errno.EISDIR: "is a folder where a file is expected: pass a file, or remove the folder",
    errno.ENOTDIR: "part of the path is a file where a folder is expected: choose another path",
    errno.EROFS: "is on a read-only file system: choose a writable place (--out, $TLKIT_CACHE)",
    errno.ENOSPC: "no space left on its device: free some space or choose another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another disk",
    errno.ELOOP: "is a symbolic link loop: fix or remove the link",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EEXIST: "already exists: choose another path",
}


def os_error_line(err: OSError) -> str:
    """One line for an OSError: the path(s) it names, what went wrong and what to do."""
    paths = " -> ".join(os.fsdecode(p) for p in (err.filename, err.filename2) if p is not None)
    what = _OS_ADVICE.get(err.errno) or (err.strerror or str(err) or type(err).__name__)
    return f"{paths}: {what}" if paths else f"{what}"


def unicode_error_line(err: UnicodeEncodeError | UnicodeDecodeError) -> str:
    text = err.object if isinstance(err.object, str) else os.fsdecode(bytes(err.object))
    verb = "encoded" if isinstance(err, UnicodeEncodeError) else "decoded"
    return (f"{text[max(0, err.start - 40):err.end + 40]!r} cannot be {verb} as {err.encoding}: rename the file or "
            "folder of that name, or convert the file to UTF-8")


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="tlkit", standalone_mode=False)
    except OSError as err:
        if debug:
            raise
        click.echo(f"error: {os_error_line(err)}", err=True)
        sys.exit(2)
    except (UnicodeEncodeError, UnicodeDecodeError) as err:  # a file or folder name not valid in its encoding
        if debug:
            raise
        click.echo(f"error: {unicode_error_line(err)}", err=True)
        sys.exit(2)
    except TlkitError as err:
        if type(err).__name__ == "RunInterrupted":  # Ctrl-C or SIGTERM in a run: saved, and how to go on
            click.echo(str(err), err=True)
            sys.exit(_interrupted_status(err))
        if debug:
            raise
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort as err:
        status = _interrupted_status(err)
        click.echo("terminated" if status != 130 else "aborted", err=True)
        sys.exit(status)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except Exception as err:
        full = disk_full(err)  # TensorFlow's error for a full disk
        if full is None or debug:
            raise
        click.echo(f"error: {os_error_line(full)}", err=True)
        sys.exit(2)


def _interrupted_status(err: BaseException) -> int:
    """The shell's status of a command stopped by a signal: 128 + SIGTERM (143) or SIGINT (130)."""
    cause = err.__cause__ or err.__context__
    return 128 + (signal.SIGTERM if isinstance(cause, runguard.Terminated) else signal.SIGINT)

