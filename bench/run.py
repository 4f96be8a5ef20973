"""The benchmark suite of issue 14, side by side in one run; the table is printed and written into
BENCHMARKS.md (the section between the `bench/run.py` markers).

    PYTHONPATH=. python bench/run.py

EfficientNet-Lite0 (offline ImageNet weights) on data_samples/photos at 128 px, batch 32. Every
measurement runs in a fresh process (`--child NAME`), so one cannot warm another up:

- P1: extraction (files -> decode -> resize -> base -> pooling, `tlkit.engine.frozen.run_base`) images/s
  / the bare forward pass of the same pooled base on the same images in memory (`predict`).
- P2: the head stage, 10 epochs, the frozen base run every epoch / the same stage on cached
  features (`extract` with a warm cache), seconds of the stage's fit and evaluation (the
  one extraction of a cold cache comes before it, and is in P1).
- P3: finetune epochs (top block unfrozen, validation every epoch) through tlkit / the same model
  (`tlkit.bases.load_base` + `build_classifier`, the same block unfrozen) fitted by a plain loop,
  the Keras guide's (`image_dataset_from_directory` + `prefetch` + `fit`), images/s of the epochs
  after the first on both sides, best of two processes each; tlkit with the image cache off and
  on (memory: the decoded images, and the frozen layers' outputs, computed once). Beside it, where
  tlkit's finetune time goes: the same run without the frozen layers run once, without op
  determinism, without the TensorBoard callback, without the best-checkpoint writes, without
  the resume snapshot of every epoch, without curves.png (each left out alone, in the child, by patching), and the whole run's seconds,
  loading and the one pass of the frozen layers included.
- P5: peak RSS of scanning and iterating 10x the images / 1x (bench/pipeline_memory.py's child),
  image cache disk and none.
- P6: finetune images/s with `--distribute mirrored` over two logical CPU devices (every GPU, on a
  GPU machine) / one device, on the whole model (the frozen layers run every epoch), and on its
  trainable part (P6': the frozen layers run once).
On a GPU machine the same command adds P3 rows with mixed precision and with XLA (`--jit`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data_samples" / "photos"
BASE = "efficientnet_lite0"
SIZE = 128
BATCH = 32
EPOCHS = 6  # finetune epochs per measurement: the first traces and fills caches; the 5 after it count
TIMEOUT = 900


def epoch_timer():
    """A callback added to every `fit` of this process: the seconds of each epoch (validation
    included), by fit call."""
    import keras

    class Timer(keras.callbacks.Callback):
        fits: list[list[float]] = []

        def on_train_begin(self, logs=None):
            self.fits.append([])

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.fits[-1].append(time.perf_counter() - self.start)

    timer = Timer()
    fit = keras.Model.fit

    def timed_fit(self, *args, callbacks=None, **kwargs):
        return fit(self, *args, callbacks=[*(callbacks or []), timer], **kwargs)

    keras.Model.fit = timed_fit
    return timer


def later_rate(seconds: list[float], images: int) -> float:
    """Images per second of the epochs after the first."""
    return images * (len(seconds) - 1) / sum(seconds[1:])


def child_p1(args):
    import numpy as np

    from tlkit.bases import load_base
    from tlkit.data import pipeline as tldata
    from tlkit.engine import frozen as features
    from tlkit.engine.strategy import configure
    from tlkit.engine.training import load_data
    from tlkit.recipe.schema import Recipe

    recipe = Recipe(base=BASE, data=str(DATA), image_size=SIZE, batch_size=BATCH)
    configure(recipe)
    _, train, val, _ = load_data(recipe)
    files = train.files + val.files
    size = (SIZE, SIZE)
    base = load_base(BASE, "imagenet", size)
    pooled = features.pooled_model(base.model)
    in_memory = tldata.load_images(files, size)
    features.run_base(base.model, files[:BATCH], size, BATCH)
    pooled.predict(in_memory, batch_size=BATCH, verbose=0)  # traces both batch sizes
    timings = {"extraction": [], "bare": []}
    for _ in range(args.repeats):  # interleaved, so a burst of load on the machine hits both
        start = time.perf_counter()
        got = features.run_base(base.model, files, size, BATCH)
        timings["extraction"].append(time.perf_counter() - start)
        start = time.perf_counter()
        bare = pooled.predict(in_memory, batch_size=BATCH, verbose=0)
        timings["bare"].append(time.perf_counter() - start)
    return {"images": len(files), "extraction": len(files) / min(timings["extraction"]),
            "bare": len(files) / min(timings["bare"]), "max_abs_diff": float(np.abs(got - bare).max())}


def child_p2(args):
    import dataclasses

    from tlkit.engine.strategy import configure
    from tlkit.engine.training import load_data
    from tlkit.jobs import run_recipe  # with the stage kinds registered
    from tlkit.recipe.schema import Recipe, Stage

    recipe = Recipe(base=BASE, data=str(DATA), image_size=SIZE, batch_size=BATCH, cache_images="none")
    configure(recipe)
    classes, train, val, _ = load_data(recipe)
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind in (("extract_cold", "extract"), ("extract_warm", "extract"), ("head", "head")):  # cold fills
            r = dataclasses.replace(recipe, stages=[Stage(kind, epochs=10, learning_rate=1e-3)], cache=f"{tmp}/cache")
            ctx = run_recipe(r, None, Path(tmp, name), verbose=0, data=(classes, train, val))
            seconds[name] = ctx.results[0].seconds
    return seconds


def child_p3(args):
    """One finetune measurement: `args.variant` is plain (the Keras guide's loop) or tlkit with
    the changes its name lists (cache_memory, no_determinism, no_tensorboard, no_checkpoint,
    mixed_precision, jit, mirrored)."""
    variant = set(args.variant.split("+"))
    if "mirrored" in variant:  # before TensorFlow starts: two logical CPU devices when there is no GPU
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import tensorflow as tf

    timer = epoch_timer()
    if "no_determinism" in variant:
        from tlkit.engine import strategy

        strategy.set_op_determinism = lambda on: None
    if "no_tensorboard" in variant:
        keras.callbacks.TensorBoard = lambda *a, **k: keras.callbacks.Callback()
    if "no_curves" in variant:
        from tlkit.engine.curves import TrainingCurves

        TrainingCurves.on_epoch_end = lambda self, epoch, logs=None: None
    if "no_frozen" in variant:
        from tlkit.engine import frozen as features

        features.frozen_once = lambda ctx, index, kind: None
    if "no_snapshot" in variant:
        from tlkit.engine.resume import Snapshot

        Snapshot.on_epoch_end = lambda self, epoch, logs=None: None
    if "no_checkpoint" in variant:
        from tlkit.engine.checkpoint import BestCheckpoint

        BestCheckpoint.on_epoch_end = lambda self, epoch, logs=None: None
    start = time.perf_counter()
    if "plain" in variant:
        from tlkit.bases import load_base
        from tlkit.engine.classifier import BASE_LAYER, build_classifier
        from tlkit.models.blocks import set_trainable_top

        keras.utils.set_random_seed(0)
        common = dict(validation_split=0.2, seed=0, image_size=(SIZE, SIZE), batch_size=BATCH)
        train = keras.utils.image_dataset_from_directory(DATA, subset="training", **common)
        val = keras.utils.image_dataset_from_directory(DATA, subset="validation", **common)
        base = load_base(BASE, "imagenet", (SIZE, SIZE))
        model = build_classifier(base, len(train.class_names), 0.2)
        set_trainable_top(model.get_layer(BASE_LAYER), base.blocks, 1)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(train.prefetch(tf.data.AUTOTUNE), validation_data=val.prefetch(tf.data.AUTOTUNE), epochs=EPOCHS,
                  verbose=0)
        images = sum(len(y) for _, y in train)
    else:
        from tlkit.jobs import finetune
        from tlkit.rundir.files import RunDir

        with tempfile.TemporaryDirectory() as tmp:
            run = finetune(BASE, str(DATA), out=f"{tmp}/run", image_size=SIZE, batch_size=BATCH, seed=0,
                           cache_images="memory" if "cache_memory" in variant else "none",
                           mixed_precision="mixed_precision" in variant, jit="jit" in variant,
                           distribute="mirrored" if "mirrored" in variant else "none",
                           stages={"head": {"epochs": 0}, "finetune": {"epochs": EPOCHS, "unfreeze": 1}}, verbose=0)
            images = json.loads(RunDir(run.path).metrics.read_text())["train_images"]
    epochs = timer.fits[-1]
    return {"images": images, "epochs_s": epochs, "rate": later_rate(epochs, images),
            "total_s": time.perf_counter() - start}


def child_p5(args):
    sys.path.insert(0, str(ROOT / "bench"))
    import pipeline_memory

    folder, mode = args.folder, args.mode
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pipeline_memory.child(folder, mode, 3)
    r = json.loads(out.getvalue().strip().splitlines()[-1])
    return {**r, "peak": max(r["scan_peak"], r["iterate_peak"])}


CHILDREN = {"p1": child_p1, "p2": child_p2, "p3": child_p3, "p5": child_p5}


def measure(name: str, env=None, **options) -> dict:
    command = [sys.executable, __file__, "--child", name]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {name} {options or ''}: {json.dumps(result)} ({time.perf_counter() - start:.0f} s)", flush=True)
    return result


def machine() -> str:
    import tensorflow as tf

    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
            + (f", GPU: {', '.join(gpus)}" if gpus else ", no GPU")
            + f"; TensorFlow {tf.__version__}, Python {platform.python_version()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="P1 timings are the best of this many")
    parser.add_argument("--p3-repeats", type=int, default=2, help="P3 and P6 rates are the best of this many processes")
    parser.add_argument("--images", type=int, default=60, help="P5: images at 1x")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return

    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    load = [os.getloadavg()[0]]
    print(f"{machine()}; load average {load[0]:.2f}", flush=True)
    rows = []  # (id, what, measured, goal)

    p1 = measure("p1", repeats=args.repeats)
    rows.append(("P1", f"extraction {p1['extraction']:.1f} img/s / bare forward in memory {p1['bare']:.1f} img/s",
                 p1["extraction"] / p1["bare"], ">= 0.95"))

    p2 = measure("p2")
    rows.append(("P2", f"head stage 10 epochs {p2['head']:.1f} s / on cached features {p2['extract_warm']:.1f} s",
                 p2["head"] / p2["extract_warm"], ">= 8"))

    variants = ["plain", "tlkit", "tlkit+cache_memory", "tlkit+cache_memory+no_frozen", "tlkit+no_determinism",
                "tlkit+no_tensorboard", "tlkit+no_checkpoint", "tlkit+no_snapshot", "tlkit+no_curves"]
    if gpu:
        variants += ["tlkit+cache_memory+mixed_precision", "tlkit+cache_memory+jit"]
    p3 = {}
    for _ in range(args.p3_repeats):  # interleaved, so a burst of load on the machine does not hit one variant only
        for v in variants:
            got = measure("p3", variant=v)
            if v not in p3 or got["rate"] > p3[v]["rate"]:
                p3[v] = got
    plain = p3["plain"]["rate"]
    for v in variants[1:]:
        goal = {"tlkit": ">= 1.0", "tlkit+cache_memory": ">= 1.5"}.get(v, "")
        rows.append(("P3" if goal else "P3'", f"finetune epochs, {v.replace('+', ', ')}: {p3[v]['rate']:.1f} img/s "
                     f"/ plain fit {plain:.1f} img/s", p3[v]["rate"] / plain, goal))
    for v in ("tlkit", "tlkit+cache_memory"):  # everything counted: loading, decoding, the frozen layers' pass
        rows.append(("P3'", f"whole finetune job (data checks, model, {EPOCHS} epochs, tlkit's end-of-run report), "
                     f"{v.replace('+', ', ')}: {p3[v]['total_s']:.1f} s / plain {p3['plain']['total_s']:.1f} s",
                     p3["plain"]["total_s"] / p3[v]["total_s"], "(speed-up)"))

    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(ROOT / "bench"))
        import pipeline_memory

        folders = {scale: Path(tmp, f"x{scale}") for scale in (1, 10)}
        for scale, folder in folders.items():
            pipeline_memory.make_folder(folder, args.images * scale)
        env = dict(os.environ, TLKIT_CACHE=str(Path(tmp, "cache")))
        for mode in ("disk", "none"):
            one, ten = (measure("p5", env=env, folder=folders[s], mode=mode) for s in (1, 10))
            rows.append(("P5", f"peak RSS, image cache {mode}: {ten['images']} images {ten['peak']:.0f} MB / "
                               f"{one['images']} images {one['peak']:.0f} MB", ten["peak"] / one["peak"], "<= 1.2"))

    devices = "GPUs" if gpu else "two logical CPU devices"
    for one in ("tlkit+cache_memory+no_frozen", "tlkit+cache_memory"):  # the whole model, then its trainable part
        mirrored = max((measure("p3", variant=f"{one}+mirrored") for _ in range(args.p3_repeats)),
                       key=lambda r: r["rate"])
        rows.append(("P6" if "no_frozen" in one else "P6'",
                     f"finetune epochs, {one.replace('+', ', ')}: mirrored over {devices} {mirrored['rate']:.1f} "
                     f"img/s / one device {p3[one]['rate']:.1f} img/s", mirrored["rate"] / p3[one]["rate"], "report"))
    load.append(os.getloadavg()[0])

    table = ["| | what | ratio | goal |", "|---|---|---:|---|"]
    table += [f"| {i} | {what} | {ratio:.2f} | {goal} |" for i, what, ratio, goal in rows]
    print("\n" + "\n".join(table))
    if args.no_write:
        return
    section = "\n".join([
        "<!-- bench/run.py: start -->", "", "    PYTHONPATH=. python bench/run.py", "",
        f"{machine()}; load average {load[0]:.2f} at the start, {load[1]:.2f} at the end; "
        f"{time.strftime('%Y-%m-%d')}. {BASE} (ImageNet weights) on data_samples/photos at {SIZE} px, "
        f"batch {BATCH}; finetune rates are of the {EPOCHS - 1} epochs after the first (validation included).", "",
        *table, "", "<!-- bench/run.py: end -->"])
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    start, end = text.find("<!-- bench/run.py: start -->"), text.find("<!-- bench/run.py: end -->")
    if start >= 0 and end >= 0:
        text = text[:start] + section + text[end + len("<!-- bench/run.py: end -->"):]
    else:
        text = text.rstrip() + "\n\n## The benchmark suite (`bench/run.py`)\n\n" + section + "\n"
    path.write_text(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
