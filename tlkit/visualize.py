"""Pictures of what a network learned: its first-layer kernels and its feature maps for one image.

Every picture is a mosaic of tiles on a white background: tiles `GAP_PX` apart and from the edge,
each upscaled (nearest neighbour) so its longer side is at least `TILE_PX`, laid out row by row
in a near-square grid, centred under a `TITLE_PX` band naming what is shown (the canvas is
widened when the title is wider than the mosaic). The mosaic is drawn pixel for pixel (no
resampling by matplotlib), so a tile's pixels are its values.
Drawing uses matplotlib's Agg canvas directly and never pyplot, so it neither needs a display nor
changes the backend of a user's session.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import keras
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tlkit.bases import BASES, load_base
from tlkit.blocks import Block
from tlkit.data import load_image
from tlkit.errors import TlkitError
from tlkit.io import write_atomic
from tlkit.rundir import load_run
from tlkit.inspect import is_graph_model, walk
from tlkit.preprocessing import is_bgr

GAP_PX = 2
TILE_PX = 48
TITLE_PX = 24
_DPI = 100
_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Conv2DTranspose)
_POOLS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def _leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _normalise(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Scale each slice along the axes not in `axes` to [0, 1]; a constant slice becomes 0.5."""
    low, high = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    span = high - low
    return np.where(span > 0, (x - low) / np.where(span > 0, span, 1), 0.5)


def _mosaic(tiles: np.ndarray) -> np.ndarray:
    """Lay out `tiles` (n, h, w, 3), values in [0, 1], as one RGB image (see the module docstring)."""
    n, h, w, _ = tiles.shape
    scale = max(1, math.ceil(TILE_PX / max(h, w)))
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = h * scale, w * scale
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    image = np.ones((GAP_PX + rows * (th + GAP_PX), GAP_PX + cols * (tw + GAP_PX), 3), np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = GAP_PX + r * (th + GAP_PX), GAP_PX + c * (tw + GAP_PX)
        image[y : y + th, x : x + tw] = tile
    return image


def _save(image: np.ndarray, title: str, out: Path) -> Path:
    """Save `image` under a title band, through a temporary file so `out` is never half written."""
    height = image.shape[0] + TITLE_PX
    fig = Figure(dpi=_DPI, facecolor="white")
    text = fig.text(0.5, 1 - TITLE_PX / 2 / height, title, ha="center", va="center", fontsize=9)
    canvas = FigureCanvasAgg(fig)
    # widen a narrow mosaic's canvas so its title fits; the mosaic stays centred below it
    width = max(image.shape[1], math.ceil(text.get_window_extent(canvas.get_renderer()).width) + 8)
    fig.set_size_inches(width / _DPI, height / _DPI)
    fig.figimage(image, xo=(width - image.shape[1]) // 2, yo=0)
    write_atomic(out, lambda tmp: canvas.print_png(str(tmp)))
    return out


def plot_filters(
    model: keras.Model, out_png: str | os.PathLike, bgr: bool | None = None, max_tiles: int = 256
) -> Path:
    """Draw the kernels of the first Conv2D of `model` (nested models searched too) as a grid.

    A kernel over 3 input channels is one colour tile; otherwise each (kernel, input channel)
    pair is a grayscale tile; the first `max_tiles` are drawn. Each kernel is scaled to [0, 1] on
    its own. `bgr` says the input
    channels are in BGR order (Caffe-style preprocessing); by default it is True when the model
    holds a "caffe" preprocessing, whose flip puts the kernels in BGR order.
    """
    leaves = list(_leaf_layers(model))
    conv = next((layer for layer in leaves if isinstance(layer, keras.layers.Conv2D)), None)
    if conv is None:
        raise TlkitError(f"model {model.name} has no Conv2D layer: there are no kernels to draw")
    if bgr is None:
        bgr = any(is_bgr(layer) for layer in leaves)
    kernel = conv.kernel.numpy().astype(np.float32)  # (kh, kw, c_in, n)
    kh, kw, c_in, n = kernel.shape
    kernel = _normalise(kernel, axes=(0, 1, 2))
    if c_in == 3:
        tiles = kernel.transpose(3, 0, 1, 2)
        if bgr:
            tiles = tiles[..., ::-1]
    else:
        gray = kernel.transpose(3, 2, 0, 1).reshape(n * c_in, kh, kw)
        tiles = np.repeat(gray[..., None], 3, axis=-1)
    title = f"{conv.name}: {n} kernels {kh}x{kw}x{c_in}"
    if len(tiles) > max_tiles:
        title += f", first {max_tiles} tiles"
    return _save(_mosaic(tiles[:max_tiles]), title, Path(out_png))


def plot_activations(
    model: keras.Model,
    image: np.ndarray,
    out_dir: str | os.PathLike,
    blocks: list[Block] | None = None,
    max_channels: int = 64,
) -> list[Path]:
    """Save the feature maps of each stage of `model` for one `image` (h, w, c), values in [0, 255].

    The stages are the last layers of `blocks` (a block map of `model`) when given, else every
    convolution and pooling layer, nested models included. Each stage gives one PNG,
    `NN_<layer>.png` in `out_dir`, of its first `max_channels` channels, each scaled to [0, 1] on
    its own and coloured with viridis. The image is resized to the model's input size if that is
    fixed and differs. Returns the files in stage order.
    """
    image = np.asarray(image, np.float32)
    size, channels = model.input_shape[1:3], model.input_shape[-1]
    if image.ndim != 3 or image.shape[-1] != channels:
        raise TlkitError(f"image of shape {image.shape} does not fit model {model.name}: it takes (h, w, {channels})")
    if None not in size and image.shape[:2] != tuple(size):
        image = keras.ops.convert_to_numpy(keras.ops.image.resize(image, size))
    names = None if blocks is None else {block.layers[-1] for block in blocks}

    def is_stage(layer) -> bool:
        return isinstance(layer, _CONVS + _POOLS) if names is None else layer.name in names

    def descend(op) -> bool:
        # a block map names top-level layers, a nested model among them (a base in a model)
        return is_graph_model(op) and not is_stage(op)

    maps: list[tuple[str, np.ndarray]] = []

    def visit(layer, path, args, kwargs):
        outputs = layer(*args, **kwargs)
        if is_stage(layer):
            value = keras.ops.convert_to_numpy(outputs)
            # only image-shaped outputs (1, h, w, c) are feature maps one can look at
            if value.ndim == 4:
                maps.append(("/".join((*path, layer.name)), value[0]))
        return outputs

    walk(model, image[None], visit, descend=descend)
    files = []
    colormap = matplotlib.colormaps["viridis"]
    for i, (name, fmap) in enumerate(maps):
        h, w, c = fmap.shape
        shown = _normalise(fmap[..., :max_channels].transpose(2, 0, 1), axes=(1, 2))
        title = f"{name}: {h}x{w}x{c}" + (f", first {max_channels} channels" if c > max_channels else "")
        out = Path(out_dir) / f"{i + 1:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        files.append(_save(_mosaic(colormap(shown)[..., :3]), title, out))
    return files


def plot_run_activations(run_path: str | os.PathLike, image_path: str | os.PathLike, out_dir) -> list[Path]:
    """`plot_activations` for a run directory, one PNG per block of the run's base, the image
    decoded as the run's pipeline decodes it."""
    run = load_run(run_path)
    blocks = None
    if run.recipe.base in BASES:
        # the block map names the base's layers, which keep their names inside the classifier
        blocks = load_base(run.recipe.base, "none", run.image_size).blocks
    return plot_activations(run.model, load_image(image_path, run.image_size, run.channels), out_dir, blocks)
