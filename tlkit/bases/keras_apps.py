"""Every `keras.applications` model as a base, by a lowercase name.

ImageNet weights come through Keras' own `get_file` download and cache (~/.keras/models, or
$KERAS_HOME/models); offline with no cached file, loading fails with one line naming the file and
the folder to put it in.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import keras

from tlkit.bases import BASES, Base, BaseSpec
from tlkit.bases.preprocessing import ImagePreprocessing
from tlkit.blocks import BlockSpec, build_block_map
from tlkit.errors import TlkitError


@dataclass(frozen=True)
class App:
    constructor: str  # attribute of keras.applications
    preprocessing: str  # an ImagePreprocessing mode
    size: int  # default input side
    blocks: BlockSpec


def _stages(prefix_fmt: str, n: int, first: int = 1, top: str | None = None) -> BlockSpec:
    blocks = [(prefix_fmt.format(i), "^" + re.escape(prefix_fmt.format(i)) + "_") for i in range(first, first + n)]
    return blocks + ([("top", top)] if top else [])


VGG = _stages("block{}", 5)
RESNET = [("conv1", r"^conv1_")] + _stages("conv{}", 4, first=2)
RESNET_V2 = [("conv1", r"^conv1_")] + _stages("conv{}", 4, first=2) + [("top", r"^post_")]
MOBILENET_V2 = (
    [("stem", r"^(Conv1|bn_Conv1|expanded_conv_)")]
    + _stages("block_{}", 16)
    + [("top", r"^(Conv_1|Conv_1_bn|out_relu)$")]
)

APPS: dict[str, App] = {
    "vgg16": App("VGG16", "caffe", 224, VGG),
    "vgg19": App("VGG19", "caffe", 224, VGG),
    "resnet50": App("ResNet50", "caffe", 224, RESNET),
    "resnet101": App("ResNet101", "caffe", 224, RESNET),
    "resnet152": App("ResNet152", "caffe", 224, RESNET),
    "resnet50_v2": App("ResNet50V2", "tf", 224, RESNET_V2),
    "resnet101_v2": App("ResNet101V2", "tf", 224, RESNET_V2),
    "resnet152_v2": App("ResNet152V2", "tf", 224, RESNET_V2),
    "mobilenet_v2": App("MobileNetV2", "tf", 224, MOBILENET_V2),
}


class _WeightsURL:
    """Keras' get_file error names the URL it could not fetch; find it to name the file."""

    url = re.compile(r"https?://[^\s:]+(?::\d+)?/\S+?(?=[\s:]|$)")

    @classmethod
    def file_name(cls, message: str) -> str | None:
        match = cls.url.search(message)
        return match.group(0).rsplit("/", 1)[-1] if match else None


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def load_app(name: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None) -> Base:
    app = APPS[name]
    size = image_size or (app.size, app.size)
    inputs = keras.Input((*size, 3), name="image")
    x = ImagePreprocessing(app.preprocessing, name="preprocessing")(inputs)
    kind = weights if weights in ("imagenet", "none") else "file"
    constructor = getattr(keras.applications, app.constructor)
    try:
        model = constructor(
            include_top=False, weights="imagenet" if kind == "imagenet" else None, input_tensor=x
        )
    except ValueError as err:
        raise TlkitError(f"base {name} cannot take images of {size[0]}x{size[1]}: {err}") from err
    except Exception as err:  # get_file raises a bare Exception when the download fails
        if "fetch failure" not in str(err) and "URL" not in str(err):
            raise
        file = _WeightsURL.file_name(str(err)) or "the weights file"
        raise TlkitError(
            f"cannot download the ImageNet weights of {name} (no network?): put {file} in "
            f"{keras_cache_dir()}, or pass --weights PATH or --weights none"
        ) from err
    if kind == "file":
        path = Path(weights)
        if not path.is_file():
            raise TlkitError(f"weights file {weights} does not exist; pass a path, 'imagenet' or 'none'")
        model.load_weights(path)
    model.name = name
    return Base(name, model, build_block_map(model, app.blocks), size, "keras", weights)


for _name, _app in APPS.items():
    BASES.add(
        _name,
        BaseSpec(
            _name,
            "keras",
            (_app.size, _app.size),
            lambda weights, image_size, _name=_name: load_app(_name, weights, image_size),
        ),
    )
