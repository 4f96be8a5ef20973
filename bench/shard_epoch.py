"""An epoch of images from TFRecord shards against one from the folder (issue 27).

The folder of bench/scan_rate.py (N distinct 320x240 JPEGs in 4 classes, generated if missing) is
packed with `tlkit.data.shards.pack`; then, side by side, each pipeline is iterated to its end at
96x96, batch 64, --repeats times in turn, and the best of each is kept:

  folder:  `tlkit.data.pipeline.make_dataset` (file names -> read -> decode), no image cache;
  shards:  `tlkit.data.shards.dataset` (interleaved TFRecord reads -> decode), batched and prefetched.

    PYTHONPATH=. python bench/shard_epoch.py --images 10000 [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tensorflow as tf  # noqa: E402
from scan_rate import generate  # noqa: E402

from tlkit.data import folders, shards  # noqa: E402
from tlkit.data.pipeline import make_dataset  # noqa: E402

SIZE, BATCH = (96, 96), 64


def epoch(ds: tf.data.Dataset) -> float:
    start = time.perf_counter()
    n = sum(int(tf.shape(x)[0]) for x, _ in ds)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="generate into (and reuse) this folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shard_epoch."))
    root = args.keep or work / "data"
    generate(root, args.images)
    images = folders.scan(root)
    start = time.perf_counter()
    index = shards.pack(root, str(work / "shards"))
    print(f"{len(images)} JPEGs of 320x240, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"packed into {len(index['shards'])} shards in {time.perf_counter() - start:.1f} s")
    pipelines = {
        "folder": lambda: make_dataset(images, SIZE, BATCH, cache="none"),
        "shards": lambda: shards.dataset(str(work / "shards"), SIZE).batch(BATCH).prefetch(tf.data.AUTOTUNE),
    }
    best = {name: 0.0 for name in pipelines}
    for _ in range(args.repeats):
        for name, make in pipelines.items():
            best[name] = max(best[name], epoch(make()))
    for name, rate in best.items():
        print(f"epoch from the {name}: {rate:,.0f} images/s (best of {args.repeats})")
    print(f"shards / folder = {best['shards'] / best['folder']:.2f}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
