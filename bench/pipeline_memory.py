"""Memory and speed of the input pipeline as the data grows, by image cache mode.

Builds a class folder of unique 256x256 JPEGs (random crops, at random scales, of the six colour
photos that scikit-image and scikit-learn ship, plus noise, so no two files share a content),
at 1x and 10x the number of images, then for each cache mode runs a fresh process that scans
the folder (tlkit.data.report.prepare: every file checked and hashed), builds the training
dataset (128 px, batch 32, shuffled, augmented) and iterates it for --epochs epochs. It prints
each process's peak RSS over the scan, and over the iteration alone (the peak is reset after
the scan through /proc/self/clear_refs), and the images per second of the epochs after the
first (the first decodes and, with a cache, fills it).

    PYTHONPATH=. python bench/pipeline_memory.py --images 300 --scale 10
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SOURCES = [("skimage", "data/astronaut.png"), ("skimage", "data/coffee.png"), ("skimage", "data/chelsea.png"),
           ("skimage", "data/rocket.jpg"), ("sklearn", "datasets/images/china.jpg"),
           ("sklearn", "datasets/images/flower.jpg")]


def make_folder(root: Path, n: int, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, (package, name) in enumerate(SOURCES):
        with importlib.resources.files(package).joinpath(name).open("rb") as f:
            photo = Image.open(f).convert("RGB")
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n // len(SOURCES)):
            side = int(rng.integers(96, min(photo.size)))
            left, top = (int(rng.integers(0, s - side + 1)) for s in photo.size)
            crop = np.asarray(photo.crop((left, top, left + side, top + side)).resize((256, 256)), np.float32)
            crop = np.clip(crop + rng.normal(0, 4, crop.shape), 0, 255).astype(np.uint8)
            Image.fromarray(crop).save(root / f"class{c}" / f"{i:05d}.jpg", quality=90)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(folder: str, mode: str, epochs: int) -> None:
    from tlkit.data import pipeline as data
    from tlkit.data import report as datareport
    train, _, _ = datareport.prepare(folder, val_split=0.2, seed=0)
    scan_peak = peak_rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
    start = time.perf_counter()  # the first epoch includes filling the cache
    dataset = data.make_dataset(train, (128, 128), 32, shuffle=True, augment=True, seed=0, cache=mode)
    times = []
    for epoch in range(epochs):
        if epoch:
            start = time.perf_counter()
        for _ in dataset:
            pass
        times.append(time.perf_counter() - start)
    later = len(train) * (epochs - 1) / sum(times[1:])
    print(json.dumps({"images": len(train), "scan_peak": scan_peak, "iterate_peak": peak_rss_mb(),
                      "first_epoch_s": times[0], "later_images_per_s": later}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images at 1x")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--modes", default="none,disk,memory")
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for scale in (1, args.scale):
            folders[scale] = Path(tmp, f"x{scale}")
            make_folder(folders[scale], args.images * scale)
        env = dict(os.environ, TLKIT_CACHE=str(Path(tmp, "cache")))
        print(f"{'cache':<7} {'images':>7} {'scan peak MB':>13} {'iterate peak MB':>16} {'1st epoch s':>12} "
              f"{'later img/s':>12}")
        results = {}
        for mode in args.modes.split(","):
            for scale, folder in folders.items():
                out = subprocess.run([sys.executable, __file__, "--child", str(folder), mode, "--epochs",
                                      str(args.epochs)], env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[mode, scale] = r
                print(f"{mode:<7} {r['images']:>7} {r['scan_peak']:>13.0f} {r['iterate_peak']:>16.0f} "
                      f"{r['first_epoch_s']:>12.1f} {r['later_images_per_s']:>12.0f}", flush=True)
        for mode in args.modes.split(","):
            one, many = results[mode, 1], results[mode, args.scale]
            print(f"{mode}: peak RSS at {args.scale}x / 1x: scan {many['scan_peak'] / one['scan_peak']:.2f}, "
                  f"iteration {many['iterate_peak'] / one['iterate_peak']:.2f}")


if __name__ == "__main__":
    main()
