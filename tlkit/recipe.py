"""Recipes: ordered stages as plain data that round-trips to TOML.

A recipe file is what `tlkit recipes` lists, what `--recipe NAME|FILE` takes, and what a run
directory keeps (`recipe.toml`, resolved: with the base, data and image size the run used, so
`tlkit finetune --recipe runs/X/recipe.toml` repeats it).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import tomli_w

from tlkit.errors import TlkitError, unknown_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STAGE_KINDS = ("head", "finetune", "extract", "autoencoder", "train")
DECODERS = ("unpool", "transpose")
POOLINGS = ("avg", "max", "flatten")


@dataclass
class Stage:
    """One step of a recipe.

    head: base frozen (inference mode), train a new head. finetune: unfreeze the top `unfreeze`
    blocks of the base (BatchNorm stays in inference mode), train jointly. extract: cache the
    frozen base's features, train the head on them. autoencoder: pretrain a conv autoencoder whose
    encoder becomes the base. train: every layer trainable (a model from scratch).
    """

    kind: str
    epochs: int = 5
    learning_rate: float = 1e-3
    unfreeze: int = 0
    # autoencoder stages only (None elsewhere, and left out of TOML files)
    decoder: str | None = None  # "unpool" (max-unpooling with the switches) or "transpose"
    noise: float | None = None  # std of Gaussian noise on the [0, 1]-scaled training inputs: denoising
    channels: int | None = None  # 1 or 3; default: the run's base's
    data: str | None = None  # unlabeled images to pretrain on; default: the run's training images

    def __post_init__(self):
        if self.kind not in STAGE_KINDS:
            raise unknown_name("stage kind", self.kind, STAGE_KINDS)
        if self.epochs < 0:
            raise TlkitError(f"stage {self.kind}: epochs must be >= 0, not {self.epochs}")
        if self.learning_rate <= 0:
            raise TlkitError(f"stage {self.kind}: learning_rate must be > 0, not {self.learning_rate}")
        autoencoding = {"decoder": self.decoder, "noise": self.noise, "channels": self.channels, "data": self.data}
        if self.kind != "autoencoder":
            given = [key for key, value in autoencoding.items() if value is not None]
            if given:
                raise TlkitError(f"stage {self.kind}: {given[0]} only applies to autoencoder stages")
            return
        self.decoder = self.decoder or "unpool"
        if self.decoder not in DECODERS:
            raise unknown_name("decoder", self.decoder, DECODERS)
        self.noise = float(self.noise or 0.0)
        if self.noise < 0:
            raise TlkitError(f"stage autoencoder: noise must be >= 0, not {self.noise}")
        if self.channels not in (None, 1, 3):
            raise TlkitError(f"stage autoencoder: channels must be 1 or 3, not {self.channels}")


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    stages: list[Stage] = field(default_factory=list)
    # What to train on: set by the command line or by a run's resolved recipe.
    base: str | None = None
    weights: str = "imagenet"
    base_layer: str | None = None  # cut the base at this layer (--base-layer)
    hub_range: str | None = None  # the pixel range a hub: base expects: "0,1" (None), "-1,1", "0,255"
    data: str | None = None
    val_data: str | None = None
    skip_bad: bool = False
    # How.
    image_size: int | None = None  # None: the base's default
    batch_size: int = 32
    val_split: float = 0.2
    seed: int = 0
    augment: bool = False
    dropout: float = 0.2
    pooling: str = "avg"  # how the head reduces the base's feature map: avg, max or flatten
    early_stopping: int = 0  # patience in epochs; 0 is off
    mixed_precision: bool = False
    cache: str | None = None  # feature cache folder of extract stages; None: tlkit.features.cache_dir()

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise unknown_name("head pooling", self.pooling, POOLINGS)

    def to_dict(self) -> dict:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        data["stages"] = [{k: v for k, v in stage.items() if v is not None} for stage in data["stages"]]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise unknown_name(f"key in {source}", sorted(unknown)[0], known)
        stage_fields = {f.name for f in dataclasses.fields(Stage)}
        stages = []
        for raw in data.get("stages", []):
            bad = set(raw) - stage_fields
            if bad:
                raise unknown_name(f"stage key in {source}", sorted(bad)[0], stage_fields)
            if "kind" not in raw:
                raise TlkitError(f"{source}: every [[stages]] entry needs a kind ({', '.join(STAGE_KINDS)})")
            stages.append(Stage(**raw))
        return cls(**{**data, "stages": stages})

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str, source: str = "recipe") -> Recipe:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise TlkitError(f"{source} is not valid TOML: {err}") from err
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise TlkitError(f"cannot read recipe {path}: {err.strerror}") from err
        return cls.from_toml(text, str(path))

    def save(self, path: str | Path) -> None:
        from tlkit.io import write_text_atomic

        write_text_atomic(path, self.to_toml())

    def with_stages(self, kind: str, **changes) -> Recipe:
        """A copy whose stages of `kind` have `changes` applied (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        stages = [dataclasses.replace(s, **changes) if s.kind == kind else s for s in self.stages]
        return dataclasses.replace(self, stages=stages)


def builtin_recipes() -> dict[str, Recipe]:
    """The recipes shipped in tlkit/recipes/*.toml (also `recipes/` at the top of the repo)."""
    folder = resources.files("tlkit") / "recipes"
    found = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            found[item.name[:-5]] = Recipe.from_toml(item.read_text(), f"recipes/{item.name}")
    return found


def get_recipe(spec: str | Path | Recipe | None) -> Recipe:
    """A recipe from an object, a built-in name or a TOML path; None is the classic recipe."""
    if isinstance(spec, Recipe):
        return spec
    if spec is None:
        spec = "classic"
    spec = str(spec)
    if spec.endswith(".toml") or Path(spec).is_file():
        return Recipe.load(spec)
    recipes = builtin_recipes()
    if spec not in recipes:
        raise unknown_name("recipe", spec, recipes, hint="run `tlkit recipes` to list them, or pass a .toml path")
    return recipes[spec]
