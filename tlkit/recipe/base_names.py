"""What a `--base` spec names, read in one place (`base_source`), and the catalogue of registered
bases (tlkit/bases/catalog.json): for every base its source,
default input size, parameter count, block names and, for a keras.applications base, the
ImageNet weights file Keras downloads (name, origin, hash), so that `tlkit bases` and the offline
hints need not build each base, and a base name is checked without TensorFlow. `tlkit.bases.listing`
writes it and lists it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Container
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from tlkit.errors import TlkitError

CATALOG_FILE = Path(__file__).parent.parent / "bases" / "catalog.json"
HUB_PREFIX = "hub:"  # `--base hub:HANDLE`: a TF Hub handle or SavedModel folder, not a catalogued name
KERAS_HUB_PREFIX = "keras_hub:"  # `--base keras_hub:PRESET`: a KerasHub preset name or folder


@dataclass(frozen=True)
class WeightsFile:
    file: str  # its name in Keras' cache folder
    origin: str  # the URL Keras downloads it from
    hash: str | None  # md5 or sha256 (by its length, as Keras' validate_file reads it); None: Keras has none


@dataclass(frozen=True)
class Entry:
    source: str
    size: tuple[int, int]
    params: int  # every variable of the base, BatchNorm statistics included
    blocks: tuple[str, ...]
    weights: WeightsFile | None = None  # the ImageNet weights of a keras.applications base

    @classmethod
    def from_dict(cls, data: dict) -> Entry:
        weights = WeightsFile(**data["weights"]) if data.get("weights") else None
        return cls(data["source"], tuple(data["size"]), data["params"], tuple(data["blocks"]), weights)


@cache
def load_catalog() -> dict[str, Entry]:
    return {name: Entry.from_dict(data) for name, data in json.loads(CATALOG_FILE.read_text()).items()}


def base_source(spec: str, names: Container[str]) -> Literal["hub", "keras_hub", "name", "path"]:
    """Which kind of source the `--base` spec names: "hub" (hub:HANDLE, tlkit.bases.hub),
    "keras_hub" (keras_hub:PRESET, tlkit.bases.keras_hub), "name"
    (one of `names`, the registered bases, or a name to suggest close ones for), "path" (a .keras
    file, a run directory or a base directory that exists, tlkit.bases.local). A registered name
    wins over a file of that name in the current folder. A spec that looks like a path but is not
    there is refused here."""
    if spec.startswith(HUB_PREFIX):
        return "hub"
    if spec.startswith(KERAS_HUB_PREFIX):
        return "keras_hub"
    if spec in names:
        return "name"
    if Path(spec).exists():
        return "path"
    if "/" in spec or os.sep in spec or spec.endswith(".keras"):
        raise TlkitError(f"base {spec} does not exist: pass a .keras file, a run directory, hub:HANDLE, keras_hub:PRESET or a base "
                         "name (see `tlkit bases`)")
    return "name"
