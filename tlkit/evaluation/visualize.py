"""Pictures of what a network learned: its first-layer kernels and its feature maps for one image.

Every picture is a mosaic of tiles on a white background: tiles `GAP_PX` apart and from the edge,
each upscaled (nearest neighbour) so its longer side is at least `TILE_PX` (a kernel pixel at
least `KERNEL_PIXEL_PX`, so a 3x3 kernel can be read), laid out row by row in a near-square grid
under a `TITLE_PX` band naming the model and layer, with a colour scale in the `COLORBAR_PX` on
its right; the canvas is at least `MIN_SIDE_PX` wide and high, and wider when the title needs it.
The mosaic is drawn pixel for pixel (no resampling by matplotlib), so a tile's pixels are its values.
Drawing uses matplotlib's Agg canvas directly and never pyplot, so it neither needs a display nor
changes the backend of a user's session."""
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

from tlkit._util.io import write_atomic
from tlkit.bases import BASES, load_base
from tlkit.bases.inspect import is_graph_model, walk
from tlkit.data.pipeline import load_image
from tlkit.errors import TlkitError
from tlkit.models.blocks import Block
from tlkit.models.preprocessing import is_bgr
from tlkit.rundir.load import Run, load_run

GAP_PX = 2


TILE_PX = 48


KERNEL_PIXEL_PX = 24


TITLE_PX = 24


COLORBAR_PX = 72


MIN_SIDE_PX = 320


_BAR_GAP_PX, _BAR_WIDTH_PX = 8, 14


DPI = 100


_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Conv2DTranspose)


_POOLS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def _normalise(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Scale each slice along the axes not in `axes` to [0, 1]; a constant slice becomes 0.

    A constant slice (a dead channel, a zeroed kernel) carries no contrast: drawing it as 0, the
    colour scale's bottom, shows it as dead instead of passing it off as a mid value."""
    low, high = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    span = high - low
    return np.where(span > 0, (x - low) / np.where(span > 0, span, 1), 0.0)


def _mosaic(tiles: np.ndarray, pixel_px: int = 1) -> np.ndarray:
    """Lay out `tiles` (n, h, w, 3), values in [0, 1], as one RGB image (see the module docstring);
    each tile pixel is at least `pixel_px` screen pixels a side."""
    n, h, w, _ = tiles.shape
    scale = max(pixel_px, math.ceil(TILE_PX / max(h, w)))
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


def _save(image: np.ndarray, title: str, out: Path, colormap, scale: tuple[str, str]) -> Path:
    """Save `image` under a title band, beside a bar of `colormap` labelled with `scale` (bottom,
    top), through a temporary file so `out` is never half written."""
    body = max(image.shape[0], MIN_SIDE_PX - TITLE_PX)
    height = body + TITLE_PX
    fig = Figure(dpi=DPI, facecolor="white")
    text = fig.text(0.5, 1 - TITLE_PX / 2 / height, title, ha="center", va="center", fontsize=9)
    canvas = FigureCanvasAgg(fig)
    # widen a narrow mosaic's canvas so its title fits; the mosaic stays centred below it
    title_px = math.ceil(text.get_window_extent(canvas.get_renderer()).width) + 8
    width = max(image.shape[1] + COLORBAR_PX, title_px, MIN_SIDE_PX)
    fig.set_size_inches(width / DPI, height / DPI)
    left = (width - COLORBAR_PX - image.shape[1]) // 2
    bar_height = max(image.shape[0], 64)
    # the mosaic and its bar centred in the body; figimage counts rows from the canvas's bottom
    top = height - TITLE_PX - (body - max(image.shape[0], bar_height)) // 2
    fig.figimage(image, xo=left, yo=top - image.shape[0])
    bar = colormap(np.linspace(1, 0, bar_height))[:, None, :3].repeat(_BAR_WIDTH_PX, axis=1)
    bar_x = left + image.shape[1] + _BAR_GAP_PX
    fig.figimage(bar, xo=bar_x, yo=top - bar_height)
    for label, y, va in ((scale[1], top, "top"), (scale[0], top - bar_height, "bottom")):
        fig.text((bar_x + _BAR_WIDTH_PX + 3) / width, y / height, label, ha="left", va=va, fontsize=7)
    write_atomic(out, lambda tmp: canvas.print_png(str(tmp)))
    return out


def plot_filters(
    model: keras.Model, out_png: str | os.PathLike, bgr: bool | None = None, max_tiles: int = 256
) -> Path:
    """Draw the kernels of the first Conv2D of `model` (nested models searched too) as a grid.

    A kernel over 3 input channels is one colour tile; otherwise each (kernel, input channel)
    pair is a grayscale tile; the first `max_tiles` are drawn. Each kernel is scaled from its own
    minimum to its own maximum (a constant kernel is black). `bgr` says the input
    channels are in BGR order (Caffe-style preprocessing); by default it is True when the model
    holds a "caffe" preprocessing, whose flip puts the kernels in BGR order.
    """
    leaves = list(leaf_layers(model))
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
    title = f"{model.name} / {conv.name}: {n} kernels {kh}x{kw}x{c_in}, each from its min to its max"
    if len(tiles) > max_tiles:
        title += f", first {max_tiles} tiles"
    image = _mosaic(tiles[:max_tiles], pixel_px=KERNEL_PIXEL_PX)
    return _save(image, title, Path(out_png), matplotlib.colormaps["gray"], ("min", "max"))


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
    `NN_<layer>.png` in `out_dir`, of its first `max_channels` channels on one colour scale (viridis,
    from the stage's minimum to its maximum, printed beside the mosaic), so channels compare and a
    dead channel (constant) is counted in the title. The image is resized to the model's input size if that is
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
        channels = fmap[..., :max_channels].transpose(2, 0, 1)
        shown = _normalise(channels, axes=(0, 1, 2))
        dead = int((channels.min(axis=(1, 2)) == channels.max(axis=(1, 2))).sum())
        title = f"{model.name} / {name}: {h}x{w}x{c}" + (f", first {max_channels} channels" if c > max_channels else "")
        if dead:
            title += f", {dead} dead (constant)"
        out = Path(out_dir) / f"{i + 1:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        scale = (f"{channels.min():.3g}", f"{channels.max():.3g}")
        files.append(_save(_mosaic(colormap(shown)[..., :3]), title, out, colormap, scale))
    return files


def plot_run_activations(run_path, image_path: str | os.PathLike, out_dir) -> list[Path]:
    """`plot_activations` for a run directory (or a loaded tlkit.rundir.load.Run), one PNG per block
    of the run's base, the image decoded as the run's pipeline decodes it."""
    run = run_path if isinstance(run_path, Run) else load_run(run_path)
    blocks = None
    if run.recipe.base in BASES:
        # the block map names the base's layers, which keep their names inside the classifier
        blocks = load_base(run.recipe.base, "none", run.image_size).blocks
    return plot_activations(run.model, load_image(image_path, run.image_size, run.channels), out_dir, blocks)
