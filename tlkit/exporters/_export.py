"""Export a run for other runtimes, then check the export in its own runtime against Keras.

Keras and TensorFlow are imported inside the functions of this package: the CLI reads the
format registry for its choices when it starts, before it has silenced TensorFlow's import
chatter.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit._util.io import write_atomic
from tlkit._util.urls import is_url
from tlkit.errors import TlkitError
from tlkit.exporters._registry import FORMATS
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """The export against the Keras model on the run's validation images."""

    images: int
    agree: int  # images whose top-1 class is the same
    max_diff: float  # largest |probability difference| over all images and classes

    def __str__(self) -> str:
        return f"top-1 agreement {self.agree}/{self.images}  max |Δp| {self.max_diff:.2g}"


def export(model: str | Path, out: str | Path, format: str = "savedmodel", version: int = 1, *,
           quantize: str = "none", calibration_images: int = 100, check: bool = True,
           verbose: bool = False, checkpoint: str = "final") -> Path:
    """Export the run at `model` into the folder `out`, with labels.txt beside it; returns the
    path written.

    savedmodel: `out/<version>/` as TF Serving expects (an existing version is never replaced).
    tflite: `out/model.tflite` with metadata, quantized by `quantize` (none, dynamic, float16,
    or int8, which calibrates on `calibration_images` training images of the run).
    onnx: `out/model.onnx` (needs the `onnx` extra).
    Logs one line: the path, its size and, with `check`, how the export run in its own runtime
    agrees with the Keras model on the run's validation images (see `check_export`). The
    converters' own output is shown only when `verbose`. `checkpoint` chooses the run's weights
    (tlkit.rundir.load.CHECKPOINTS: final or best).
    """
    spec = FORMATS.get(format)
    if quantize not in spec.quantizations:
        takers = [name for name, other in FORMATS.items() if quantize in other.quantizations]
        if takers:
            raise TlkitError(f"--quantize {quantize} is for {' and '.join(takers)} exports, not {format}")
        raise TlkitError(f"unknown quantization '{quantize}': {format} takes {', '.join(spec.quantizations)}")
    if calibration_images < 1:
        raise TlkitError(f"--calibration-images must be at least 1, got {calibration_images}")
    from tlkit.rundir.load import load_run  # Keras: see the module docstring

    run = load_run(model, checkpoint)
    log.info("model: %s", run.describe())
    out = Path(out)
    target = out / (spec.filename or str(version))
    if target.exists():
        raise TlkitError(f"{target} exists: pass --version N for a new version, or another --out"
                         if spec.filename is None else f"{target} exists: pass another --out, or remove it first")
    labels = RunDir(run.path).labels.read_bytes()
    if (out / "labels.txt").is_file() and (out / "labels.txt").read_bytes() != labels:
        raise TlkitError(f"{out / 'labels.txt'} holds other labels than {RunDir(run.path).labels} (the export of "
                         "another run?): pass another --out")
    train, val = _split(run, "check the export on (or pass --no-check)" if check
                        else "calibrate int8 on" if quantize == "int8" else None)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "labels.txt", lambda tmp: tmp.write_bytes(labels))
    with quiet(not verbose):
        spec.write(run, target, quantize, lambda: _load(run, _spread(train.files, calibration_images)))
    kind = format if quantize == "none" else f"{format} {quantize}"
    line = f"{target}  {_size(target) / 1e6:.1f} MB  {kind}"
    log.info(f"{line}  {_check(run, spec, target, val, verbose)}" if check else line)
    return target


def check_export(model: str | Path, path: str | Path, format: str = "savedmodel", *, verbose: bool = False) -> Check:
    """Run the export at `path` (of the run at `model`) in its own runtime on the run's validation
    images, and compare it with the run's Keras model."""
    from tlkit.rundir.load import load_run  # Keras: see the module docstring

    run = load_run(model)
    _, val = _split(run, "check the export on")
    return _check(run, FORMATS.get(format), Path(path), val, verbose)


def calibration_note(run) -> str:
    """What a TFLite or ONNX client is told of the run's calibration and unknown threshold: the
    temperature is inside the model, the unknown score (nearest training features) is not."""
    calibration = run.calibration or {}
    note = (f"Calibrated: softmax(logits / {calibration['temperature']:.6g}) inside the model."
            if calibration.get("calibrated") else "Not calibrated.")
    if run.unknown_threshold is not None:
        note += (f" Unknown threshold {run.unknown_threshold:.6g} on 1 - the cosine similarity of the image's pooled "
                 "features to the nearest training image's; that score is served by the SavedModel export only "
                 "(unknown_score, unknown).")
    return note


def label_thresholds(run) -> dict[str, float] | None:
    """A multi-label run's threshold of each label, for formats that carry them as metadata (the
    SavedModel applies them itself); None for a single-label run."""
    if run.recipe.task != "multilabel":
        return None
    from tlkit.rundir.load import read_thresholds  # Keras: see the module docstring

    return {label: round(float(t), 6) for label, t in zip(run.labels, read_thresholds(run))}


def output_note(run) -> str:
    """The output tensor, in words: softmax over classes, or one sigmoid per label and the
    thresholds that turn it into the labels predicted."""
    thresholds = label_thresholds(run)
    if thresholds is None:
        return "Probability of each class, in the order of the labels (they sum to 1)."
    return ("Multi-label: an independent (sigmoid) probability of each label, in the order of the labels; a label "
            f"is predicted when its probability reaches its threshold, chosen on validation: {json.dumps(thresholds)}")


def _split(run, needed_for: str | None):
    """The run's training and validation images, split as the run split them; (None, None) when
    nothing needs them."""
    if needed_for is None:
        return None, None
    from tlkit.data import manifest, report  # TensorFlow: see the module docstring

    recipe = run.recipe
    if not recipe.data or not (is_url(recipe.data) or Path(recipe.data).exists()):  # a bucket's: checked as it is read
        raise TlkitError(f"the run's data '{recipe.data}' (in its recipe.toml) is not here; "
                         f"it holds the images to {needed_for}")
    train, val, _ = report.prepare(recipe.data, val_data=recipe.val_data, val_split=recipe.val_split, seed=recipe.seed,
                                   skip_bad=True, classes=run.labels, image_root=recipe.image_root,
                                   columns=manifest.Columns.of(recipe),
                                   delimiter=recipe.label_delimiter if recipe.task == "multilabel" else None)
    return train, val


def _spread(files: list[Path], n: int) -> list[Path]:
    """n of `files` spread evenly over the list (so over the classes, which it holds in order)."""
    return [files[i] for i in np.unique(np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int))]


def _load(run, files: list[Path]) -> np.ndarray:
    from tlkit.data import pipeline  # TensorFlow: see the module docstring

    return pipeline.load_images(files, run.image_size, run.channels)


def _check(run, spec, target: Path, val, verbose: bool) -> Check:
    images = _load(run, val.files)
    with quiet(not verbose):
        theirs = spec.predict(target, images)
    ours = run.model.predict(images, verbose=0)
    return Check(len(images), int((theirs.argmax(1) == ours.argmax(1)).sum()),
                 float(np.abs(theirs - ours).max(initial=0.0)))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Keep what is printed to stdout and stderr, by Python or by C++ below it, off the screen; if
    the block fails unexpectedly (not with a TlkitError), that output is put back on stderr for
    the error to be read with.

    The converters print hundreds of lines from C++ (MLIR, the TFLite converter, TensorFlow under
    tf2onnx) and from Python: only redirecting file descriptors 1 and 2 catches the first, and
    Python's `sys.stdout` may not write to them (when it has been replaced, as pytest does).
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    python = io.StringIO()
    with tempfile.TemporaryFile() as native:
        os.dup2(native.fileno(), 1)
        os.dup2(native.fileno(), 2)
        try:
            with contextlib.redirect_stdout(python), contextlib.redirect_stderr(python):
                yield
        except TlkitError:  # says what went wrong, and that --verbose shows the rest
            _restore(saved)
            raise
        except BaseException:
            _restore(saved)
            native.seek(0)
            sys.stderr.write(native.read().decode(errors="replace") + python.getvalue())
            sys.stderr.flush()
            raise
        else:
            _restore(saved)


def _restore(saved: tuple[int, int]) -> None:
    # C's stdout is fully buffered while it is a file: flush it now, or it would reach the
    # screen later, when the process exits.
    ctypes.CDLL(None).fflush(None)
    for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
