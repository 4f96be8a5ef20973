"""Bases from local files: a Keras model file, a run directory, a base directory.

- `FILE.keras`: any Keras model that takes [0, 255] RGB images (its preprocessing inside, as in
  every tlkit model), cut before its classifier: at the last layer that outputs a feature map
  (what the classifier pools or flattens; as `include_top=False` cuts keras.applications models),
  or, in a model without feature maps, at the input of its last Dense layer. A tlkit classifier
  (the model.keras of a run) gives its nested "base". Blocks: the blocks.json beside the file,
  if there is one, else a single block.
- a run directory of `tlkit finetune`: the base inside its model.keras, with its blocks.json.
- a run directory of `tlkit train`: the zoo model of its recipe, with the weights it learned
  (`tlkit.bases.zoo`); the trained top is left out.
- a base directory (the autoencoder path writes one): base.keras, a features model,
  blocks.json, and optionally base.json ({"pooling": NAME, "why": TEXT}: the head pooling the
  base asks for, which --pooling overrides).

`--base-layer NAME` cuts any base at that layer instead (its output becomes the features); the
blocks after it go.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import keras

import tlkit.models.layers  # noqa: F401  (registers tlkit's layers, which a model file may hold)
import tlkit.models.preprocessing  # noqa: F401  (likewise)
from tlkit.bases._registry import Base
from tlkit.bases.zoo import load_zoo
from tlkit.errors import TlkitError, unknown_name
from tlkit.models.blocks import Block, build_block_map, single_block
from tlkit.models.features import features_in, nested_base
from tlkit.recipe.schema import POOLINGS, Recipe
from tlkit.rundir.files import RunDir
from tlkit.rundir.load import model_file_error, register_keras_hub

META_FILE = "base.json"


def load_local(path: str | Path, weights: str = "imagenet", image_size: tuple[int, int] | None = None,
               base_layer: str | None = None) -> Base:
    """The base in the file or folder `path` (see the module)."""
    path = Path(path)
    if weights != "imagenet":
        raise TlkitError(f"the base {path} brings its own weights: drop --weights {weights}")
    file = path
    if path.is_dir():
        if RunDir(path).base.is_file():
            base = _finish(path, _load_keras(RunDir(path).base), RunDir(path).blocks, image_size, base_layer)
            return replace(base, pooling=_pooling(path / META_FILE)) if (path / META_FILE).is_file() else base
        recipe = _train_recipe(path)
        if recipe:
            size = image_size or ((recipe.image_size,) * 2 if recipe.image_size else None)
            base = load_zoo(recipe.base, str(path), size)
            return cut_base(base, base_layer) if base_layer else base
        file = RunDir(path).model
        if not file.is_file():
            raise TlkitError(
                f"{path} holds no base: pass a .keras file, a run directory of `tlkit finetune` or `tlkit train`, "
                f"or a folder with {RunDir.BASE} and {RunDir.BLOCKS}"
            )
    model = _load_keras(file)
    nested = nested_base(model)
    if nested:
        model = nested
    elif not base_layer:
        features = features_in(model, pooled=False)
        if features is None:
            raise TlkitError(f"cannot tell where the classifier of {file} begins: pass --base-layer NAME")
        model = keras.Model(_image_input(model), features)
    return _finish(path, model, RunDir(file.parent).blocks, image_size, base_layer)


def _finish(path: Path, model: keras.Model, blocks_file: Path, image_size, base_layer) -> Base:
    """The Base of the features model `model` loaded from `path`: cut, its blocks, its size."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.resolve().name)
    model = cut_model(model, base_layer, name) if base_layer else model
    model.name = name
    blocks = blocks_from_file(model, blocks_file) if blocks_file.is_file() else single_block(model)
    source = "file" if path.is_file() else "run"
    base = Base(name, model, blocks, _size(model) or image_size or (224, 224), source, str(path))
    return resized(base, image_size) if image_size else base


def _pooling(path: Path) -> tuple[str, str]:
    """The head pooling a base directory's base.json asks for, and why."""
    try:
        meta = json.loads(path.read_text())
        pooling, why = meta["pooling"], meta.get("why", f"as {path} says")
    except (ValueError, KeyError, TypeError) as err:
        raise TlkitError(f"{path} is not a base's metadata ({{\"pooling\": NAME, \"why\": TEXT}}): {err}") from err
    if pooling not in POOLINGS:
        raise TlkitError(f"{path} asks for pooling {pooling!r}: choose one of {', '.join(POOLINGS)}, or delete it")
    return pooling, why


def _train_recipe(path: Path):
    """The recipe of a run directory of `tlkit train` (a zoo model from scratch), else None."""
    if not RunDir(path).recipe.is_file():
        return None
    recipe = Recipe.load(RunDir(path).recipe)
    return recipe if any(stage.kind == "train" for stage in recipe.stages) else None


def _load_keras(path: Path) -> keras.Model:
    try:
        register_keras_hub(path)
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except TlkitError:
        raise
    except Exception as err:  # Keras raises ValueError, TypeError, OSError, ... for a bad file
        raise model_file_error(path, err) from err


def _image_input(model: keras.Model):
    """The one input of `model` as a tensor (a list of one would make every call warn)."""
    if len(model.inputs) != 1:
        raise TlkitError(f"a base takes one input, images; {model.name} takes {len(model.inputs)}")
    return model.inputs[0]


def _size(model: keras.Model) -> tuple[int, int] | None:
    height, width = model.input_shape[1:3]
    return (height, width) if height and width else None


def blocks_from_file(model: keras.Model, path: Path) -> list[Block]:
    """The block map in `path` ({block: [layer names]}; JSON object keys carry no order, so the
    blocks are put in the order of their layers in `model`). Blocks whose layers are not in
    `model` are left out."""
    position = {layer.name: i for i, layer in enumerate(model.layers)}
    try:
        members = {
            name: [layer for layer in layers if layer in position] for name, layers in json.loads(path.read_text()).items()
        }
    except (ValueError, AttributeError, TypeError) as err:
        raise TlkitError(f"{path} is not a block map ({{block: [layer names]}}): {err}") from err
    spec = sorted(
        ((name, "^(?:" + "|".join(map(re.escape, layers)) + ")$") for name, layers in members.items() if layers),
        key=lambda block: min(position[layer] for layer in members[block[0]]),
    )
    try:
        return build_block_map(model, spec)
    except ValueError as err:
        raise TlkitError(f"{path} does not fit the model beside it: {err}") from err


def cut_model(model: keras.Model, layer_name: str, name: str) -> keras.Model:
    """`model` up to its layer `layer_name`, whose output becomes the features."""
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        raise unknown_name(f"layer of base {name}", layer_name, names, hint="see `tlkit inspect --arch BASE`")
    return keras.Model(_image_input(model), model.get_layer(layer_name).output, name=model.name)


def cut_base(base: Base, layer_name: str) -> Base:
    """`base` cut at its layer `layer_name`, with the blocks up to it."""
    model = cut_model(base.model, layer_name, base.name)
    kept = {layer.name for layer in model.layers}
    blocks = [Block(b.name, tuple(n for n in b.layers if n in kept)) for b in base.blocks]
    return Base(base.name, model, [b for b in blocks if b.layers], base.input_size, base.source, base.weights)


def resized(base: Base, size: tuple[int, int]) -> Base:
    """`base` taking images of `size`: the same layers (and weights) called on a new input."""
    if _size(base.model) in (None, tuple(size)):
        return Base(base.name, base.model, base.blocks, tuple(size), base.source, base.weights, base.pooling)
    inputs = keras.Input((*size, base.channels), name=base.model.layers[0].name)
    try:
        model = keras.models.clone_model(
            base.model, input_tensors=[inputs] if isinstance(base.model.input, list) else inputs,
            clone_function=lambda layer: layer,
        )
    except ValueError as err:
        raise TlkitError(f"base {base.name} cannot take images of {size[0]}x{size[1]}: {err}") from err
    model.name = base.model.name
    return Base(base.name, model, base.blocks, tuple(size), base.source, base.weights, base.pooling)
