"""Recipes: ordered stages as plain data that round-trips to TOML.

A recipe file is what `tlkit recipes` lists, what `--recipe NAME|FILE` takes, and what a run
directory keeps (`recipe.toml`, resolved: with the base, data and image size the run used, so
`tlkit finetune --recipe runs/X/recipe.toml` repeats it).
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomli_w

from tlkit._util.io import write_text_atomic
from tlkit.errors import TlkitError, unknown_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096  # a base may need more: it says so when it is built
Pooling = Literal["avg", "max", "flatten"]  # how a new head reduces the base's feature map
POOLINGS = typing.get_args(Pooling)
# a --data file with one of these suffixes is a manifest (tlkit.data.manifest), not a folder
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl")

# augmentation presets (tlkit.data.augment); a recipe's `augment = true` / `false` (tlkit 0.1) is light / none
AugmentPreset = Literal["none", "light", "standard", "strong"]
AUGMENT_PRESETS = typing.get_args(AugmentPreset)
ClassWeight = str  # "none", "balanced", or a TOML or JSON file of class name -> weight
# how a run spreads over devices (tf.distribute): auto is mirrored when more than one GPU is visible
Distribute = Literal["auto", "none", "mirrored", "multiworker"]


@dataclass(init=False)
class Stage:
    """One step of a recipe, as a recipe file writes it: its kind and that kind's parameters
    (`Stage("finetune", epochs=3, unfreeze=2)`; `stage.unfreeze` reads one). The registered kind
    (`tlkit.recipe.kinds.STAGES`) checks them and fills in its defaults when a recipe is resolved.
    """

    kind: str
    params: dict[str, Any]

    def __init__(self, kind: str, **params):
        self.kind = kind
        self.params = params

    def __getattr__(self, name: str):
        try:
            return self.__dict__["params"][name]
        except KeyError:
            raise AttributeError(f"stage {self.__dict__.get('kind')} has no parameter {name!r}") from None

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{k: v for k, v in self.params.items() if v is not None}}

    def replace(self, **changes) -> Stage:
        return Stage(self.kind, **{**self.params, **changes})


def checked_fields(cls, values: dict, where: str) -> dict:
    """`values` for the dataclass `cls`, each checked against its field's annotation (int, float,
    str, bool, a `Literal`, or one of them `| None`); an unknown key or a value of the wrong type is
    one line that names `where`, the key and what it takes."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in values.items():
        if key not in fields:
            raise TlkitError(f"{where}: {unknown_name('key', key, fields)}")
        if not _fits(value, hints[key]):
            words = [a for a in _choices(hints[key]) if isinstance(a, str)]
            if words and isinstance(value, str):
                raise TlkitError(f"{where}: {unknown_name(key, value, words)}")
            raise TlkitError(f"{where}: {key} = {value!r} is not {_describe(hints[key])}")
    return values


def _choices(hint) -> tuple:
    """The values a `Literal` (or a `Literal | None`) hint allows; () for other hints."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for h in typing.get_args(hint) for a in _choices(h))
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def _fits(value, hint) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
            type(None): "left out"}.get(hint, str(hint))


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
    data: str | None = None  # a folder of class folders, or a manifest (.csv, .tsv, .jsonl)
    val_data: str | None = None
    # a manifest's columns, and the folder its paths are relative to (None: the manifest's own)
    image_root: str | None = None
    path_column: str = "path"
    label_column: str = "label"
    split_column: str = "split"
    # single: one label an image (softmax); multilabel: any number (sigmoid, a threshold per label)
    task: Literal["single", "multilabel"] = "single"
    label_delimiter: str = "|"  # between the labels of a multi-label manifest's label cell
    threshold: float | None = None  # one threshold for every label; None: each label's, chosen on validation
    skip_bad: bool = False
    exclude: str | None = None  # a CSV with a `path` column: files of `data` left out (tlkit.data.curation)
    relabel: str | None = None  # a CSV of `path,label`: files of `data` given another class
    # How.
    image_size: int | None = None  # None: the base's default
    batch_size: int = 32
    val_split: float = 0.2
    seed: int = 0
    augment: AugmentPreset | bool = "none"
    # these replace the augment preset's value of theirs (None: the preset's; see tlkit.data.augment)
    rotate: float | None = None  # degrees, either way
    randaugment: str | None = None  # "N,M": N ops per image at magnitude M (0-10); "0": off
    erasing: float | None = None  # probability of erasing a random rectangle of an image
    mixup: float | None = None  # MixUp's alpha; 0: off
    cutmix: float | None = None  # CutMix's alpha; 0: off
    label_smoothing: float = 0.0  # the target of cross-entropy becomes (1 - a) y + a / K
    class_weight: ClassWeight = "none"
    dropout: float = 0.2
    pooling: Pooling | None = None  # None: what the base asks for (an autoencoder's: flatten), else avg
    early_stopping: int = 0  # patience in epochs; 0 is off
    mixed_precision: bool = False
    cache: str | None = None  # feature cache folder of extract stages; None: tlkit.engine.frozen.cache_dir()
    # decoded, resized images kept for later epochs: in memory when they fit, on disk, or not at all
    cache_images: Literal["auto", "memory", "disk", "none"] = "auto"
    # batch_size is the global batch, split over the replicas; learning rates are not rescaled
    distribute: Distribute = "auto"
    jit: bool = False  # XLA compilation of the train step (jit_compile)
    # after training: a temperature fitted on the validation split, inside the model (tlkit.models.calibration)
    calibrate: bool = True
    keep: float = 0.95  # share of the validation images under the unknown threshold

    def __post_init__(self):
        if isinstance(self.augment, bool):
            self.augment = "light" if self.augment else "none"

    def problem(self) -> str | None:
        """What is wrong with the recipe's settings, naming the setting and what it takes, or None."""
        if not 0 <= self.seed < 2 ** 32:
            return f"seed must be a whole number from 0 to 2**32 - 1, not {self.seed}"
        if self.batch_size < 1:
            return f"batch_size must be >= 1, not {self.batch_size}"
        if self.image_size is not None and not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            return f"image_size must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, not {self.image_size}"
        if not 0 < self.val_split < 1:
            return f"val_split must be between 0 and 1 (a fraction of each class), not {self.val_split}"
        if not 0 <= self.dropout < 1:
            return f"dropout must be at least 0 and below 1, not {self.dropout}"
        if self.early_stopping < 0:
            return f"early_stopping must be >= 0 (0 is off), not {self.early_stopping}"
        for key in ("rotate", "erasing", "mixup", "cutmix"):
            if (getattr(self, key) or 0) < 0:
                return f"{key} must be >= 0, not {getattr(self, key)}"
        if (self.erasing or 0) > 1:
            return f"erasing is a probability, between 0 and 1, not {self.erasing}"
        if self.threshold is not None and not 0 < self.threshold < 1:
            return f"threshold must be between 0 and 1, not {self.threshold}"
        if not self.label_delimiter:
            return "label_delimiter must not be empty"
        if not 0 < self.keep < 1:
            return f"keep must be between 0 and 1 (the share of known images kept), not {self.keep}"
        if not 0 <= self.label_smoothing < 1:
            return f"label_smoothing must be in [0, 1), not {self.label_smoothing}"
        return None

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        data["stages"] = [stage.to_dict() for stage in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> Recipe:
        """A recipe from the tables of a recipe file; its values are checked against the fields'
        types here, the stages' parameters when the recipe is resolved."""
        data = dict(data)
        raw_stages = data.pop("stages", [])
        if not isinstance(raw_stages, list):
            raise TlkitError(f"{source}: stages must be a list of [[stages]] tables")
        checked_fields(cls, data, source)
        stages = []
        for index, raw in enumerate(raw_stages, start=1):
            if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
                raise TlkitError(f"{source}: stage {index} needs a kind, a string (head, finetune, extract, ...)")
            params = dict(raw)
            stages.append(Stage(params.pop("kind"), **params))
        return cls(**data, stages=stages)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def flat(self) -> dict:
        """The recipe as one level of names: its fields, and each stage's as `stage2.learning_rate`
        (what MLflow, TensorBoard's HParams and `tlkit runs diff` take)."""
        data = self.to_dict()
        stages = data.pop("stages")
        return {**data, **{f"stage{i}.{key}": value for i, stage in enumerate(stages, start=1)
                           for key, value in stage.items()}}

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
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise TlkitError(f"cannot read recipe {path}: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise TlkitError(f"recipe {path} is not a text file (TOML)") from err
        return cls.from_toml(text, str(path))

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_toml())

    def with_stages(self, kind: str, **changes) -> Recipe:
        """A copy whose stages of `kind` have `changes` applied (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        stages = [s.replace(**changes) if s.kind == kind else s for s in self.stages]
        return dataclasses.replace(self, stages=stages)


def builtin_recipes() -> dict[str, Recipe]:
    """The recipes shipped in tlkit/recipes/*.toml (also `recipes/` at the top of the repo)."""
    folder = resources.files("tlkit") / "recipes"
    found = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            found[item.name[:-5]] = Recipe.from_toml(item.read_text(), f"recipes/{item.name}")
    return found


def is_recipe_file(spec: str | Path | None) -> bool:
    """Whether `spec` names a recipe file rather than a built-in recipe."""
    return spec is not None and (str(spec).endswith(".toml") or Path(spec).is_file())


def get_recipe(spec: str | Path | Recipe | None) -> Recipe:
    """A recipe from an object, a built-in name or a TOML path; None is the classic recipe."""
    if isinstance(spec, Recipe):
        return spec
    if spec is None:
        spec = "classic"
    spec = str(spec)
    if is_recipe_file(spec):
        return Recipe.load(spec)
    recipes = builtin_recipes()
    if spec not in recipes:
        raise unknown_name("recipe", spec, recipes, hint="run `tlkit recipes` to list them, or pass a .toml path")
    return recipes[spec]
