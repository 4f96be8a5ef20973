"""Reduced-size JPEG decoding: speed and pixel differences against a full decode + resize.

The photos: eight colour photos that scikit-image and scikit-learn ship (astronaut, coffee, cat,
rocket, Hubble deep field, retina, China temple, flower; 300-1,400 px) each mirror-tiled at its
own resolution to a camera-sized frame of 2,000-4,000 px (3000x2000, 4000x3000, 3264x2448,
2000x4000), so the big photo has real photographic detail at every scale rather than the
smooth blur of an upscale, and saved as JPEG quality 90.

For each target size, three decoders of the same bytes, each a tf.function timed over every
photo (best of --repeats):
  full:    every pixel decoded, then the bilinear resize training used before (tf.image.resize);
  reduced: libjpeg's 1/2, 1/4 or 1/8 scaling keeping at least `margin` x the target on each
           side, then the same resize; tlkit.data.decode.decode_image uses margin JPEG_MARGIN (marked *);
  area:    a full decode and an area-averaging resize, the antialiased reference a photo
           editor would give: how far each of the two above is from the ideal downscale.
Pixel differences are on the 0-255 scale, over every pixel of every photo.

    PYTHONPATH=. python bench/jpeg_decode.py
"""
from __future__ import annotations

import argparse
import importlib.resources
import io
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tlkit.data import decode as tldata  # noqa: E402

SOURCES = [
    ("skimage", "data/astronaut.png"), ("skimage", "data/coffee.png"), ("skimage", "data/chelsea.png"),
    ("skimage", "data/rocket.jpg"), ("skimage", "data/hubble_deep_field.jpg"), ("skimage", "data/retina.jpg"),
    ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
]
FRAMES = [(2000, 3000), (3000, 4000), (2448, 3264), (4000, 2000)]  # (height, width)


def photos() -> list[bytes]:
    out = []
    for i, (package, name) in enumerate(SOURCES):
        with importlib.resources.files(package).joinpath(name).open("rb") as f:
            image = np.asarray(Image.open(f).convert("RGB"))
        height, width = FRAMES[i % len(FRAMES)]
        reps = (-(-height // image.shape[0]), -(-width // image.shape[1]))
        # mirror tiles: seamless, and every tile at the source's own resolution
        tiles = [[image[:: 1 - 2 * (r % 2), :: 1 - 2 * (c % 2)] for c in range(reps[1])] for r in range(reps[0])]
        big = np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0)[:height, :width]
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(big)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def best_time(fn, inputs, repeats: int) -> float:
    for data in inputs[:1]:
        fn(data)  # trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for data in inputs:
            fn(data).numpy()
        times.append(time.perf_counter() - start)
    return min(times) / len(inputs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="224,128,64", help="target sides, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    inputs = [tf.constant(b) for b in photos()]
    shapes = [tuple(tf.image.extract_jpeg_shape(b).numpy()[:2]) for b in inputs]
    print(f"{len(inputs)} photos, {min(min(s) for s in shapes)}-{max(max(s) for s in shapes)} px, "
          f"{sum(len(b.numpy()) for b in inputs) / len(inputs) / 1e6:.1f} MB each on average; "
          f"JPEG_MARGIN={tldata.JPEG_MARGIN}")
    spec = [tf.TensorSpec([], tf.string)]
    print(f"{'size':>5} {'decoder':<18} {'ms/image':>9} {'speed-up':>8} {'max|d| vs full':>15} "
          f"{'mean|d| vs full':>16} {'mean|d| vs area':>16}")
    for side in [int(s) for s in args.sizes.split(",")]:
        size = (side, side)
        decoders = {
            "full + bilinear": lambda d: tf.image.resize(tldata._decode(d), size),
            **{f"reduced, margin {m}{'*' if m == tldata.JPEG_MARGIN else ''}":
               lambda d, m=m: tf.image.resize(tldata._decode_for(d, size, margin=m), size) for m in (1, 2, 4)},
            "full + area": lambda d: tf.image.resize(tldata._decode(d), size, method="area"),
        }
        fns = {name: tf.function(fn, input_signature=spec) for name, fn in decoders.items()}
        outputs = {name: np.stack([fn(d).numpy() for d in inputs]) for name, fn in fns.items()}
        full_time = None
        for name, fn in fns.items():
            seconds = best_time(fn, inputs, args.repeats)
            full_time = full_time or seconds
            diff = np.abs(outputs[name] - outputs["full + bilinear"])
            area = np.abs(outputs[name] - outputs["full + area"]).mean()
            print(f"{side:>5} {name:<18} {seconds * 1e3:>9.1f} {full_time / seconds:>7.1f}x {diff.max():>15.1f} "
                  f"{diff.mean():>16.2f} {area:>16.2f}")


if __name__ == "__main__":
    main()
