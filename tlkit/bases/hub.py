"""TF Hub models and local TF2 SavedModels as bases: `--base hub:HANDLE`.

HANDLE is a local SavedModel folder (used as it is, no network needed) or a tfhub.dev / Kaggle
model URL, which `tensorflow_hub.resolve` downloads into its cache ($TFHUB_CACHE_DIR, by default
a folder under the system's temporary directory). Keras 3 runs the SavedModel through
`keras.layers.TFSMLayer`: `hub.KerasLayer` is a Keras 2 layer and cannot join a Keras 3 model.

A SavedModel is one opaque layer, so a hub base is a single block: fine-tuning trains all of it
or nothing. TF Hub image models take RGB images in [0, 1] (some in [-1, 1]: `--hub-range`), at a
size of their own or any size (`--image-size`, default 224 unless the SavedModel fixes one).

A classifier with a hub base keeps, in its `.keras` file, the path of the SavedModel (whose
graph it runs) and its own, trained values of the SavedModel's variables: the folder must stay
where it was. Keras will not load such a file in safe mode, since the graph is a program from
outside the file; tlkit loads it when you trust that SavedModel: one loaded as a base in the same
process, or one inside a folder listed in $TLKIT_TRUSTED_SAVEDMODELS (os.pathsep-separated).
"""
from __future__ import annotations

import re
from pathlib import Path

import keras

from tlkit.bases._registry import Base
from tlkit.errors import TlkitError, unknown_name
from tlkit.models.blocks import single_block
from tlkit.models.layers import HubLayer, trust_savedmodel
from tlkit.models.preprocessing import preprocessing_layer
from tlkit.recipe.base_names import HUB_PREFIX

PREFIX = HUB_PREFIX
RANGES = {"0,1": "unit", "-1,1": "tf", "0,255": "none"}  # --hub-range -> preprocessing mode
DEFAULT_SIZE = 224
def resolve_handle(handle: str) -> Path:
    """The local folder of the SavedModel `handle` (a folder, or a URL tensorflow_hub downloads)."""
    path = Path(handle).expanduser()
    if not path.is_dir():
        import tensorflow_hub

        try:
            path = Path(tensorflow_hub.resolve(handle))
        except (OSError, ValueError) as err:
            if "://" not in handle:
                raise TlkitError(
                    f"no SavedModel folder {handle}: pass hub:FOLDER (a TF2 SavedModel) or a tfhub.dev or "
                    "Kaggle model URL"
                ) from err
            raise TlkitError(
                f"cannot download the TF Hub model {handle} ({err}): download it where there is network, "
                "unpack it and pass --base hub:FOLDER, or set TFHUB_CACHE_DIR to a cache that holds it"
            ) from err
    if not (path / "saved_model.pb").is_file():
        raise TlkitError(f"{path} is not a TF2 SavedModel folder (no saved_model.pb in it)")
    return path.resolve()


def hub_layer(path: Path) -> HubLayer:
    """The SavedModel's `__call__` (TF2 hub models, "reusable SavedModels"), else its
    serving_default signature; in float32, the precision its graph was saved in, under mixed
    precision too."""
    try:
        return HubLayer(str(path), call_endpoint="__call__", name="hub", dtype="float32")
    except ValueError:
        try:
            return HubLayer(str(path), call_endpoint="serving_default", name="hub", dtype="float32")
        except ValueError as err:
            raise TlkitError(f"the SavedModel {path} has neither __call__ nor a serving_default signature") from err


def fixed_size(layer: HubLayer) -> tuple[int, int] | None:
    """The (height, width) the SavedModel's endpoint is traced for, if it fixes one."""
    function = layer.call_endpoint_fn
    concrete = getattr(function, "concrete_functions", None) or [function]
    args, kwargs = concrete[0].structured_input_signature
    spec = args[0] if args else next(iter(kwargs.values()))
    height, width = spec.shape[1:3]
    return (height, width) if height and width else None


def load_hub(handle: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None,
             value_range: str | None = None) -> Base:
    """The SavedModel `handle` as a base taking [0, 255] images, scaled inside to `value_range`."""
    if weights != "imagenet":
        raise TlkitError(f"a hub: base brings its own weights: drop --weights {weights}")
    value_range = value_range or "0,1"
    if value_range not in RANGES:
        raise unknown_name("--hub-range", value_range, RANGES)
    path = resolve_handle(handle)
    trust_savedmodel(path)
    try:
        layer = hub_layer(path)
    except TlkitError:
        raise
    except Exception as err:  # protobuf's DecodeError, TensorFlow's errors: a corrupt or foreign SavedModel
        raise TlkitError(f"cannot load the SavedModel {path}: its saved_model.pb or variables are corrupt or not a "
                         f"TF2 SavedModel ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from err
    fixed = fixed_size(layer)
    size = image_size or fixed or (DEFAULT_SIZE, DEFAULT_SIZE)
    if fixed and tuple(size) != fixed:
        raise TlkitError(f"the SavedModel {path} takes {fixed[0]}x{fixed[1]} images only: pass --image-size {fixed[0]}")
    inputs = keras.Input((*size, 3), name="image")
    x = preprocessing_layer(RANGES[value_range])(inputs)
    try:
        features = layer(x)
    except (ValueError, TypeError) as err:
        raise TlkitError(f"the SavedModel {path} cannot take a batch of {size[0]}x{size[1]} RGB images: {err}") from err
    if len(features.shape) not in (2, 4):
        raise TlkitError(f"the SavedModel {path} returns shape {features.shape}, not features (B, d) or (B, h, w, c)")
    parts = handle.split("://")[-1].rstrip("/").split("/")
    name = "hub_" + re.sub(r"[^A-Za-z0-9]+", "_", "_".join(parts[-3:] if "://" in handle else parts[-1:]))
    model = keras.Model(inputs, features, name=name)
    return Base(name, model, single_block(model), size, "hub", str(path))
