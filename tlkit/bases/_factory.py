"""`load_base`: a base from any spec string, a registered name or one of the sources that are
not names (`hub:HANDLE`, a `.keras` file, a run directory)."""
from __future__ import annotations

from tlkit.bases import hub, keras_hub, local
from tlkit.bases._registry import BASES, Base
from tlkit.errors import TlkitError
from tlkit.recipe.base_names import base_source


def load_base(spec: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None,
              base_layer: str | None = None, hub_range: str | None = None) -> Base:
    """Load a base: `hub:HANDLE` (tlkit.bases.hub), `keras_hub:PRESET` (tlkit.bases.keras_hub), a registered name (`vgg16`,
    `efficientnet_lite0`, `resnet18`, ...), or a .keras file or run directory (tlkit.bases.local).

    `base_layer` cuts the base at that layer; `hub_range` is the pixel range a hub base expects.
    """
    source = base_source(spec, BASES)
    if hub_range and source != "hub":
        raise TlkitError(f"--hub-range is for hub: bases, not {spec}")
    if source == "hub":
        if base_layer:
            raise TlkitError("a hub: base is a single layer and cannot be cut: drop --base-layer")
        return hub.load_hub(spec.removeprefix(hub.PREFIX), weights, image_size, hub_range)
    if source == "keras_hub":
        if base_layer:
            raise TlkitError("--base-layer is for bases of files and names, not keras_hub: presets: drop it")
        return keras_hub.load_keras_hub(spec.removeprefix(keras_hub.PREFIX), weights, image_size)
    if source == "path":
        return local.load_local(spec, weights, image_size, base_layer)
    base = BASES.get(spec).load(weights, image_size)
    return local.cut_base(base, base_layer) if base_layer else base
