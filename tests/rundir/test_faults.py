"""Faults during a run end as the README promises: one `error:` or `warning:` line naming the
path, and nothing the user had is lost (a full disk, SIGTERM, Python's own warnings, a font
without the glyphs of a class name, caches that cannot be written)."""
from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ["finetune", "--base", "lenet5", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--seed", "1"]
FULL = "no space left on its device: free some space or choose another disk"


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB file system (tmpfs) at tmp_path/disk; skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file (deleting it frees them again)."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def fill_after(monkeypatch, module, name: str, disk: Path, when=lambda *args: True) -> None:
    """`module.name` fills `disk` once after a call for which `when(*args)` holds."""
    real = getattr(module, name)

    def then_fill(*args, **kwargs):
        result = real(*args, **kwargs)
        if not (disk / "filler").exists() and when(*args):
            fill(disk)
        return result

    monkeypatch.setattr(module, name, then_fill)


def one_error(err: str) -> str:
    """The one error line of stderr (which may hold the scan's progress line before it)."""
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:] and "Traceback" not in err, err
    return lines[-1]


# --- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_after_an_epoch_names_the_file_and_the_run_goes_on_with_resume(
        small_disk, tiny_images, cli, monkeypatch):
    import tlkit.engine.resume as core

    out = small_disk / "run"
    fill_after(monkeypatch, core, "save_state", small_disk, when=lambda ctx, stage, epoch, *rest: stage == 1)
    code, _, err = cli(*RUN, "--epochs-head", "2", "--epochs-finetune", "1", "--data", tiny_images, "--out", out)
    assert code == 2
    line = one_error(err)
    assert re.fullmatch(rf"error: {re.escape(str(out))}/\S+: {FULL}; {re.escape(str(out))} is saved at stage 1, "
                        rf"after epoch 1: go on with `tlkit finetune --resume {re.escape(str(out))}` once there is "
                        "space", line), line

    # the advice works once there is space, and nothing is left half-written
    monkeypatch.undo()
    (small_disk / "filler").unlink()
    code, stdout, err = cli("finetune", "--resume", out)
    assert code == 0, err
    assert "stage 1 resumed after epoch 1 of 2" in stdout
    assert (out / "model.keras").is_file() and not list(out.rglob(".*.*"))  # no temporary file

    # predict on a full disk: the file, and no advice about runs
    fill(small_disk)
    image = next(tiny_images.glob("red/*.png"))
    code, _, err = cli("predict", "--model", out, "--out", small_disk / "preds.csv", image)
    assert code == 2
    assert one_error(err) == f"error: {small_disk / 'preds.csv'}: {FULL}"


def test_a_full_disk_before_anything_was_saved_says_to_run_again(small_disk, tiny_images, cli, monkeypatch):
    import tlkit.rundir.guard as runguard

    out = small_disk / "run"
    fill_after(monkeypatch, runguard, "start", small_disk)  # the run's first file finds the disk full
    args = [*RUN, "--epochs-head", "1", "--epochs-finetune", "1", "--data", tiny_images, "--out", out]
    code, _, err = cli(*args)
    assert code == 2
    line = one_error(err)
    assert "--resume" not in line
    assert re.fullmatch(rf"error: {re.escape(str(out))}/\S+: {FULL}; nothing of {re.escape(str(out))} was saved to "
                        rf"resume from: run it again once there is space \(--out {re.escape(str(out))} --overwrite "
                        r"reuses its folder\)", line), line

    monkeypatch.undo()
    (small_disk / "filler").unlink()
    code, _, err = cli(*args, "--overwrite")
    assert code == 0, err
    assert (out / "model.keras").is_file()


def test_an_atomic_write_that_fails_deep_in_a_library_names_the_file(tmp_path):
    """Where no tmpfs can be mounted: what the tests above rely on, with the error made up."""
    from tlkit._util.io import write_atomic
    from tlkit.cli._app import os_error_line

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a library's f.write raises it: no file

    target = tmp_path / "curves.png"
    with pytest.raises(OSError) as raised:
        write_atomic(target, full)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert os_error_line(raised.value) == f"{target}: {FULL}"
    assert list(tmp_path.iterdir()) == []


# --- caches on a full disk ---------------------------------------------------------------------


def test_the_image_cache_on_a_full_disk_is_told_once_and_leaves_nothing(small_disk, tiny_images, monkeypatch,
                                                                         caplog):
    from tlkit.data import folders
    from tlkit.data import pipeline as data
    monkeypatch.setenv("TLKIT_CACHE", str(small_disk / "cache"))
    (small_disk / "cache" / "images").mkdir(parents=True)
    fill(small_disk)
    images = folders.scan(tiny_images)
    train, val = images.subset(range(0, 24, 2)), images.subset(range(1, 24, 2))
    for part in (train, val):  # a run tries the cache for each set
        assert data.decode_once(part, (16, 16), 3, "disk") is None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "No space left on device" in warned[0], warned
    assert list((small_disk / "cache" / "images").iterdir()) == []  # no description of rows never written


def test_the_feature_cache_on_a_full_disk_does_not_claim_to_have_cached(small_disk, tiny_images, caplog):
    from tlkit.bases import load_base
    from tlkit.data import folders
    from tlkit.engine import frozen as features

    cache = small_disk / "features"
    cache.mkdir()
    fill(small_disk)
    extracted = features.extract(load_base("lenet5", "none", (32, 32)), folders.scan(tiny_images).files[:6], (32, 32),
                                 cache=cache)
    assert extracted.shape[0] == 6
    assert "cached in" not in caplog.text and "extracted features of 6 images" in caplog.text
    assert f"feature cache {cache} cannot be written (No space left on device)" in caplog.text
    assert list(cache.iterdir()) == []


# --- SIGTERM -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_sigterm_saves_the_run_and_prints_the_resume_command(tiny_images, tmp_path, cli):
    out = tmp_path / "run"
    code = "import sys; from tlkit.cli import main; main(sys.argv[1:])"
    args = [*RUN, "--epochs-head", "1", "--epochs-finetune", "40", "--data", str(tiny_images), "--out", str(out)]
    run = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    state = out / "checkpoints" / "resume" / "state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it saved an epoch: give it more epochs"
    run.send_signal(signal.SIGTERM)  # as `kill`, `docker stop` or a scheduler's pre-emption send it
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"interrupted: {re.escape(str(out))} is saved at .*; go on with: tlkit finetune --resume "
                        rf"{re.escape(str(out))}", last), last
    assert not (out / ".lock").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # this process's own handler is untouched

    code, stdout, err = cli("finetune", "--resume", out)
    assert code == 0, err
    assert (out / "model.keras").is_file() and not (out / ".unfinished").exists()


def test_an_interrupt_before_the_first_epoch_ended_does_not_advise_resume(tmp_path):
    from tlkit.engine.resume import RunInterrupted

    assert str(RunInterrupted(tmp_path, "finetune", None)) == (
        f"interrupted: {tmp_path} stopped before its first epoch ended, with nothing saved to resume from; run it "
        f"again (--out {tmp_path} --overwrite reuses its folder)")


def test_the_lock_turns_sigterm_into_an_interrupt_only_while_it_is_held(tmp_path):
    from tlkit.rundir.guard import RunLock, Terminated

    before = signal.getsignal(signal.SIGTERM)
    with RunLock(tmp_path / "run"):
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between two bytecodes of this thread
    assert signal.getsignal(signal.SIGTERM) is before


# --- warnings and fonts ------------------------------------------------------------------------


def test_python_warnings_are_one_warning_line_without_source(cli, tmp_path, monkeypatch, capsys):
    from PIL import Image

    cli("recipes")  # any command sets up the CLI's lines
    picture = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(picture)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: over it, under twice it: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        Image.open(picture).close()
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines() == [
        "warning: Image size (4096 pixels) exceeds limit of 3000 pixels, could be decompression bomb DOS attack."]


def test_class_names_in_any_script_draw_without_missing_glyphs(tmp_path):
    from tlkit.evaluation.plots import plot_confusion

    classes = ["猫", "ひまわり", "장미", "rose 🌹", "犬🐶", "Ελλάδα", "नमस्ते", "plain"]
    confusion = np.random.default_rng(0).integers(0, 5, (len(classes), len(classes)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion(confusion, classes, tmp_path / "confusion.png")
    assert [str(w.message) for w in caught] == []
    assert (tmp_path / "confusion.png").stat().st_size > 10_000
