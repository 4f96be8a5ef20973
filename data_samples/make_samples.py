"""Build the sample datasets in data_samples/ from images that scikit-image and scikit-learn ship.

    python data_samples/make_samples.py

photos/<class>/*.jpg: 96x96 crops of six colour photos, one class per photo. Each photo is cut
into square tiles that do not overlap (rows of random height, each row cut into squares of that
side), nearly flat tiles (sky, blur) are dropped, and PER_CLASS tiles are drawn at random;
photos/MANIFEST.csv records the source and the box of every crop. Because no two crops share a
pixel, no split of the set puts a piece of a validation image into training.

digits/<0-9>/*.png: the 1,797 8x8 digits of scikit-learn's load_digits, values 0..16 scaled
to 0..255, as 8-bit grayscale PNG.

Deterministic: the same packages give the same files. Old outputs are removed first.
"""
from __future__ import annotations

import csv
import importlib
import shutil
from pathlib import Path

import numpy as np
import sklearn.datasets
from PIL import Image

HERE = Path(__file__).resolve().parent
SEED = 2024
PER_CLASS = 40
CROP_SIZE = 96
MIN_STD = 8.0  # tiles whose grayscale standard deviation is below this are too flat to tell apart

# class, source file inside its package (shipped in the wheel, not downloaded), tile side range in pixels
SOURCES = [
    ("astronaut", "skimage/data/astronaut.png", (64, 80)),
    ("cat", "skimage/data/chelsea.png", (44, 56)),
    ("coffee", "skimage/data/coffee.png", (56, 72)),
    ("flower", "sklearn/datasets/images/flower.jpg", (48, 64)),
    ("rocket", "skimage/data/rocket.jpg", (44, 60)),
    ("temple", "sklearn/datasets/images/china.jpg", (56, 72)),
]


def shipped(source: str) -> Path:
    package, inside = source.split("/", 1)
    return Path(importlib.import_module(package).__file__).parent / inside


def tiles(width: int, height: int, sides: tuple[int, int], rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Non-overlapping square boxes (left, top, right, bottom): rows of a random side, filled with squares."""
    boxes, top = [], 0
    while True:
        side = int(rng.integers(sides[0], sides[1] + 1))
        if top + side > height:
            return boxes
        boxes += [(left, top, left + side, top + side) for left in range(0, width - side + 1, side)]
        top += side


def make_photos(out: Path, rng: np.random.Generator) -> None:
    rows = []
    for name, source, sides in SOURCES:
        photo = Image.open(shipped(source)).convert("RGB")
        gray = np.asarray(photo.convert("L"), np.float64)
        boxes = [b for b in tiles(*photo.size, sides, rng) if gray[b[1] : b[3], b[0] : b[2]].std() >= MIN_STD]
        if len(boxes) < PER_CLASS:
            raise SystemExit(f"{source}: only {len(boxes)} tiles with detail, need {PER_CLASS}")
        chosen = sorted(rng.choice(len(boxes), PER_CLASS, replace=False))
        (out / name).mkdir(parents=True)
        for i, index in enumerate(chosen):
            box = boxes[index]
            file = f"{name}/{Path(source).stem}_{i:02d}.jpg"
            crop = photo.crop(box).resize((CROP_SIZE, CROP_SIZE), Image.Resampling.LANCZOS)
            crop.save(out / file, quality=90)
            rows.append([file, name, source, *box])
    with open(out / "MANIFEST.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "class", "source", "left", "top", "right", "bottom"])
        writer.writerows(rows)


def make_digits(out: Path) -> None:
    digits = sklearn.datasets.load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for digit in range(10):
        (out / str(digit)).mkdir(parents=True)
    for index, (image, digit) in enumerate(zip(pixels, digits.target)):
        Image.fromarray(image, "L").save(out / str(digit) / f"{index:04d}.png", optimize=True)


def main() -> None:
    for folder in ("photos", "digits"):
        shutil.rmtree(HERE / folder, ignore_errors=True)
    make_photos(HERE / "photos", np.random.default_rng(SEED))
    make_digits(HERE / "digits")


if __name__ == "__main__":
    main()
