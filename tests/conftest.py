"""Fixtures shared by the whole test suite.

- `tiny_images`: a small class-folder dataset a model can learn in a few steps.
- `bad_images`: a copy of it with a truncated JPEG and an empty file added.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

# Set before any test module imports TensorFlow (conftest is imported first).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")



@pytest.fixture(autouse=True)
def tlkit_logging():
    """tlkit's messages at INFO, reaching pytest's caplog; undoes the handler a CLI test installs."""
    logger = logging.getLogger("tlkit")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.INFO)
    yield


@pytest.fixture
def cli(capsys):
    """tlkit's command line run in this process: cli(*args) -> (exit status, stdout, stderr)."""
    from tlkit.cli import main

    def run(*args) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit:
            code = exit.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


TINY_CLASSES = ("blue", "green", "red")
TINY_PER_CLASS = 8
TINY_SIZE = 32


def tiny_image(label: int, rng: np.random.Generator, size: int = TINY_SIZE) -> np.ndarray:
    """A (size, size, 3) uint8 image of class `label` of TINY_CLASSES: that colour channel is
    high, and the class has its own pattern (0: checks, 1: vertical stripes, 2: horizontal
    stripes) at a random phase, plus noise."""
    y, x = np.mgrid[:size, :size] + rng.integers(0, 8, size=2)[:, None, None]
    pattern = [(x // 4 + y // 4) % 2, (x // 4) % 2, (y // 4) % 2][label]
    image = rng.normal(60, 15, (size, size, 3))
    image[..., 2 - label] += 100 + 60 * pattern  # RGB order: red is channel 0, blue channel 2
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    """DIR/<class>/<n>.png: classes blue, green, red (in that label order), 8 RGB PNGs of 32x32
    each, told apart by colour and pattern. Read-only: copy it before changing anything."""
    root = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(0)
    for label, name in enumerate(TINY_CLASSES):
        (root / name).mkdir()
        for i in range(TINY_PER_CLASS):
            Image.fromarray(tiny_image(label, rng)).save(root / name / f"{i}.png")
    return root


class BadFolder(NamedTuple):
    root: Path  # a copy of tiny_images plus the two bad files
    truncated: Path  # red/truncated.jpg: the first half of a valid JPEG
    empty: Path  # green/empty.jpg: 0 bytes


@pytest.fixture
def bad_images(tiny_images, tmp_path) -> BadFolder:
    """A copy of `tiny_images` with a truncated JPEG and an empty file added (24 good images, 2 bad)."""
    root = tmp_path / "bad_images"
    shutil.copytree(tiny_images, root)
    jpeg = io.BytesIO()
    Image.fromarray(tiny_image(2, np.random.default_rng(1))).save(jpeg, "JPEG")
    truncated = root / "red" / "truncated.jpg"
    truncated.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    empty = root / "green" / "empty.jpg"
    empty.write_bytes(b"")
    return BadFolder(root, truncated, empty)
