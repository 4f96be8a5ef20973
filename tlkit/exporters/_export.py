"""Export a run for other runtimes, then check the export in its own runtime against Keras."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.errors import TlkitError
from tlkit.exporters._registry import FORMATS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """The export against the Keras model on the run's validation images."""

    images: int
    agree: int  # images whose top-1 class is the same
    max_diff: float  # largest |probability difference| over all images and classes

    def __str__(self) -> str:
        return f"top-1 agreement {self.agree}/{self.images}  max |Δp| {self.max_diff:.2g}"


@dataclass(frozen=True)
class Exported:
    path: Path
    format: str
    quantize: str
    size: int  # bytes, of the file or the whole SavedModel folder
    check: Check | None

    def __str__(self) -> str:
        kind = self.format if self.quantize == "none" else f"{self.format} {self.quantize}"
        line = f"{self.path}  {self.size / 1e6:.1f} MB  {kind}"
        return f"{line}  {self.check}" if self.check else line


def export(model: str | Path, out: str | Path, format: str = "savedmodel", version: int = 1, *,
           quantize: str = "none", calibration_images: int = 100, check: bool = True,
           verbose: bool = False) -> Exported:
    """Export the run at `model` into the folder `out`, with labels.txt beside it.

    savedmodel: `out/<version>/` as TF Serving expects (an existing version is never replaced).
    tflite: `out/model.tflite` with metadata, quantized by `quantize` (none, dynamic, float16,
    or int8, which calibrates on `calibration_images` training images of the run).
    onnx: `out/model.onnx` (needs the `onnx` extra).
    With `check`, the export is run in its own runtime on the run's validation images and
    compared with the Keras model. The converters' own output is shown only when `verbose`.
    """
    spec = FORMATS.get(format)
    if quantize not in spec.quantizations:
        raise TlkitError(f"{format} export takes quantization {' or '.join(spec.quantizations)}, not '{quantize}'"
                         + (" (quantization is for tflite)" if len(spec.quantizations) == 1 else ""))
    if calibration_images < 1:
        raise TlkitError(f"--calibration-images must be at least 1, got {calibration_images}")
    from tlkit.io import write_atomic
    from tlkit.rundir import load_run

    run = load_run(model)
    out = Path(out)
    target = out / (spec.filename or str(version))
    if spec.filename is None and target.exists():
        raise TlkitError(f"{target} exists: pass --version N for a new version, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    labels = (run.path / "labels.txt").read_bytes()
    write_atomic(out / "labels.txt", lambda tmp: tmp.write_bytes(labels))
    with quiet(not verbose):
        spec.write(run, target, quantize, lambda: _images(run, "train", calibration_images))
    result = Check(0, 0, 0.0)
    if check:
        images = _images(run, "validation")
        with quiet(not verbose):
            theirs = spec.predict(target, images)
        ours = run.model.predict(images, verbose=0)
        result = Check(len(images), int((theirs.argmax(1) == ours.argmax(1)).sum()),
                       float(np.abs(theirs - ours).max(initial=0.0)))
    return Exported(target, format, quantize, _size(target), result if check else None)


def _images(run, part: str, limit: int | None = None) -> np.ndarray:
    """Float32 images in [0, 255] of the run's training or validation split (as it was made)."""
    from tlkit import data as tldata

    recipe = run.recipe
    if not recipe.data or not Path(recipe.data).is_dir():
        raise TlkitError(f"the run's data folder '{recipe.data}' (from its recipe.toml) is not here: "
                         "it holds the images to " + ("calibrate int8 on" if part == "train" else
                                                      "check the export on; pass --no-check to skip the check"))
    images = tldata.scan(recipe.data, skip_bad=True, classes=run.labels)
    if recipe.val_data:
        train, val = images, tldata.scan(recipe.val_data, skip_bad=True, classes=run.labels)
    else:
        train, val = tldata.split(images, recipe.val_split, recipe.seed)
    files = (train if part == "train" else val).files
    if limit is not None:  # spread over the classes rather than the first classes' images
        files = [files[i] for i in np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int)]
    return tldata.load_images(files, run.image_size, run.channels)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Send what is printed to stdout and stderr, by Python or by C++ below it, to a temporary
    file; if the block fails, that output is put back on stderr for the error to be read with.

    The converters print hundreds of lines of progress from C++ (MLIR, TFLite, tf2onnx's
    TensorFlow graphs) and Python; only redirecting the file descriptors catches both.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            captured.seek(0)
            shutil.copyfileobj(captured, sys.stderr.buffer)
            sys.stderr.flush()
            raise
        else:
            _restore(saved)


def _restore(saved: tuple[int, int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
