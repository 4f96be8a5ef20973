"""What the feature cache saves: one run, one base, one dataset, two measurements.

(a) The head stage over N epochs through the engine (run_recipe, same run directory writes):
    - extract stage, cold cache: the base runs once over every image, then the head trains on
      the features (the extraction is included);
    - extract stage, warm cache: the features come from the cache (as a second recipe would);
    - head stage: no cache, the frozen base runs over every image in every epoch.
(b) Images per second of the extraction pass (read + decode + resize + base + pooling, from
    files, as `tlkit.engine.frozen.run_base` does it) against the bare forward pass of the base on
    images already decoded into memory.

    PYTHONPATH=. python bench/extract_speed.py --base efficientnet_lite0 --data data_samples/photos
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tlkit.bases import load_base  # noqa: E402
from tlkit.data import pipeline as tldata  # noqa: E402
from tlkit.data.checks import file_digests  # noqa: E402
from tlkit.engine import frozen as features  # noqa: E402
from tlkit.engine.strategy import configure  # noqa: E402
from tlkit.engine.training import load_data
from tlkit.jobs import run_recipe  # noqa: E402
from tlkit.recipe.schema import Recipe, Stage  # noqa: E402


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent / "data_samples" / "photos"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timings of (b) are the best of this many")
    args = parser.parse_args()

    size = (args.image_size, args.image_size)
    recipe = Recipe(base=args.base, weights=args.weights, data=args.data, image_size=args.image_size,
                    batch_size=args.batch_size, seed=0)
    configure(recipe)
    classes, train, val = load_data(recipe)
    base = load_base(args.base, args.weights, size)
    files = train.files + val.files
    print(f"{len(files)} images, {args.base} ({args.weights}) at {size[0]}x{size[1]}, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}", flush=True)

    # what the cache key costs
    mb = sum(f.stat().st_size for f in files) / 1e6
    hashing = min(timed(lambda: file_digests(files)) for _ in range(args.repeats))
    fingerprint = min(timed(lambda: features.model_fingerprint(base.model)) for _ in range(args.repeats))
    print(f"key: hashing {len(files)} files ({mb:.1f} MB) {hashing * 1e3:.0f} ms; fingerprint of "
          f"{base.model.count_params() / 1e6:.1f}M parameters {fingerprint * 1e3:.0f} ms", flush=True)

    # (a)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def stage_run(kind: str, out: str) -> tuple[float, float]:
            """Seconds of the whole run_recipe, and of the stage's training and evaluation alone."""
            stages = [Stage(kind, epochs=args.epochs, learning_rate=1e-3)]
            r = dataclasses.replace(recipe, stages=stages, cache=str(tmp / "cache"))
            configure(r)
            runs = []
            seconds = timed(lambda: runs.append(
                run_recipe(r, base, tmp / out, verbose=0, data=(classes, train, val))))
            return seconds, runs[0].results[0].seconds

        (cold, cold_fit), (warm, warm_fit), (uncached, uncached_fit) = (
            stage_run("extract", "cold"), stage_run("extract", "warm"), stage_run("head", "head"))
    print(f"\n(a) head stage, {args.epochs} epochs: whole run_recipe (of which fit + evaluate, checkpoints included):")
    print(f"    extract, cold cache (one extraction included) {cold:7.1f} s ({cold_fit:5.1f} s)")
    print(f"    extract, warm cache                           {warm:7.1f} s ({warm_fit:5.1f} s)")
    print(f"    head, frozen base run every epoch             {uncached:7.1f} s ({uncached_fit:5.1f} s)")
    print(f"    ratio cached/uncached: {cold / uncached:.3f} with the extraction, {warm / uncached:.3f} without "
          f"({uncached / cold:.1f}x and {uncached / warm:.1f}x faster)", flush=True)

    # (b)
    pooled = features.pooled_model(base.model)
    in_memory = tldata.load_images(files, size)
    features.run_base(base.model, files[: args.batch_size], size, args.batch_size)  # load and trace once
    pooled.predict(in_memory[: args.batch_size], batch_size=args.batch_size, verbose=0)
    extraction = min(timed(lambda: features.run_base(base.model, files, size, args.batch_size))
                     for _ in range(args.repeats))
    # run_base wraps the base in a pooling model and traces its predict function on every call:
    # a fixed cost, measured on one batch, which a larger dataset spreads thinner
    one_batch = min(timed(lambda: features.run_base(base.model, files[: args.batch_size], size, args.batch_size))
                    for _ in range(args.repeats))
    bare = min(timed(lambda: pooled.predict(in_memory, batch_size=args.batch_size, verbose=0))
               for _ in range(args.repeats))
    bare_batch = min(timed(lambda: pooled.predict(in_memory[: args.batch_size], batch_size=args.batch_size,
                                                  verbose=0)) for _ in range(args.repeats))
    rest = len(files) - args.batch_size
    print(f"\n(b) images per second, best of {args.repeats}:")
    print(f"    extraction pass from files (decode + resize + base) {len(files) / extraction:7.1f}"
          f"   beyond the first batch {rest / (extraction - one_batch):7.1f}")
    print(f"    bare forward pass on images in memory               {len(files) / bare:7.1f}"
          f"   beyond the first batch {rest / (bare - bare_batch):7.1f}")
    print(f"    ratio extraction/bare: {bare / extraction:.3f}; beyond the first batch "
          f"{(bare - bare_batch) / (extraction - one_batch):.3f}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
