"""Every `keras.applications` model as a base, by a lowercase name, with its block map.

ImageNet weights come through Keras' own `get_file` download and cache (~/.keras/models, or
$KERAS_HOME/models: `keras_cache_dir`); offline with no cached file, loading fails with one line
naming the file and the folder to put it in (`tlkit bases import NAME FILE` puts it there).

Block maps follow the stages the papers and Keras' layer names draw: VGG block1..5, ResNet
conv1..5, DenseNet conv1, dense blocks (conv2..5) and transitions (pool2..4), EfficientNet stem,
block1..7, top, ConvNeXt stem and stage_0..3, NASNet stem and one block per cell, Inception
mixed blocks, ... A block that holds only BatchNormalization would unfreeze nothing (BatchNorm
stays frozen), so a final BatchNorm joins the stage before it (ResNetV2 `post_bn`, DenseNet `bn`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras

from tlkit._util.keras_internals import keras_home, to_snake_case
from tlkit.bases._registry import BASES, Base, BaseSpec
from tlkit.errors import TlkitError
from tlkit.models.blocks import BlockSpec, build_block_map
from tlkit.models.preprocessing import NAME as PREPROCESSING
from tlkit.models.preprocessing import preprocessing_layer
from tlkit.recipe.base_names import load_catalog


@dataclass(frozen=True)
class App:
    constructor: str  # attribute of keras.applications
    preprocessing: str  # a tlkit.models.preprocessing mode ("none": the Keras model has its own inside)
    size: int  # default input side
    blocks: BlockSpec
    # Where layers that Keras named by its counter (`conv2d_7`) go: the block of the nearest
    # named layer before them ("previous") or after them ("next"); see `unnamed_layers_joined`.
    unnamed: str = "previous"


def _stages(prefix_fmt: str, n: int, first: int = 1) -> BlockSpec:
    return [(prefix_fmt.format(i), "^" + re.escape(prefix_fmt.format(i)) + "_") for i in range(first, first + n)]


def _nasnet(cells: int) -> BlockSpec:
    """NASNet with `cells` normal cells per stage, one block per cell: Keras numbers them
    0..N-1, reduce_N, N+1..2N, reduce_2N, 2N+1..3N (layer names end in the number). The first
    ReLU of a cell's `adjust` block reads the cell two back, so it sits among that earlier cell's
    layers; it has no weights, and no block claims it."""
    spec = [("stem", r"^(stem_|\w+_stem_[12]$)")]
    for stage in range(3):
        first = stage * cells + (stage > 0)
        if stage:
            reduce = f"reduce_{stage * cells}"
            spec.append((reduce, rf"^(?!adjust_relu_1_)(reduction|adjust|separable)_\w*_{reduce}$"))
        spec += [
            (f"cell_{k}", rf"^(?!adjust_relu_1_|.*_(stem|reduce)_\d+$)(normal|adjust|separable)_\w*_{k}$")
            for k in range(first, first + cells)
        ]
    return spec


VGG = _stages("block{}", 5)
RESNET = _stages("conv{}", 5)
RESNET_V2 = _stages("conv{}", 4) + [("conv5", r"^(conv5_|post_)")]
DENSENET = [
    ("conv1", r"^conv1_"),
    ("conv2", r"^conv2_"), ("pool2", r"^pool2_"),
    ("conv3", r"^conv3_"), ("pool3", r"^pool3_"),
    ("conv4", r"^conv4_"), ("pool4", r"^pool4_"),
    ("conv5", r"^(conv5_|bn$|relu$)"),
]
INCEPTION_V3 = [(f"mixed{i}", rf"^mixed{i}$") for i in range(9)] + [
    ("mixed9", r"^mixed9(_0)?$"),
    ("mixed10", r"^mixed(10|9_1)$"),
]
# The stem ends in mixed_5b, as in the paper; then 10 x Inception-ResNet-A (block35), reduction
# A (mixed_6a), 20 x B (block17), reduction B (mixed_7a), 10 x C (block8), the 1x1 conv_7b.
INCEPTION_RESNET_V2 = [
    ("stem", r"^mixed_5b$"),
    ("block35", r"^block35_"),
    ("mixed_6a", r"^mixed_6a$"),
    ("block17", r"^block17_"),
    ("mixed_7a", r"^mixed_7a$"),
    ("block8", r"^block8_"),
    ("top", r"^conv_7b"),
]
XCEPTION = _stages("block{}", 14)
MOBILENET = [("stem", r"^conv1(_|$)")] + [(f"block_{i}", rf"^conv_(pad|dw|pw)_{i}(_|$)") for i in range(1, 14)]
MOBILENET_V2 = (
    [("stem", r"^(Conv1|bn_Conv1|expanded_conv_)")]
    + _stages("block_{}", 16)
    + [("top", r"^(Conv_1|Conv_1_bn|out_relu)$")]
)
MOBILENET_V3 = (
    [("stem", r"^(conv(_bn)?$|expanded_conv_[a-z])")]
    + [(f"block_{i}", rf"^expanded_conv_{i}_") for i in range(1, 15)]
    + [("top", r"^conv_1(_bn)?$")]
)
# EfficientNet has 7 stages, EfficientNetV2 6 (B0-B3, S) or 7 (M, L): a block no layer matches is left out.
EFFICIENTNET = (
    [("stem", r"^stem_")]
    + [(f"block{i}", rf"^block{i}[a-z]_") for i in range(1, 8)]
    + [("top", r"^top_")]
)
CONVNEXT = [("stem", r"^convnext_[a-z]+_(pre)?stem")] + [
    (f"stage_{i}", rf"^convnext_[a-z]+_(stage_{i}_|downsampling_block_{i - 1}$)") for i in range(4)
]

APPS: dict[str, App] = {
    "vgg16": App("VGG16", "caffe", 224, VGG),
    "vgg19": App("VGG19", "caffe", 224, VGG),
    "resnet50": App("ResNet50", "caffe", 224, RESNET),
    "resnet101": App("ResNet101", "caffe", 224, RESNET),
    "resnet152": App("ResNet152", "caffe", 224, RESNET),
    "resnet50_v2": App("ResNet50V2", "tf", 224, RESNET_V2),
    "resnet101_v2": App("ResNet101V2", "tf", 224, RESNET_V2),
    "resnet152_v2": App("ResNet152V2", "tf", 224, RESNET_V2),
    "inception_v3": App("InceptionV3", "tf", 299, INCEPTION_V3, unnamed="next"),
    "inception_resnet_v2": App("InceptionResNetV2", "tf", 299, INCEPTION_RESNET_V2, unnamed="next"),
    "xception": App("Xception", "tf", 299, XCEPTION),
    "mobilenet": App("MobileNet", "tf", 224, MOBILENET),
    "mobilenet_v2": App("MobileNetV2", "tf", 224, MOBILENET_V2),
    "mobilenet_v3_small": App("MobileNetV3Small", "none", 224, MOBILENET_V3),
    "mobilenet_v3_large": App("MobileNetV3Large", "none", 224, MOBILENET_V3),
    **{
        f"efficientnetb{i}": App(f"EfficientNetB{i}", "none", size, EFFICIENTNET)
        for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
    },
    **{
        f"efficientnetv2{v.lower()}": App(f"EfficientNetV2{v}", "none", size, EFFICIENTNET)
        for v, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384), ("M", 480), ("L", 480))
    },
    "densenet121": App("DenseNet121", "torch", 224, DENSENET),
    "densenet169": App("DenseNet169", "torch", 224, DENSENET),
    "densenet201": App("DenseNet201", "torch", 224, DENSENET),
    "nasnetmobile": App("NASNetMobile", "tf", 224, _nasnet(4)),
    "nasnetlarge": App("NASNetLarge", "tf", 331, _nasnet(6)),
    **{
        f"convnext_{v.lower()}": App(f"ConvNeXt{v}", "none", 224, CONVNEXT)
        for v in ("Tiny", "Small", "Base", "Large", "XLarge")
    },
}


def is_unnamed(layer: keras.layers.Layer) -> bool:
    """Whether Keras named `layer` itself: its class name in snake case, and a counter."""
    return re.fullmatch(re.escape(to_snake_case(type(layer).__name__)) + r"(_\d+)?", layer.name) is not None


def unnamed_layers_joined(model: keras.Model, spec: BlockSpec, direction: str) -> BlockSpec:
    """`spec` with each layer Keras named itself added, by name, to a block of its neighbours.

    Keras names a layer built without a name by a counter that runs over the whole session
    (`conv2d_7`, `batch_normalization_3`), so the same layer of InceptionV3 or Xception gets
    another name when something was built before it, and no regex can place it. Each joins the
    block of the nearest layer the spec places, before it ("previous") or after it ("next"),
    falling back to the other side at either end of the model.
    """
    compiled = [(name, re.compile(pattern)) for name, pattern in spec]
    layers = model.layers
    placed = [
        None if is_unnamed(layer) else next((name for name, rx in compiled if rx.match(layer.name)), None)
        for layer in layers
    ]

    def nearest(order):
        found, last = {}, None
        for i in order:
            found[i] = last
            last = placed[i] or last
        return found

    before, after = nearest(range(len(layers))), nearest(reversed(range(len(layers))))
    first, second = (before, after) if direction == "previous" else (after, before)
    joined: dict[str, list[str]] = {name: [] for name, _ in spec}
    for i, layer in enumerate(layers):
        block = (first[i] or second[i]) if is_unnamed(layer) else None
        if block:
            joined[block].append(re.escape(layer.name))
    return [
        (name, f"(?:{pattern})|(?:(?:{'|'.join(joined[name])})$)" if joined[name] else pattern)
        for name, pattern in spec
    ]


def keras_cache_dir() -> Path:
    """Where `keras.utils.get_file` keeps the applications' weights, decided as it does: Keras'
    home ($KERAS_HOME as it was when Keras was imported, else ~/.keras), or /tmp/.keras when
    that cannot be written."""
    home = Path(keras_home()).expanduser()
    return (home if os.access(home, os.W_OK) else Path("/tmp/.keras")) / "models"


def build_app(name: str, weights: str | None, size: tuple[int, int]) -> keras.Model:
    """The keras.applications model `name` without its top, behind an [0, 255] input and the
    preprocessing it expects; `weights` as Keras takes it (None, "imagenet" or a file)."""
    app = APPS[name]
    inputs = keras.Input((*size, 3), name="image")
    x = preprocessing_layer(app.preprocessing)(inputs)
    constructor = getattr(keras.applications, app.constructor)
    # input_shape beside input_tensor makes Keras check the model's minimum input size
    model = constructor(include_top=False, weights=None, input_tensor=x, input_shape=(*size, 3))
    # Built on input_tensor, the model takes a list of one input and warns at every call with a
    # tensor; the same layers as a model of the tensor itself do not.
    model = keras.Model(inputs, model.output, name=name)
    if weights is not None:
        _copy_weights(constructor(include_top=False, weights=weights, input_shape=(*size, 3)), model)
    return model


def _copy_weights(plain: keras.Model, model: keras.Model) -> None:
    """The weights of `plain`, the application as Keras builds it, into `model`, the same layers
    behind tlkit's preprocessing. Keras' files (its legacy .h5, which `weights="imagenet"` gets,
    and .weights.h5) hold the application's layers alone: a caffe preprocessing is a frozen Dense
    layer, one weighted layer more than the file, so the file is loaded into `plain` and copied
    layer by layer, in order."""
    source = [layer for layer in plain.layers if layer.weights]
    target = [layer for layer in model.layers if layer.weights and layer.name != PREPROCESSING]

    def key(layer):  # the counter in a name Keras gave (conv2d_7) depends on what was built before
        return "" if is_unnamed(layer) else layer.name, type(layer).__name__, [w.shape for w in layer.weights]

    if [key(layer) for layer in source] != [key(layer) for layer in target]:
        raise ValueError(f"the layers of keras.applications.{plain.name} differ from the base's")
    for src, dst in zip(source, target):
        dst.set_weights(src.get_weights())


def load_app(name: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None) -> Base:
    """The base `name`; `weights` is "imagenet", "none" or a weights file, as --weights takes it."""
    app = APPS[name]
    size = image_size or (app.size, app.size)
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise TlkitError(f"weights file {weights} does not exist; pass a path, 'imagenet' or 'none'")
    file = weights not in ("imagenet", "none")
    if file:
        check_weights_file(Path(weights))
    try:
        model = build_app(name, None if weights == "none" else weights, size)
    except (ValueError, OSError) as err:
        if file and (isinstance(err, OSError) or "weight" in str(err).lower() or "layer" in str(err).lower()):
            raise TlkitError(f"weights file {weights} does not fit base {name}: {' '.join(str(err).split())[:300]}"
                             ) from err
        raise TlkitError(f"base {name} cannot take images of {size[0]}x{size[1]}: {err}") from err
    except Exception as err:  # get_file raises a bare Exception when the download fails
        if "fetch failure" not in str(err) and "URL" not in str(err):
            raise
        raise TlkitError(f"cannot download the ImageNet weights of {name} (no network?): {_fetch_hint(name)}") from err
    blocks = build_block_map(model, unnamed_layers_joined(model, app.blocks, app.unnamed))
    return Base(name, model, blocks, size, "keras", weights)


def check_weights_file(path: Path) -> None:
    """A --weights file must be HDF5 (Keras' .h5 and .weights.h5 both are): anything else is named
    before Keras tries it. HDF5 holds arrays only, never code."""
    import h5py

    try:
        ok = h5py.is_hdf5(path)
    except OSError as err:
        raise TlkitError(f"cannot read weights file {path}: {err.strerror or err}") from err
    if not ok:
        raise TlkitError(f"weights file {path} is not an HDF5 file (.h5 or .weights.h5 from Keras' save_weights): "
                         "pass such a file, 'imagenet' or 'none'")
    if not str(path).endswith(".h5"):
        raise TlkitError(f"weights file {path} must be named *.h5 or *.weights.h5 (Keras tells the format by name)")


def _fetch_hint(name: str) -> str:
    file = load_catalog()[name].weights
    return (
        f"download {file.origin} elsewhere and run `tlkit bases import {name} FILE` (or put it in "
        f"{keras_cache_dir() / file.file}), or pass --weights PATH or --weights none"
    )


def weights_status(name: str, weights: str) -> str:
    """Whether the ImageNet weights of `name` are in Keras' cache, for `tlkit bases`."""
    if weights != "imagenet":
        return "random initialisation" if weights == "none" else f"file {weights}"
    file = load_catalog()[name].weights.file
    return "cached" if (keras_cache_dir() / file).is_file() else f"download {file}"


for _name, _app in APPS.items():
    BASES.add(
        _name,
        BaseSpec(_name, "keras", (_app.size, _app.size), partial(load_app, _name), partial(weights_status, _name)),
    )
