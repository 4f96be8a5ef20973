import keras
import matplotlib
import numpy as np
import pytest
from PIL import Image

from tlkit.errors import TlkitError
from tlkit.evaluation.visualize import (
    GAP_PX,
    KERNEL_PIXEL_PX,
    MIN_SIDE_PX,
    TITLE_PX,
    _normalise,
    plot_activations,
    plot_filters,
)
from tlkit.models.blocks import build_block_map
from tlkit.models.preprocessing import ImagePreprocessing


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.int32)


def mosaic_box(pixels):
    """Rows and columns of the mosaic's non-white pixels, below the title band and left of the
    colour bar (the first run of non-white columns with no white gap wider than the tiles')."""
    body = (pixels[TITLE_PX:] < 255).any(axis=-1)
    xs = np.nonzero(body.any(axis=0))[0]
    breaks = np.nonzero(np.diff(xs) > GAP_PX + 1)[0]
    x1 = xs[breaks[0]] + 1 if len(breaks) else xs[-1] + 1
    ys = np.nonzero(body[:, xs[0]:x1].any(axis=1))[0]
    return TITLE_PX + ys.min(), TITLE_PX + ys.max() + 1, xs[0], x1


def cell_centres(y0, x0, tile, k=3):
    cell = tile // k
    return {(i, j): (y0 + i * cell + cell // 2, x0 + j * cell + cell // 2) for i in range(k) for j in range(k)}


def conv_model(kernel, preprocessing=None):
    """A model whose first Conv2D (inside a nested model) has `kernel` (3, 3, c_in, n)."""
    kh, kw, c_in, n = kernel.shape
    inner_in = keras.Input((16, 16, c_in))
    conv = keras.layers.Conv2D(n, (kh, kw), name="first")
    inner = keras.Model(inner_in, conv(inner_in), name="inner")
    conv.kernel.assign(kernel)
    inputs = keras.Input((16, 16, c_in))
    x = ImagePreprocessing(preprocessing, name="preprocessing")(inputs) if preprocessing else inputs
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, name="second")(inner(x)))


def test_filter_tile_is_brighter_where_the_kernel_is_larger(tmp_path):
    # the maximum in the middle, so the tile's corners are not white like the background
    values = np.array([[0, 1, 2], [3, 8, 4], [5, 6, 7]], np.float32)
    out = plot_filters(conv_model(values.reshape(3, 3, 1, 1) - 3.0), tmp_path / "filters.png")
    pixels = read_png(out)
    y0, y1, x0, x1 = mosaic_box(pixels)
    tile = 3 * KERNEL_PIXEL_PX  # one 3x3 kernel, each value a cell large enough to see
    assert y1 - y0 == x1 - x0 == tile
    for (i, j), (y, x) in cell_centres(y0, x0, tile).items():
        r, g, b = pixels[y, x]
        assert r == g == b  # grayscale for a one-channel kernel
        assert abs(r - 255 * values[i, j] / 8) <= 1  # the kernel scaled to [0, 1]


def test_rgb_kernels_in_colour_and_caffe_models_flipped(tmp_path):
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[1, 1, 1, 0] = kernel[2, 2, 2, 0] = 1.0  # red, green, blue on the diagonal
    kernel[..., 1] = np.random.default_rng(0).normal(size=(3, 3, 3))
    for preprocessing, colours in ((None, ("red", "green", "blue")), ("caffe", ("blue", "green", "red"))):
        pixels = read_png(plot_filters(conv_model(kernel, preprocessing), tmp_path / "f.png"))
        y0, y1, x0, x1 = mosaic_box(pixels)
        tile = 3 * KERNEL_PIXEL_PX
        assert (y1 - y0, x1 - x0) == (tile, 2 * tile + 2)  # two tiles side by side, a 2-px gap
        centres = cell_centres(y0, x0, tile)
        for d, colour in enumerate(colours):
            expected = [255 * (c == colour) for c in ("red", "green", "blue")]
            assert pixels[centres[d, d]].tolist() == expected
        assert pixels[centres[0, 1]].tolist() == [0, 0, 0]


def test_kernels_over_other_channel_counts_are_grayscale_tiles(tmp_path):
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 3)).astype(np.float32)
    pixels = read_png(plot_filters(conv_model(kernel), tmp_path / "f.png", max_tiles=5))
    y0, y1, x0, x1 = mosaic_box(pixels)
    tile = 3 * KERNEL_PIXEL_PX
    assert (y1 - y0, x1 - x0) == (2 * tile + 2, 3 * tile + 4)  # 5 of the 12 tiles, in a 3x2 grid
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_plot_filters_needs_a_conv(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(TlkitError, match="no Conv2D"):
        plot_filters(model, tmp_path / "f.png")


def small_cnn(include_top=True):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(inputs)
    x = keras.layers.MaxPooling2D(name="block1_pool")(x)
    features = keras.Sequential(
        [keras.Input((16, 16, 8)), keras.layers.Conv2D(80, 3, padding="same", name="block2_conv"),
         keras.layers.MaxPooling2D(name="block2_pool")],
        name="features",
    )
    x = features(x)
    if include_top:
        x = keras.layers.Dense(2, name="fc")(keras.layers.GlobalAveragePooling2D(name="pool")(x))
    return keras.Model(inputs, x)


def test_activations_one_png_per_conv_or_pool_layer(tmp_path):
    rng = np.random.default_rng(0)
    files = plot_activations(small_cnn(), rng.uniform(0, 255, (48, 40, 3)), tmp_path)  # resized to 32x32
    names = ["01_block1_conv.png", "02_block1_pool.png", "03_features_block2_conv.png", "04_features_block2_pool.png"]
    assert [f.name for f in files] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left behind
    # (channels, map side) -> grid; tiles are upscaled to >= 48 px; 2-px gaps
    for f, (cols, rows, tile) in zip(files, [(3, 3, 64), (3, 3, 48), (8, 8, 48), (8, 8, 48)]):
        y0, y1, x0, x1 = mosaic_box(read_png(f))
        assert (x1 - x0, y1 - y0) == (cols * (tile + 2) - 2, rows * (tile + 2) - 2)
        assert min(Image.open(f).size) >= MIN_SIDE_PX


def test_activations_of_block_outputs_show_the_image(tmp_path):
    model = small_cnn(include_top=False)  # a base: its block map covers every layer with weights
    blocks = build_block_map(model, [("block1", r"^block1_"), ("block2", r"^features$")])
    image = np.zeros((32, 32, 3), np.float32)
    image[:, :16] = 255.0
    files = plot_activations(model, image, tmp_path, blocks=blocks)
    assert [f.name for f in files] == ["01_block1_pool.png", "02_features.png"]

    # an identity 1x1 convolution shows the image itself: bright (viridis' yellow) left, dark right
    identity = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(1, 1, use_bias=False, name="c")])
    identity.layers[0].kernel.assign(np.array([[[[1.0], [0.0], [0.0]]]], np.float32))
    pixels = read_png(plot_activations(identity, image, tmp_path / "identity")[0])
    y0, _, x0, x1 = mosaic_box(pixels)
    viridis = (np.asarray(matplotlib.colormaps["viridis"]([1.0, 0.0])[:, :3]) * 255).round()
    assert np.abs(pixels[y0 + 10, x0 + 10] - viridis[0]).max() <= 1
    assert np.abs(pixels[y0 + 10, x1 - 10] - viridis[1]).max() <= 1


def test_activations_reject_an_image_of_the_wrong_channels(tmp_path):
    with pytest.raises(TlkitError, match=r"image of shape \(32, 32\) does not fit"):
        plot_activations(small_cnn(), np.zeros((32, 32)), tmp_path)


def test_pictures_are_large_enough_to_read(tmp_path):
    # LeNet-5's first layer: 6 kernels 5x5 over one channel, once drawn 160x130 px
    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(6, 5, name="conv1")], name="lenet5")
    width, height = Image.open(plot_filters(model, tmp_path / "f.png")).size
    assert width >= 3 * 5 * KERNEL_PIXEL_PX and height >= MIN_SIDE_PX


def test_a_dead_channel_is_drawn_as_zero_on_a_shared_colour_scale(tmp_path):
    assert (_normalise(np.full((2, 3, 3), 7.0), axes=(1, 2)) == 0).all()  # constant: no contrast, not mid-grey
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 1, activation="relu", name="c")],
                             name="tiny")
    model.layers[0].kernel.assign(np.ones((1, 1, 1, 2), np.float32))
    model.layers[0].bias.assign(np.array([0.0, -1000.0], np.float32))  # the second channel is dead
    image = np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8, 1)
    out = plot_activations(model, image, tmp_path)[0]
    pixels = read_png(out)
    y0, y1, x0, x1 = mosaic_box(pixels)
    viridis = (np.asarray(matplotlib.colormaps["viridis"]([0.0, 1.0])[:, :3]) * 255).round()
    dead = pixels[y0:y1, (x0 + x1) // 2 + 2:x1]
    assert np.abs(dead - viridis[0]).max() <= 1  # the colour scale's bottom, as zero is
    assert np.abs(pixels[y1 - 2, (x0 + x1) // 2 - 3] - viridis[1]).max() <= 1  # the live channel's peak: the top
    # the bar beside the mosaic runs from the top colour to the bottom one
    column = pixels[TITLE_PX:, x1 + GAP_PX + 12]
    bar = column[(column < 255).any(axis=-1)]
    assert np.abs(bar[0] - viridis[1]).max() <= 2 and np.abs(bar[-1] - viridis[0]).max() <= 2
