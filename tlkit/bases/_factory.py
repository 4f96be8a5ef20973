"""`load_base`: a base from any spec string, a registered name or one of the sources that are
not names (`hub:HANDLE`, a `.keras` file, a run directory)."""
from __future__ import annotations

import os
from pathlib import Path

from tlkit.bases import hub, local
from tlkit.bases._registry import BASES, Base
from tlkit.errors import TlkitError


def load_base(spec: str, weights: str = "imagenet", image_size: tuple[int, int] | None = None,
              base_layer: str | None = None, hub_range: str | None = None) -> Base:
    """Load a base: `hub:HANDLE` (tlkit.bases.hub), a registered name (`vgg16`,
    `efficientnet_lite0`, `resnet18`, ...), or a .keras file or run directory (tlkit.bases.local).

    `base_layer` cuts the base at that layer; `hub_range` is the pixel range a hub base expects.
    """
    if hub_range and not spec.startswith(hub.PREFIX):
        raise TlkitError(f"--hub-range is for hub: bases, not {spec}")
    if spec.startswith(hub.PREFIX):
        if base_layer:
            raise TlkitError("a hub: base is a single layer and cannot be cut: drop --base-layer")
        return hub.load_hub(spec.removeprefix(hub.PREFIX), weights, image_size, hub_range)
    if spec not in BASES and Path(spec).exists():
        return local.load_local(spec, weights, image_size, base_layer)
    if spec not in BASES and ("/" in spec or os.sep in spec or spec.endswith(".keras")):
        raise TlkitError(
            f"base {spec} does not exist: pass a .keras file, a run directory, hub:HANDLE or a base name "
            "(see `tlkit bases`)"
        )
    base = BASES.get(spec).load(weights, image_size)
    return local.cut_base(base, base_layer) if base_layer else base
