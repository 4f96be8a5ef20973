"""How fast tlkit answers before any training: --help, --version, `recipes`, and the mistakes
that must be told before the data is scanned (issue 10), on a folder of 10,000 images.

    python bench/startup.py [--images 10000]

Each command runs in a fresh process, as a user types it; the times are wall-clock seconds, best
of three. The goal is under 2 s each: none of them may import TensorFlow or read the images.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, images: int, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % classes}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def timed(args: list[str]) -> tuple[float, str]:
    best, line = float("inf"), ""
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tlkit.cli", *args], capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
        line = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1][:100]
    return best, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = str(make_folder(Path(tmp), args.images))
        commands = {
            "tlkit --help": ["--help"],
            "tlkit --version": ["--version"],
            "tlkit recipes": ["recipes"],
            "finetune --base vgg (a typo)": ["finetune", "--base", "vgg", "--data", data],
            "finetune --unfreeze 99": ["finetune", "--base", "vgg16", "--unfreeze", "99", "--data", data],
            "finetune, no --base": ["finetune", "--data", data],
            "finetune --seed -1": ["finetune", "--base", "vgg16", "--seed", "-1", "--data", data],
            "finetune --recipe deep --unfreeze 2": ["finetune", "--base", "vgg16", "--recipe", "deep", "--unfreeze",
                                                    "2", "--data", data],
        }
        print(f"{args.images} images in {data}; seconds, best of 3 fresh processes")
        for name, command in commands.items():
            seconds, line = timed(command)
            print(f"{seconds:6.2f}  {name:38s} {line}")


if __name__ == "__main__":
    main()
