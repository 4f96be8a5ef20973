"""Stage kinds and the resolution of a recipe against them.

A stage kind is one module of `tlkit.stages`: a parameters dataclass (a subclass of
`StageParams`), a run function, and a `StageKind` registered in `STAGES`, the only list of kinds.
This module imports no TensorFlow, so that a recipe and the options over it are checked before
anything slow happens.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tlkit._util.registry import Registry
from tlkit._util.urls import is_url
from tlkit.errors import TlkitError, unknown_name
from tlkit.recipe.base_names import base_source, load_catalog
from tlkit.recipe.schema import Recipe, Stage, checked_fields, get_recipe, is_recipe_file


@dataclass
class StageParams:
    """What every stage has; a kind's parameters dataclass adds its own fields."""

    epochs: int = 5
    learning_rate: float = 1e-3  # the peak of the schedule
    # how the rate moves over the stage (tlkit.models.optimization.schedule)
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_epochs: float = 0  # the rate rises from low to learning_rate over these epochs

    def problem(self) -> str | None:
        """What is wrong with these values, or None. Kinds extend it with their own rules."""
        if self.epochs < 0:
            return f"epochs must be >= 0, not {self.epochs}"
        if self.learning_rate <= 0:
            return f"learning_rate must be > 0, not {self.learning_rate}"
        too_long = self.epochs and self.warmup_epochs >= self.epochs and self.schedule != "constant"
        if self.warmup_epochs < 0 or too_long:
            return (f"warmup_epochs must be >= 0 and, with a {self.schedule} schedule, fewer than the stage's "
                    f"{self.epochs} epochs, not {self.warmup_epochs}")
        return None

    def resolved(self) -> StageParams:
        """These parameters with what depends on the working folder (paths) made absolute."""
        return self


@dataclass(frozen=True)
class StageKind:
    name: str
    params: type[StageParams]
    run: Callable[..., Any]  # run(ctx: RunContext, index: int, params) -> StageResult
    summary: str  # one line for `tlkit recipes` and the docs
    # describe(params, recipe, blocks, classes) -> str: what a stage of this kind did, for REPORT.md
    describe: Callable[..., str] = lambda params, recipe, blocks, classes: ""
    needs_labels: bool = True  # False: trains on images alone (autoencoder)
    # make_base(recipe, params) -> Base: a kind that, as a recipe's first stage, makes the run's base
    make_base: Callable[..., Any] | None = None
    # skipped(ctx, index, params): what a stage that had ended leaves for the stages after it when
    # its run is resumed (the autoencoder's encoder as the base)
    skipped: Callable[..., Any] | None = None
    # prepare(ctx, params) -> (model, detail): the classifier made trainable as the stage trains it
    # (frozen and unfrozen blocks), and a few words saying so; what `tlkit lr-find` sweeps
    prepare: Callable[..., Any] | None = None


STAGES: Registry[StageKind] = Registry("stage kind")


def amount(params: StageParams) -> str:
    """How long and how fast a stage trained, as every kind's REPORT.md sentence says it:
    "5 epochs at learning rate 0.001 (cosine schedule, warmup 1 epoch)"."""
    said = f"{params.epochs} epoch{'s' if params.epochs != 1 else ''} at learning rate {params.learning_rate:g}"
    shape = [] if params.schedule == "constant" else [f"{params.schedule} schedule"]
    if params.warmup_epochs:
        shape.append(f"warmup {params.warmup_epochs:g} epoch{'s' if params.warmup_epochs != 1 else ''}")
    return said + (f" ({', '.join(shape)})" if shape else "")


def stage_params(stage: Stage, where: str = "recipe") -> StageParams:
    """The parameters of `stage`, checked against its registered kind, with its defaults."""
    kind = STAGES.get(stage.kind)
    values = checked_fields(kind.params, dict(stage.params), f"{where}, {stage.kind} stage")
    params = kind.params(**values)
    problem = params.problem()
    if problem:
        raise TlkitError(f"{where}, {stage.kind} stage: {problem}")
    return params


StageOverrides = Mapping[str | int, Mapping[str, Any]]


def resolve(recipe: Recipe | str | Path | None, *, stages: StageOverrides | None = None,
            check_base_name: bool = True, **fields) -> Recipe:
    """`recipe` (a Recipe, a built-in name or a TOML path; None: classic) with `fields` (recipe
    fields; None values are left alone) and `stages` (per-stage parameters, keyed by a kind, or
    by a stage's 1-based number when the recipe has several of that kind, or by "*" for every
    stage) set over it; every stage checked and completed with its kind's defaults, and data
    paths made absolute, so that the recipe written into a run directory repeats the run from any
    folder. With `check_base_name`, the recipe's base is checked against the catalogue too
    (`check_base`); a caller that brings its own base object leaves that out."""
    r = get_recipe(recipe)
    # a recipe read from a file is named by the file, which the user edits
    where = f"recipe {r.name}" if isinstance(recipe, Recipe) or not is_recipe_file(recipe) else f"recipe {recipe}"
    fields = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in fields.items() if v is not None}
    checked_fields(Recipe, fields, "the settings")
    r = dataclasses.replace(r, **fields)
    checked_fields(Recipe, {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "stages"}, where)
    problem = r.problem()
    if problem:
        raise TlkitError(f"{where}: {problem}")
    staged = list(r.stages)
    for key, changes in (stages or {}).items():
        for i in _stage_indices(r, key):
            staged[i] = staged[i].replace(**{k: v for k, v in changes.items() if v is not None})
    if not staged:
        raise TlkitError(f"{where} has no stages: add at least one [[stages]] table (see `tlkit recipes`)")
    staged = [Stage(s.kind, **dataclasses.asdict(stage_params(s, f"{where}, stage {i}").resolved()))
              for i, s in enumerate(staged, start=1)]
    paths = {key: str(Path(getattr(r, key)).resolve()) for key in ("data", "val_data", "image_root", "cache")
             if getattr(r, key) and not is_url(getattr(r, key))}  # a bucket's URL is absolute already
    if r.class_weight not in ("none", "balanced"):
        paths["class_weight"] = str(Path(r.class_weight).resolve())
    resolved = dataclasses.replace(r, stages=staged, **paths)
    if check_base_name:
        check_base(resolved)
    return resolved


def needs_base(recipe: Recipe) -> bool:
    """Whether the recipe needs a base named: not when its first stage makes its own."""
    return not recipe.stages or STAGES.get(recipe.stages[0].kind).make_base is None


def check_base(recipe: Recipe) -> None:
    """The recipe's base against the catalogue of registered bases, before anything is loaded:
    its name (close matches for a typo) and its number of blocks against every stage's
    `unfreeze`. Files, run directories and hub handles are checked when they are loaded."""
    spec = recipe.base
    catalog = load_catalog()
    if not spec or base_source(spec, catalog) != "name":
        return
    if spec not in catalog:
        raise unknown_name("base", spec, catalog, hint="run `tlkit bases` to list them")
    if recipe.base_layer:  # a cut base keeps only the blocks before the cut: known once it is loaded
        return
    check_unfreeze(recipe, spec, catalog[spec].blocks)


def check_unfreeze(recipe: Recipe, base: str, blocks: Sequence[str]) -> None:
    """Every stage's `unfreeze` against the names of the base's blocks, before any stage trains."""
    for number, stage in enumerate(recipe.stages, start=1):
        unfreeze = stage.params.get("unfreeze")
        if isinstance(unfreeze, int) and unfreeze > len(blocks):
            raise TlkitError(
                f"recipe {recipe.name}, stage {number}: cannot unfreeze {unfreeze} blocks: base {base} has "
                f"{len(blocks)} ({', '.join(blocks)}); choose --unfreeze between 1 and {len(blocks)}")


def _stage_indices(recipe: Recipe, key: str | int) -> list[int]:
    """The positions (0-based) of the stages an override key names."""
    if key == "*":
        return list(range(len(recipe.stages)))
    if isinstance(key, int) or str(key).isdigit():
        number = int(key)
        if not 1 <= number <= len(recipe.stages):
            raise TlkitError(f"recipe {recipe.name} has {len(recipe.stages)} stages: there is no stage {number}")
        return [number - 1]
    kind = STAGES.get(str(key)).name
    found = [i for i, stage in enumerate(recipe.stages) if stage.kind == kind]
    if not found:
        kinds = ", ".join(s.kind for s in recipe.stages) or "none"
        raise TlkitError(f"recipe {recipe.name} has no {kind} stage (its stages: {kinds}): drop the {kind} options")
    if len(found) > 1:
        numbers = " and ".join(str(i + 1) for i in found)
        raise TlkitError(
            f"recipe {recipe.name} has {len(found)} {kind} stages ({numbers}): say which one, by its number "
            f"(--stage-option N:KEY=VALUE, or stages={{N: {{...}}}} in Python), or edit a copy of the recipe"
        )
    return found
