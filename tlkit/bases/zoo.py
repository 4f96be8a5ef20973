"""The classic zoo (tlkit.models) as bases: `--base resnet18 --weights none`, or with a checkpoint.

Zoo names that keras.applications also has (vgg16, vgg19, resnet50) stay keras.applications
bases, whose ImageNet weights exist; the zoo builds of those are `zoo:vgg16` and so on.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import keras

from tlkit.bases._registry import BASES, Base, BaseSpec
from tlkit.bases.keras_apps import check_weights_file
from tlkit.errors import TlkitError
from tlkit.models import ZOO, Arch
from tlkit.models.blocks import build_block_map
from tlkit.models.preprocessing import preprocessing_layer
from tlkit.rundir.load import load_run

PREFIX = "zoo:"


def zoo_input(arch: Arch, image_size: tuple[int, int] | None):
    """The Input and the [0, 1] scaling that zoo models are trained on, ahead of the arch."""
    height, width, channels = arch.input_shape
    inputs = keras.Input((*(image_size or (height, width)), channels), name="image")
    return inputs, preprocessing_layer("unit")(inputs)


def load_zoo(key: str, weights: str, image_size: tuple[int, int] | None) -> Base:
    """The zoo model registered as base `key` (`resnet18` or `zoo:resnet18`)."""
    name = key.removeprefix(PREFIX)
    arch = ZOO.get(name)
    if weights == "imagenet":
        raise TlkitError(
            f"the zoo model {name} has no ImageNet weights: pass --weights none to start from random "
            "weights, or --weights PATH (a weights file, or a run directory of `tlkit train`)"
        )
    _, x = zoo_input(arch, image_size)
    try:
        model = arch.build(include_top=False, weights=None, input_tensor=x)
    except ValueError as err:
        raise TlkitError(f"base {name} cannot take images of {image_size}: {err}") from err
    if weights != "none":
        load_zoo_weights(model, Path(weights))
    return Base(key, model, build_block_map(model, arch.blocks), arch.input_shape[:2], "zoo", weights)


def load_zoo_weights(model: keras.Model, path: Path) -> None:
    """Weights from a weights file, or from the model of a `tlkit train` run (matched by layer
    name, so the trained top is left out)."""
    if path.is_dir():
        trained = load_run(path).model
        for layer in model.layers:
            if layer.weights:
                layer.set_weights(trained.get_layer(layer.name).get_weights())
    elif path.is_file():
        check_weights_file(path)
        try:
            model.load_weights(path, skip_mismatch=False)
        except (ValueError, OSError, KeyError) as err:
            raise TlkitError(f"weights file {path} does not fit {model.name}: {' '.join(str(err).split())[:300]}"
                             ) from err
    else:
        raise TlkitError(f"weights {path} do not exist: pass a weights file or a run directory of `tlkit train`")


for _name, _arch in ZOO.items():
    for _key in ([_name] if _name not in BASES else []) + [PREFIX + _name]:
        BASES.add(_key, BaseSpec(_key, "zoo", _arch.input_shape[:2], partial(load_zoo, _key)))
