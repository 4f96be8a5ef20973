"""The catalogue of registered bases, so `tlkit bases` lists them without building each one.

Like timm's pretrained config per model: for every base its source, default input size,
parameter count, block names and, for a keras.applications base, the ImageNet weights file Keras
downloads (name, origin, hash). It is generated from the models themselves:

    python -m tlkit.bases.listing --update      # rebuild every base, rewrite tlkit/bases/catalog.json

and tests/bases/test_block_maps.py checks it against freshly built models. Keras does not publish its
weights files in a table: each application passes them to `get_file` as it builds, so the
catalogue records that call (`recorded_downloads`) instead of making it.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import keras

from tlkit._util.io import write_atomic, write_text_atomic
from tlkit._util.keras_internals import hash_file, replaced_downloads, validate_file
from tlkit.bases import BASES, Base, keras_hub
from tlkit.bases.inspect import human_count
from tlkit.bases.keras_apps import keras_cache_dir, load_app
from tlkit.errors import TlkitError, unknown_name
from tlkit.recipe.base_names import CATALOG_FILE, Entry, WeightsFile, load_catalog

log = logging.getLogger(__name__)
_RECORDED = "recorded-download:"  # prefix of the path a recorded download returns


@contextmanager
def recorded_downloads() -> Iterator[list[WeightsFile]]:
    """Within this, the weight files keras.applications would download are recorded, not
    fetched, and not loaded: a model builds with weights="imagenet" offline, with random weights."""
    records: list[WeightsFile] = []
    load_weights = keras.Model.load_weights

    def get_file(fname=None, origin=None, md5_hash=None, file_hash=None, **kwargs):
        records.append(WeightsFile(fname, origin, file_hash or md5_hash))
        return _RECORDED + fname

    def load_recorded(model, filepath, *args, **kwargs):
        if not str(filepath).startswith(_RECORDED):
            load_weights(model, filepath, *args, **kwargs)

    with replaced_downloads(get_file, load_recorded):
        yield records


def describe(base: Base, downloads: list[WeightsFile]) -> Entry:
    """The catalogue entry of a base built by its source, with the downloads it asked for."""
    spec = BASES.get(base.name)
    return Entry(spec.source, spec.input_size, base.model.count_params(), tuple(b.name for b in base.blocks),
                 downloads[-1] if downloads else None)


def build_entry(name: str) -> Entry:
    """Build the base `name` at its default size (with its ImageNet weights recorded, not
    fetched) and describe it."""
    spec = BASES.get(name)
    with recorded_downloads() as downloads:
        base = spec.load("imagenet" if spec.source == "keras" else "none", None)
    return describe(base, downloads)


@dataclass(frozen=True)
class Row:
    name: str
    entry: Entry
    weights: str  # where its pretrained weights are, or would come from


def list_bases() -> list[Row]:
    """Every registered base, from the catalogue (a base missing from it is built)."""
    catalog = load_catalog()
    rows = []
    for name, spec in BASES.items():
        entry = catalog.get(name) or build_entry(name)
        status = spec.weights_status("imagenet") if spec.weights_status else "no pretrained weights"
        rows.append(Row(name, entry, status))
    return rows


def abbreviate(names: tuple[str, ...]) -> str:
    shown = names if len(names) <= 4 else (*names[:2], "…", *names[-2:])
    return f"{len(names)}: " + ", ".join(shown).replace(", …,", " …")


def format_bases(rows: list[Row]) -> str:
    header = ("name", "source", "size", "params", "blocks", "weights")
    table = [header] + [
        (r.name, r.entry.source, "x".join(map(str, r.entry.size)), human_count(r.entry.params),
         abbreviate(r.entry.blocks), r.weights)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in table]
    return "\n".join(lines + [
        "",
        "--base also takes:",
        "  hub:HANDLE   a tfhub.dev / Kaggle model URL or a TF2 SavedModel folder (--image-size, --hub-range);",
        "               a single block: fine-tuning trains all of it or nothing",
        "  FILE.keras   a Keras model, cut before its classifier (or at --base-layer NAME); blocks from a",
        "               blocks.json beside it, else a single block",
        "  RUN_DIR      a run of `tlkit finetune` or `tlkit train`, or a folder with base.keras and blocks.json",
        *keras_hub.listing_lines(),
    ])


def import_weights(name: str, file: str | Path, catalog: dict[str, Entry] | None = None) -> Path:
    """Copy `file`, the ImageNet weights of base `name` obtained elsewhere, to where Keras'
    `get_file` looks for them, after checking it: by its hash as Keras does, or, where Keras
    has none, by loading it into the model."""
    catalog = catalog if catalog is not None else load_catalog()
    file = Path(file)
    if name not in catalog:
        raise unknown_name("base", name, catalog)
    weights = catalog[name].weights
    if weights is None:
        raise TlkitError(
            f"base {name} ({catalog[name].source}) has no weights file to import: "
            + ("its package ships them" if catalog[name].source == "package" else "it has no pretrained weights")
        )
    if not file.is_file():
        raise TlkitError(f"weights file {file} does not exist")
    if weights.hash and not validate_file(str(file), weights.hash):
        kind = "sha256" if len(weights.hash) == 64 else "md5"
        raise TlkitError(
            f"{file} is not the ImageNet weights file of {name}: its {kind} hash is "
            f"{hash_file(str(file), kind)}, {weights.file} has {weights.hash} (download {weights.origin})"
        )

    def copy(tmp: Path) -> None:
        shutil.copyfile(file, tmp)
        if not weights.hash:  # loaded from the copy, whose suffix tells Keras the file's format
            try:
                load_app(name, str(tmp))
            except Exception as err:  # Keras raises ValueError, OSError, KeyError, ... for a file that does not fit
                raise TlkitError(f"{file} does not fit base {name} ({err}); download {weights.origin}") from err

    target = keras_cache_dir() / weights.file
    write_atomic(target, copy)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tlkit.bases.listing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help=f"rebuild the bases and rewrite {CATALOG_FILE.name}")
    parser.add_argument("names", nargs="*", help="only these bases (default: every registered one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.update:
        parser.error("nothing to do: pass --update")
    entries = {name: asdict(entry) for name, entry in load_catalog().items()} if CATALOG_FILE.is_file() else {}
    for name in args.names or list(BASES):
        entries[name] = asdict(build_entry(name))
        log.info("%s: %d parameters, %d blocks", name, entries[name]["params"], len(entries[name]["blocks"]))
        keras.backend.clear_session()
    write_text_atomic(CATALOG_FILE, json.dumps(entries, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
