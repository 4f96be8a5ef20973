"""What reading the feature cache saves the calibration at a run's end: one extract run (the base's
features of every image cached), then the calibration (`tlkit.evaluation.calibrate.calibrate_run`)
timed both ways, alternately, on the same trained classifier:

- from the images: the classifier, with its pooled features as a second output, over the
  validation images, then over the training images (the unknown score's reference), as every run
  calibrated before the cache was read;
- from the cache: the extract stage's entry read back, the head alone run on the validation features.

    PYTHONPATH=. python bench/calibration_cache.py --base mobilenet_v3_small --image-size 64
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

from tlkit.bases import load_base  # noqa: E402
from tlkit.engine.strategy import configure  # noqa: E402
from tlkit.evaluation.calibrate import calibrate_run  # noqa: E402
from tlkit.jobs import run_recipe  # noqa: E402
from tlkit.recipe.schema import Recipe, Stage  # noqa: E402
from tlkit.rundir.files import RunDir  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="mobilenet_v3_small")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent / "data_samples" / "photos"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    size = (args.image_size, args.image_size)
    print(f"{args.base} ({args.weights}) at {size[0]}x{size[1]} on {args.data}, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = Recipe(stages=[Stage("extract", epochs=3)], base=args.base, weights=args.weights, data=args.data,
                        image_size=args.image_size, seed=0, cache=str(tmp / "cache"))
        configure(recipe)
        base = load_base(args.base, args.weights, size)
        start = time.perf_counter()
        ctx = run_recipe(recipe, base, tmp / "run", verbose=0)
        print(f"the extract run (calibration from the cache included): {time.perf_counter() - start:.1f} s; "
              f"{len(ctx.train)} training and {len(ctx.val)} validation images", flush=True)
        times = {"from the images": [], "from the cache": []}
        summaries = {}
        for repeat in range(args.repeats):
            for way, given in (("from the images", None), ("from the cache", ctx.base)):
                out = tmp / f"{way}-{repeat}"
                out.mkdir()
                start = time.perf_counter()
                calibrate_run(out, ctx.classifier, ctx.train, ctx.val, ctx.recipe, base=given)
                times[way].append(time.perf_counter() - start)
                summaries[way] = json.loads(RunDir(out).calibration.read_text())
    print("| calibration | first call, s | median of the others, s |\n|---|---:|---:|")
    for way, seconds in times.items():
        print(f"| {way} | {seconds[0]:.3f} | {statistics.median(seconds[1:]):.3f} |")
    ratio = statistics.median(times["from the cache"][1:]) / statistics.median(times["from the images"][1:])
    print(f"ratio cache / images (medians): {ratio:.3f}")
    for name in ("temperature", "ece_after", "nll_after", "threshold"):
        print(f"{name}: from the images {summaries['from the images'][name]:.6f}, "
              f"from the cache {summaries['from the cache'][name]:.6f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
