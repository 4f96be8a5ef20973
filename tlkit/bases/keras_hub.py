"""KerasHub backbones as bases: `--base keras_hub:PRESET`.

PRESET is a KerasHub preset name (`vit_base_patch16_224_imagenet`, `resnet_50_imagenet`, ...; see
`tlkit bases`), which `keras_hub.models.Backbone.from_preset` downloads from Kaggle into
KaggleHub's cache ($KAGGLEHUB_CACHE, by default ~/.cache/kagglehub), or a local preset folder
written by `save_to_preset`, which works offline. A preset's `image_converter.json` (saved beside
the backbone by `ImageConverter.save_to_preset`, as every image preset ships it) gives the
preprocessing, a Rescaling layer inside the base; without one the base scales to [0, 1].

The backbone's layers are laid out flat in the base, so that its blocks are layers of their own:
- a ViT (`ViTBackbone`): the patch embedding, then each encoder layer a block (the last with the
  final LayerNormalization), and the class token as the features (B, d), as KerasHub's
  ViTImageClassifier pools;
- a functional CNN (ResNet, ResNet-vd, ...): its stem, then one block per stage, told by the
  `stack<i>_` / `stage<i>_` / `block<i>_` prefix of its layer names; the feature map is its output.
Any other backbone is a single block. LayerNormalization trains wherever its block is unfrozen;
BatchNormalization stays frozen in inference mode, as on every base (`set_trainable_top`).

A run's model.keras holds KerasHub's layers: loading it imports keras_hub (tlkit.rundir.load).
"""
from __future__ import annotations

import logging
import re
import textwrap
from functools import partial
from pathlib import Path

import keras

from tlkit._util.keras_internals import is_functional, run_through_graph
from tlkit.bases._registry import Base
from tlkit.errors import TlkitError, unknown_name
from tlkit.models.blocks import BlockSpec, build_block_map, single_block
from tlkit.models.preprocessing import NAME as PREPROCESSING
from tlkit.recipe.base_names import KERAS_HUB_PREFIX

log = logging.getLogger(__name__)
PREFIX = KERAS_HUB_PREFIX
DEFAULT_SIZE = 224
# the image backbones whose presets `tlkit bases` lists: KerasHub's class names
LISTED = ("ViTBackbone", "ResNetBackbone")
_STAGE = re.compile(r"(?:stack|stage|block)_?(\d+)_")


def _keras_hub():
    try:
        import keras_hub
    except ImportError as err:
        raise TlkitError("keras_hub: bases need keras-hub: pip install 'tlkit[keras_hub]'") from err
    return keras_hub


def known_presets() -> dict[str, list[str]]:
    """The presets KerasHub knows for each backbone class whose blocks tlkit maps."""
    keras_hub = _keras_hub()
    return {name: sorted(getattr(keras_hub.models, name).presets) for name in LISTED}


def listing_lines() -> list[str]:
    """What `tlkit bases` says of keras_hub: bases, with the presets it knows."""
    lines = ["  keras_hub:PRESET  a KerasHub preset name, or a preset folder written by save_to_preset (offline);",
             "               blocks: a ViT's encoder layers, a CNN's stages. Known presets:"]
    try:
        presets = known_presets()
    except TlkitError as err:
        return [*lines, f"               ({err})"]
    for family, names in presets.items():
        lines += textwrap.wrap(", ".join(names), 100, initial_indent=f"    {family.removesuffix('Backbone')}: ",
                               subsequent_indent="      ")
    return lines


def _offline_hint(preset: str) -> str:
    return (f"where there is network, run `python -c \"import keras_hub as h; "
            f"h.models.Backbone.from_preset('{preset}').save_to_preset('{preset}'); "
            f"h.layers.ImageConverter.from_preset('{preset}').save_to_preset('{preset}')\"`, copy the folder "
            f"{preset} here and pass --base keras_hub:./{preset}")


def load_backbone(preset: str, weights: str):
    """The KerasHub backbone of `preset` (a folder or a name) and its ImageConverter, or None."""
    keras_hub = _keras_hub()
    local = Path(preset).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise TlkitError(f"{local} is not a KerasHub preset folder (no config.json in it): write one with "
                             "`backbone.save_to_preset(FOLDER)`")
        preset = str(local.resolve())
    elif "/" in preset and "://" not in preset:  # kaggle://, hf:// handles go to KerasHub as they are
        raise TlkitError(f"no KerasHub preset folder {preset}: pass keras_hub:FOLDER (written by save_to_preset) "
                         "or a preset name (see `tlkit bases`)")
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=weights != "none")
    except OSError as err:  # requests' ConnectionError is an OSError: no network
        raise TlkitError(f"cannot download the KerasHub preset {preset} (no network?): {_offline_hint(preset)}"
                         ) from err
    except ValueError as err:
        if "Unknown preset" in str(err):
            names = [p for presets in known_presets().values() for p in presets]
            raise unknown_name("KerasHub preset", preset, names, hint="or pass keras_hub:FOLDER") from err
        raise TlkitError(f"cannot load the KerasHub preset {preset}: {' '.join(str(err).split())[:300]}") from err
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except (FileNotFoundError, ValueError):
        log.warning("the KerasHub preset %s has no image_converter.json: its base scales images to [0, 1]", preset)
        converter = None
    return backbone, converter


def _preprocessing(converter) -> keras.layers.Layer:
    """The converter's `x * scale + offset` of [0, 255] pixels, as a core Keras layer."""
    scale, offset = (1 / 255, 0.0) if converter is None else (converter.scale, converter.offset)

    def plain(value):
        return [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value if value is not None else 0)

    return keras.layers.Rescaling(plain(scale if scale is not None else 1.0), offset=plain(offset), name=PREPROCESSING)


def _vit(backbone, x):
    """A ViT's layers one by one (ViTEncoder runs them in its own `call`); the class token out."""
    from tlkit.models.keras_hub_layers import called_copy  # imports keras_hub

    encoder = backbone.get_layer("vit_encoder")
    x = called_copy(backbone.get_layer("vit_patching_and_embedding"), x)
    x = encoder.dropout(x)
    for layer in encoder.encoder_layers:
        x = called_copy(layer, x)
    x = encoder.layer_norm(x)
    tokens, width = x.shape[1:]
    x = keras.layers.Cropping1D((0, tokens - 1), name="class_token")(x)
    spec = [("embedding", "vit_patching_and_embedding$")]
    last = len(encoder.encoder_layers)
    spec += [(f"block{i + 1}", f"{re.escape(layer.name)}$" + (f"|{re.escape(encoder.layer_norm.name)}$" if i + 1 == last else ""))
             for i, layer in enumerate(encoder.encoder_layers)]
    return keras.layers.Reshape((width,), name="features")(x), spec


def _stages(model: keras.Model) -> BlockSpec:
    """The stem (what comes before the first stage), then one block per numbered stage; layers
    after the last stage (a final norm) join it."""
    members: dict[str, list[str]] = {}
    block, stage = "stem", None
    for layer in model.layers[2:]:  # after the input and the preprocessing
        match = _STAGE.match(layer.name)
        if match and match.group(1) != stage:
            stage = match.group(1)
            block = f"stage{len(members)}"  # counted from 1, after the stem
        members.setdefault(block, []).append(layer.name)
    if len(members) < 3:  # no stages told apart: one block
        return []
    return [(name, "^(?:" + "|".join(map(re.escape, names)) + ")$") for name, names in members.items()]


def load_keras_hub(preset: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None) -> Base:
    """The backbone of `preset` as a base taking [0, 255] images (see the module)."""
    if weights not in ("imagenet", "none"):
        raise TlkitError(f"a keras_hub: base brings its preset's weights: pass --weights imagenet or none, not {weights}")
    backbone, converter = load_backbone(preset, weights)
    fixed = tuple(backbone.input_shape[1:3])
    fixed = fixed if all(fixed) else None
    size = tuple(image_size or fixed or (converter and converter.image_size) or (DEFAULT_SIZE, DEFAULT_SIZE))
    if fixed and size != fixed:
        raise TlkitError(f"the KerasHub preset {preset} takes {fixed[0]}x{fixed[1]} images only: "
                         f"pass --image-size {fixed[0]}")
    inputs = keras.Input((*size, 3), name="image")
    x = _preprocessing(converter)(inputs)
    name = "keras_hub_" + re.sub(r"[^A-Za-z0-9]+", "_", Path(preset).name)
    spec: BlockSpec = []
    if type(backbone).__name__ == "ViTBackbone":
        features, spec = _vit(backbone, x)
    elif is_functional(backbone):
        from tlkit.models.keras_hub_layers import called_copy  # imports keras_hub

        # copies of the backbone's layers, called on the base's graph alone: a layer called on two
        # graphs (the backbone's and the base's) has no one output, which cutting the base needs
        features = run_through_graph(backbone, x, lambda layer: partial(called_copy, layer))
    else:
        features = backbone(x)
    if len(features.shape) not in (2, 4):
        raise TlkitError(f"the KerasHub backbone of {preset} returns shape {features.shape}, not features "
                         "(B, d) or (B, h, w, c)")
    model = keras.Model(inputs, features, name=name)
    spec = spec or (_stages(model) if is_functional(backbone) else [])
    blocks = build_block_map(model, spec) if spec else single_block(model)
    if not spec:
        log.warning("%s (%s): no block map for this backbone, a single block", preset, type(backbone).__name__)
    source = str(Path(preset).resolve()) if Path(preset).expanduser().is_dir() else preset
    return Base(name, model, blocks, size, "keras_hub", "none" if weights == "none" else source)
