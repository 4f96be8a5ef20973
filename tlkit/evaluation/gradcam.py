"""Grad-CAM (Selvaraju et al. 2017): where in an image the evidence for a class lies, from the
gradients of its score at the last convolutional block (`gradcam_layer`, from the base's block
map); `plot_gradcam` draws each image beside its heat map. Drawn on matplotlib's Agg canvas,
never pyplot.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import keras
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlkit._util.io import write_atomic
from tlkit._util.urls import as_path
from tlkit.bases.inspect import walk
from tlkit.data.pipeline import load_images
from tlkit.errors import TlkitError
from tlkit.evaluation.visualize import DPI, leaf_layers
from tlkit.rundir.files import RunDir


def gradcam_layer(model: keras.Model, blocks: dict[str, list[str]] | None) -> str:
    """The layer Grad-CAM looks at: the output of the last block of the base (a block map
    {block: [layer names]}, as in RUN/blocks.json) that is still a feature map (h, w, c), so a
    block after the pooling (a trained model's "top") is passed over. Without a block map, the
    last layer of `model` or its nested models with a 4-D output."""
    leaves = {layer.name: layer for layer in leaf_layers(model)}
    names = [layers[-1] for layers in blocks.values()] if blocks else list(leaves)
    for name in reversed(names):
        layer = leaves.get(name)
        if layer is not None and len(_feature_map(layer.output).shape) == 4:
            return name
    raise TlkitError(f"model {model.name} has no block with a feature map (h, w, c) output: Grad-CAM needs one "
                     "(a TF Hub base gives only a vector)")


def _feature_map(output):
    # a layer with several outputs (tlkit's max pooling that also gives its switches) gives the
    # feature map first
    return output[0] if isinstance(output, (list, tuple)) else output


def gradcam(model: keras.Model, images: np.ndarray, layer: str, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM (Selvaraju et al., 2017) of `images` (n, h, w, c) in [0, 255] at `layer`.

    For each image, the feature maps of `layer` weighted by the mean gradient of the class's
    probability over each map, summed and passed through a ReLU: where the evidence for the class
    lies. `classes` gives the class index of each image (default: the predicted class). Returns
    the heat maps resized to (n, h, w), each scaled to [0, 1] by its maximum, and the
    probabilities (n, num_classes)."""
    import tensorflow as tf

    x = tf.constant(np.asarray(images, np.float32))
    captured = []

    def visit(op, path, args, kwargs):
        outputs = op(*args, **kwargs)
        if op.name == layer and not captured:
            tape.watch(_feature_map(outputs))
            captured.append(_feature_map(outputs))
        return outputs

    # the model is run layer by layer (tlkit.bases.inspect.walk) so the tape sees the feature maps of a
    # layer inside the nested base, which the classifier's own call hides
    with tf.GradientTape() as tape:
        probabilities = tf.cast(walk(model, x, visit), tf.float32)
        chosen = tf.argmax(probabilities, axis=-1) if classes is None else tf.constant(classes, tf.int64)
        score = tf.gather(probabilities, chosen, axis=1, batch_dims=1)
    if not captured:
        raise TlkitError(f"layer '{layer}' did not run in model {model.name}")
    maps = tf.cast(captured[0], tf.float32)
    grads = tf.cast(tape.gradient(score, captured[0]), tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))[..., None]
    cam = tf.image.resize(cam, x.shape[1:3])[..., 0].numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0), probabilities.numpy()


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """`image` (h, w, 1 or 3) in [0, 255] under `heat` (h, w) in [0, 1] coloured with jet, as
    RGB in [0, 1]. The colour is laid on in proportion to the heat, so cold places keep the
    photo and the hot ones are plainly red."""
    rgb = np.broadcast_to(np.asarray(image, np.float32) / 255.0, (*image.shape[:2], 3))
    colour = matplotlib.colormaps["jet"](heat)[..., :3]
    weight = alpha * heat[..., None] ** 0.5
    return np.clip(rgb * (1 - weight) + colour * weight, 0, 1)


def plot_gradcam(run, image_paths, out_dir: str | os.PathLike, class_name: str | None = None) -> list[Path]:
    """For each image, `<out_dir>/<name>_gradcam.png`: the image as the model sees it beside its
    Grad-CAM overlay, for `class_name` (default: the predicted class). `run` is a loaded run
    (tlkit.rundir.load.Run)."""
    if class_name is not None and class_name not in run.labels:
        raise TlkitError(f"class '{class_name}' is not one of the model's: {', '.join(run.labels)}")
    layer = gradcam_layer(run.model, RunDir(run.path).read_blocks())
    paths = [as_path(p) for p in image_paths]  # a bucket's URL stays whole
    images = load_images(paths, run.image_size, run.channels)
    wanted = None if class_name is None else run.labels.index(class_name)
    files = []
    for start in range(0, len(paths), 16):
        batch = images[start:start + 16]
        heat, probs = gradcam(run.model, batch, layer, None if wanted is None else [wanted] * len(batch))
        for j, (path, image, h, p) in enumerate(zip(paths[start:start + 16], batch, heat, probs)):
            top = int(p.argmax())
            shown = top if wanted is None else wanted
            title = (f"{path.name}\npredicted {run.labels[top]} {p[top]:.2f}; "
                     f"heat for {run.labels[shown]} ({p[shown]:.2f}) at {layer}")
            out = Path(out_dir) / f"{start + j:03d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', path.stem)}_gradcam.png"
            files.append(_save_pair(image, overlay(image, h), title, out))
    return files


def _save_pair(image: np.ndarray, heat_image: np.ndarray, title: str, out: Path) -> Path:
    fig = Figure(figsize=(6, 3.4), dpi=DPI, facecolor="white")
    for k, picture in enumerate((np.broadcast_to(image / 255.0, (*image.shape[:2], 3)), heat_image)):
        ax = fig.add_axes((0.02 + 0.49 * k, 0.02, 0.47, 0.78))
        ax.imshow(picture, interpolation="bilinear")
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9, y=0.97)
    canvas = FigureCanvasAgg(fig)
    write_atomic(out, lambda tmp: canvas.print_png(str(tmp)))
    return out
