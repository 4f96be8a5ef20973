"""The export formats by name. A leaf: each format module adds itself here, and the CLI takes its
`--format` choices from it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tlkit._util.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from tlkit.rundir.load import Run


@dataclass(frozen=True)
class Format:
    """How one format is written, and how its own runtime runs it.

    write(run, target, quantize, calibration) writes the export at `target` (a file, or the
    SavedModel folder); calibration is a zero-argument function giving float32 training images
    in [0, 255] (only int8 calls it). predict(target, images) runs the written export, without
    Keras, on float32 images (N, h, w, c) in [0, 255] and gives probabilities in label order.
    """

    filename: str | None  # the file in the export folder; None: a SavedModel version folder
    write: Callable[[Run, Path, str, Callable[[], np.ndarray]], None]
    predict: Callable[[Path, np.ndarray], np.ndarray]
    quantizations: tuple[str, ...] = ("none",)


FORMATS: Registry[Format] = Registry("export format")
