"""The pre-training scan against the bare work it has to do (issue 27).

N distinct 320x240 JPEGs (noise over a gradient) in 4 class folders of a temporary folder (up
to 10,000 drawn from a seed each, the rest copies of those with a comment that makes each
distinct); then, side by side in this process:

  bare:    read, Pillow decode (full size) + SHA-256 of every file, in a process pool of every
           core, run before and after the scans (their mean is the reference);
  scan:    `tlkit.data.folders.scan` of the folder, with the command line's progress bar, the
           scan cache empty (cold);
  re-scan: the same scan again, the folder unchanged (the scan cache warm).

Every file is read once before any of them, so that all four read from the page cache. Prints
images/s of each, scan / bare and re-scan seconds / scan seconds; and images a CPU second of the
bare work and the scan, which other jobs on a shared machine change less than they change the
rates (the scan's 4 threads a core take a larger share of a busy machine than the bare pool's
process a core).

    PYTHONPATH=. python bench/scan_rate.py --images 5000 [--keep DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = 4


# Images drawn from their own seed; the others are copies of one of these with a JPEG comment
# naming them: distinct bytes (a distinct SHA-256) and the same decoding work, written in a
# fraction of the time (10^5 drawn images took over half an hour on the shared 2 cores).
DRAWN = 10_000


def _path(root, i: int) -> Path:
    return Path(root, f"c{i % CLASSES}", f"{i:07d}.jpg")  # DRAWN is a multiple of CLASSES: a copy keeps its class


def _write(args) -> None:
    root, i = args
    if i >= DRAWN:
        jpeg = _path(root, i % DRAWN).read_bytes()
        comment = f"copy {i}".encode()
        _path(root, i).write_bytes(jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:])
        return
    rng = np.random.default_rng(i)
    y, x = np.mgrid[:240, :320]
    image = rng.integers(0, 96, (240, 320, 3)) + np.stack([x * 0.4, y * 0.5, (x + y) * 0.2], -1)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(_path(root, i), quality=90)


def generate(root: Path, n: int) -> None:
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    missing = [(str(root), i) for i in range(n) if not _path(root, i).exists()]
    with ProcessPoolExecutor() as pool:
        for batch in ([m for m in missing if m[1] < DRAWN], [m for m in missing if m[1] >= DRAWN]):
            list(pool.map(_write, batch, chunksize=64))


def _bare(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(__import__("io").BytesIO(data)) as image:
        image.load()
    return hashlib.sha256(data).hexdigest()


def bare_rate(files: list[str]) -> tuple[float, float]:
    """(images/s, images per CPU second) of the bare work in a pool of every core."""
    start, cpu = time.perf_counter(), _cpu(children=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_bare, files, chunksize=32))
    return len(files) / (time.perf_counter() - start), len(files) / (_cpu(children=True) - cpu)


def _cpu(children: bool = False) -> float:
    """CPU seconds (user and system) of this process, or of its finished child processes."""
    t = os.times()
    return t.children_user + t.children_system if children else t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--keep", type=Path, help="generate into (and reuse) this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scan_rate.") as work:  # the scan cache, and the images unless --keep
        measure(args, Path(work))


def measure(args, work: Path) -> None:
    root = args.keep or work / "data"
    os.environ["TLKIT_CACHE"] = str(work / "cache")
    generate(root, args.images)
    files = sorted(str(p) for p in root.rglob("*.jpg"))
    if len(files) != args.images:
        raise SystemExit(f"{root} holds {len(files)} JPEGs, not {args.images}: use another --keep folder")
    for path in files:
        Path(path).read_bytes()
    print(f"{len(files)} JPEGs of 320x240 in {root}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")

    from tlkit.data.folders import scan
    from tlkit.data.report import console_progress

    bare, bare_cpu = bare_rate(files)
    start, cpu = time.perf_counter(), _cpu()
    scan(root, progress=console_progress())
    first, first_cpu = time.perf_counter() - start, _cpu() - cpu
    start = time.perf_counter()
    scan(root, progress=console_progress())
    again = time.perf_counter() - start
    bare_after, bare_cpu_after = bare_rate(files)
    n = len(files)
    print(f"bare decode+hash, {os.cpu_count()} processes: {bare:,.0f} images/s (again after the scans: "
          f"{bare_after:,.0f}); {bare_cpu:,.0f} and {bare_cpu_after:,.0f} images a CPU second")
    print(f"scan, cold cache: {n / first:,.0f} images/s ({first:.1f} s), {n / first_cpu:,.0f} images a CPU second; "
          f"scan / bare = {n / first / ((bare + bare_after) / 2):.2f}, "
          f"a CPU second: {n / first_cpu / ((bare_cpu + bare_cpu_after) / 2):.2f}")
    print(f"re-scan, unchanged: {again:.2f} s, {again / first:.3f} of the first; "
          f"load average {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
