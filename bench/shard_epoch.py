"""An epoch of images from TFRecord shards against one from the folder (issue 27).

The folder of bench/scan_rate.py (N distinct 320x240 JPEGs in 4 classes, generated if missing) is
packed by `tlkit pack` in a child process (its time, and its peak RSS: pack streams, so this stays
flat as N grows); then, side by side, each pipeline is iterated to its end at 96x96, batch 64,
--repeats times in turn, and the best of each is kept:

  folder:  `tlkit.data.pipeline.make_dataset` (file names -> read -> decode), no image cache,
           shuffled as training shuffles;
  shards:  `tlkit.data.shards.dataset` (interleaved TFRecord reads -> decode), batched and prefetched;
  pack:    `make_dataset` over `shards.image_set`, shuffled: what `--data shards/` trains on without
           an image cache (records streamed from the shards, `shards.records`);
  ordered: the same, not shuffled: a pass that keeps the set's order (predict, evaluate, extract),
           which holds the set's encoded records.

The peak RSS of this process is printed after each first epoch (in this order, so each figure
includes the pipelines before it). The shards are deleted at the end (and the generated folder,
unless --keep names it).

    PYTHONPATH=. python bench/shard_epoch.py --images 10000 [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
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
    try:
        root = args.keep or work / "data"
        generate(root, args.images)
        packed = str(work / "shards")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tlkit.cli", "pack", "--data", str(root), "--out", packed], check=True,
                       stdout=subprocess.DEVNULL)
        took, rss = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10
        index = shards.read_index(packed)
        print(f"{args.images} JPEGs of 320x240, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"tlkit pack: {len(index['shards'])} shards in {took:.1f} s, peak RSS {rss} MB")
        images = folders.scan(root)
        pipelines = {
            "folder": lambda: make_dataset(images, SIZE, BATCH, shuffle=True, cache="none"),
            "shards": lambda: shards.dataset(packed, SIZE).batch(BATCH).prefetch(tf.data.AUTOTUNE),
            "pack": lambda: make_dataset(shards.image_set(packed), SIZE, BATCH, shuffle=True, cache="none"),
            "ordered": lambda: make_dataset(shards.image_set(packed), SIZE, BATCH, cache="none"),
        }
        best = {name: 0.0 for name in pipelines}
        for repeat in range(args.repeats):
            for name, make in pipelines.items():
                best[name] = max(best[name], epoch(make()))
                if not repeat:
                    print(f"  after the first epoch from the {name}: peak RSS "
                          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MB", flush=True)
        for name, rate in best.items():
            print(f"epoch from the {name}: {rate:,.0f} images/s (best of {args.repeats}); "
                  f"/ folder = {rate / best['folder']:.2f}")
        print(f"load average {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
