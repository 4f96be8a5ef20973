"""The catalogue of registered bases (tlkit/bases/catalog.json): for every base its source,
default input size, parameter count, block names and, for a keras.applications base, the
ImageNet weights file Keras downloads (name, origin, hash), so that `tlkit bases` and the offline
hints need not build each base, and a base name is checked without TensorFlow. `tlkit.bases.listing`
writes it and lists it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CATALOG_FILE = Path(__file__).parent.parent / "bases" / "catalog.json"
HUB_PREFIX = "hub:"  # `--base hub:HANDLE`: a TF Hub handle or SavedModel folder, not a catalogued name


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
