"""What `tlkit audit` is worth: the sample photos with 10% of the training labels flipped (seeded),
a head trained on them (`tlkit extract`, efficientnet_lite0 at 64 px), before and after leaving
out what the audit found (`--exclude audit/issues.csv`), scored on a clean validation folder
(20% of each class, never flipped). Also the audit's time with a warm feature cache.

    PYTHONPATH=. python bench/audit_flips.py --seed 0
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "data_samples" / "photos"


def tlkit(*args) -> None:
    subprocess.run([sys.executable, "-m", "tlkit.cli", "-q", *map(str, args)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="audit_bench"))
    train, val, cache = work / "train", work / "val", work / "cache"
    classes = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir())
    for name in classes:
        files = rng.permutation(sorted((SAMPLES / name).glob("*.jpg")))
        n_val = len(files) // 5
        for folder, chosen in ((val, files[:n_val]), (train, files[n_val:])):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, folder / name / f.name)
    files = sorted(train.glob("*/*.jpg"))
    moved = set()
    for f in rng.choice(files, len(files) // 10, replace=False):
        target = train / rng.choice([c for c in classes if c != f.parent.name]) / f.name
        f.rename(target)
        moved.add(str(target))
    common = ["--base", "efficientnet_lite0", "--image-size", args.image_size, "--cache", cache]
    tlkit("audit", "--data", train, "--out", work / "audit", *common)  # cold: fills the cache
    start = time.perf_counter()
    tlkit("audit", "--data", train, "--out", work / "audit", *common)
    warm = time.perf_counter() - start
    found = [line.split(",")[0] for line in (work / "audit" / "issues.csv").read_text().splitlines()[1:]
             if ",label_issue," in line]
    accuracy = {}
    for arm, extra in (("flipped", []), ("excluded", ["--exclude", work / "audit" / "issues.csv"])):
        tlkit("extract", "--data", train, "--val-data", val, "--out", work / arm, "--seed", args.seed, *common, *extra)
        accuracy[arm] = json.loads((work / arm / "metrics.json").read_text())["stages"][-1]["val_accuracy"]
    print(json.dumps({"seed": args.seed, "flipped": len(moved), "label_issues": len(found),
                      "true_flips_found": len(moved & set(found)), "audit_seconds_warm_cache": round(warm, 1),
                      "val_accuracy": accuracy}))


if __name__ == "__main__":
    main()
