"""classic against modern: does the training toolbox (one-cycle, warmup, layer decay, label
smoothing, standard augmentation) beat the plain recipe on small real photo sets?

Two data sets, both of real photos that Python packages ship, 6 classes of 40 crops at 96x96:

  photos    data_samples/photos (six photos, one class each; see data_samples/README.md)
  gray      built here from six other photos scikit-image ships in its wheel, all grayscale:
            three textures (brick, grass, gravel), the moon's surface, the cameraman, coins; each
            class is small crops (24-64 px, so scale differs from crop to crop) of one photo.
            Without colour and with little context it is harder than photos (a first version,
            colour photos among the classes and larger crops, gave 100% to every run)

Each recipe runs on efficientnet_lite0 (ImageNet weights, offline) at 96x96, once per seed; the
seed also draws the validation split (20%). The score is the validation accuracy of the final
model, and the time is the wall time of the whole run on this machine.

    PYTHONPATH=. python bench/toolbox.py --seeds 0 1 2 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import skimage  # noqa: E402
from PIL import Image  # noqa: E402

from tlkit.jobs import finetune  # noqa: E402

HERE = Path(__file__).resolve().parent
PHOTOS = HERE.parent / "data_samples" / "photos"
PER_CLASS = 40
SIZE = 96
# class, file in skimage/data (shipped in the wheel), crop side range in source pixels
GRAY = [
    ("brick", "brick.png", (24, 64)),
    ("grass", "grass.png", (24, 64)),
    ("gravel", "gravel.png", (24, 64)),
    ("moon", "moon.png", (24, 64)),
    ("camera", "camera.png", (24, 64)),
    ("coins", "coins.png", (24, 64)),
]


def make_gray(out: Path, seed: int = 2024) -> Path:
    """PER_CLASS random square crops (random side, random place; crops may overlap) of each source
    image, resized to SIZE x SIZE, as JPEG."""
    rng = np.random.default_rng(seed)
    folder = Path(skimage.__file__).parent / "data"
    for name, file, (low, high) in GRAY:
        image = Image.open(folder / file).convert("L").convert("RGB")
        (out / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            side = int(rng.integers(low, min(high, *image.size) + 1))
            left = int(rng.integers(0, image.size[0] - side + 1))
            top = int(rng.integers(0, image.size[1] - side + 1))
            crop = image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            crop.save(out / name / f"{name}_{i:02d}.jpg", quality=90)
    return out


def run(data: Path, recipe: str, seed: int, work: Path) -> dict:
    start = time.perf_counter()
    ctx = finetune("efficientnet_lite0", str(data), recipe, work / f"{data.name}-{recipe}-{seed}",
                   image_size=SIZE, seed=seed, verbose=0)
    return {"data": data.name, "recipe": recipe, "seed": seed, "val_accuracy": ctx.results[-1].val_accuracy,
            "val_loss": ctx.results[-1].val_loss, "seconds": time.perf_counter() - start}


def table(rows: list[dict]) -> str:
    lines = ["| data | recipe | val accuracy (mean ± std) | per seed | time per run (s) |", "|---|---|---|---|---|"]
    for data in dict.fromkeys(r["data"] for r in rows):
        for recipe in dict.fromkeys(r["recipe"] for r in rows):
            mine = [r for r in rows if r["data"] == data and r["recipe"] == recipe]
            acc = [r["val_accuracy"] for r in mine]
            spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
            seconds = statistics.mean(r["seconds"] for r in mine)
            lines.append(f"| {data} | {recipe} | {statistics.mean(acc):.3f} ± {spread:.3f} | "
                         f"{', '.join(f'{a:.3f}' for a in acc)} | {seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["classic", "modern"])
    parser.add_argument("--json", type=Path, help="Write every run's numbers here.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = [PHOTOS, make_gray(work / "gray")]
        for data in sets:
            for seed in args.seeds:
                for recipe in args.recipes:
                    rows.append(run(data, recipe, seed, work / "runs"))
                    print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
