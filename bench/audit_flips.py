"""What `tlkit audit` is worth: the sample photos with 10% of the training labels flipped (seeded),
a head trained on them (`tlkit extract`, efficientnet_lite0), before and after leaving out what
the audit found (`--exclude audit/issues.csv`), scored on a clean validation folder (20% of each
class, never flipped); the label issues' precision and recall; the audit's time with a warm
feature cache. One row per seed, then the mean.

    PYTHONPATH=. python bench/audit_flips.py --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import csv
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


def flipped_folders(work: Path, seed: int) -> set[str]:
    """work/train (80% of each class, 10% of it moved to another class) and work/val; the moved files."""
    rng = np.random.default_rng(seed)
    train, val = work / "train", work / "val"
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
    return moved


def one_seed(seed: int, image_size: int, cache: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"audit_bench{seed}_"))
    moved = flipped_folders(work, seed)
    common = ["--base", "efficientnet_lite0", "--image-size", image_size, "--cache", cache]
    audit = ["audit", "--data", work / "train", "--out", work / "audit", "--seed", seed, *common]
    tlkit(*audit)  # cold: fills the cache
    start = time.perf_counter()
    tlkit(*audit)
    warm = time.perf_counter() - start
    with open(work / "audit" / "issues.csv", newline="") as f:
        found = {row["path"] for row in csv.DictReader(f) if row["kind"] == "label_issue"}
    hits = len(found & moved)
    accuracy = {}
    for arm, extra in (("flipped", []), ("excluded", ["--exclude", work / "audit" / "issues.csv"])):
        tlkit("extract", "--data", work / "train", "--val-data", work / "val", "--out", work / arm, "--seed", seed,
              *common, *extra)
        accuracy[arm] = json.loads((work / arm / "metrics.json").read_text())["stages"][-1]["val_accuracy"]
    shutil.rmtree(work)
    return {"seed": seed, "flipped": len(moved), "label_issues": len(found), "true_flips_found": hits,
            "precision": round(hits / max(len(found), 1), 3), "recall": round(hits / len(moved), 3),
            "audit_seconds_warm_cache": round(warm, 1), "val_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="audit_bench_cache"))
    rows = []
    for seed in args.seeds:
        rows.append(one_seed(seed, args.image_size, cache))
        print(json.dumps(rows[-1]), flush=True)
    print("| seed | flipped | label issues (true flips) | precision | recall | val acc. flipped | val acc. "
          "--exclude | audit, warm cache |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['flipped']} | {r['label_issues']} ({r['true_flips_found']}) | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['val_accuracy']['flipped']:.3f} | {r['val_accuracy']['excluded']:.3f} | "
              f"{r['audit_seconds_warm_cache']:.1f} s |")
    mean = {k: np.mean([r[k] for r in rows]) for k in ("precision", "recall", "audit_seconds_warm_cache")}
    print(f"| mean | | | {mean['precision']:.3f} | {mean['recall']:.3f} | "
          f"{np.mean([r['val_accuracy']['flipped'] for r in rows]):.3f} | "
          f"{np.mean([r['val_accuracy']['excluded'] for r in rows]):.3f} | {mean['audit_seconds_warm_cache']:.1f} s |")
    shutil.rmtree(cache)


if __name__ == "__main__":
    main()
