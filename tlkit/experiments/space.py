"""The search space of `tlkit tune`, without TensorFlow (the CLI checks a space file at once):
the parameters a space can name, their default ranges, the space file, a trial's recipe.

A space file is TOML, a table per parameter: `low`, `high` (and `log`) for a number, or `choices`:

    [lr_head]
    low = 1e-4
    high = 1e-2

    [augment]
    choices = ["none", "light"]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tlkit.errors import TlkitError, unknown_name
from tlkit.recipe.kinds import resolve
from tlkit.recipe.schema import AUGMENT_PRESETS, Recipe

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Parameter:
    """A searchable setting: a recipe field (`kinds` empty) or a parameter of the stages of `kinds`."""

    field: str
    kinds: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None
    about: str = ""


# every parameter a space can name, with its default range
PARAMETERS = {
    "lr_head": Parameter("learning_rate", ("head", "extract"), 1e-4, 1e-2, log=True,
                         about="learning rate of the head (or extract) stage"),
    "lr_finetune": Parameter("learning_rate", ("finetune",), 1e-6, 1e-3, log=True,
                             about="learning rate of the finetune stage"),
    "unfreeze": Parameter("unfreeze", ("finetune",), 1, 3, integer=True, about="blocks unfrozen in the finetune stage"),
    "layer_decay": Parameter("layer_decay", ("finetune",), 0.5, 1.0, about="finetune's rate factor per block down"),
    "epochs_head": Parameter("epochs", ("head", "extract"), 2, 10, integer=True, about="epochs of the head stage"),
    "epochs_finetune": Parameter("epochs", ("finetune",), 2, 10, integer=True, about="epochs of the finetune stage"),
    "augment": Parameter("augment", (), choices=("none", "light", "standard"), about="augmentation preset"),
    "label_smoothing": Parameter("label_smoothing", (), 0.0, 0.2, about="label smoothing"),
    "dropout": Parameter("dropout", (), 0.0, 0.5, about="dropout before the head"),
    "batch_size": Parameter("batch_size", (), choices=(16, 32, 64), about="batch size"),
}
# the default space: what changes a fine-tune most, without changing how long a trial takes; not
# augment: an augmented stage cannot use the feature cache, so its trials take minutes, not seconds
DEFAULT_SPACE = ("lr_head", "lr_finetune", "unfreeze", "layer_decay", "label_smoothing", "dropout")


def _applies(parameter: Parameter, recipe: Recipe) -> bool:
    return not parameter.kinds or any(s.kind in parameter.kinds for s in recipe.stages)


def read_space(path: str | Path | None, recipe: Recipe) -> dict[str, Parameter]:
    """The search space: `path` (TOML, a table per parameter: low/high/log, or choices), checked
    before anything runs; None: the default space's parameters that `recipe` has stages for."""
    if path is None:
        return {name: PARAMETERS[name] for name in DEFAULT_SPACE if _applies(PARAMETERS[name], recipe)}
    path = Path(path)
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TlkitError(f"cannot read the space file {path}: {err.strerror}") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise TlkitError(f"space file {path} is not valid TOML: {err}") from err
    space = {}
    for name, table in tables.items():
        if name not in PARAMETERS:
            raise unknown_name(f"parameter in {path}:", name, PARAMETERS)
        default = PARAMETERS[name]
        if not isinstance(table, dict):
            raise TlkitError(f"{path}: {name} must be a table ([{name}] with low and high, or choices)")
        unknown = set(table) - {"low", "high", "log", "choices"}
        if unknown:
            raise TlkitError(f"{path}: [{name}] has {', '.join(sorted(unknown))}: it takes low, high, log or choices")
        if not _applies(default, recipe):
            raise TlkitError(f"{path}: {name} is a parameter of a {' or '.join(default.kinds)} stage, which recipe "
                             f"{recipe.name} has not: remove it or choose a recipe with one")
        if default.choices is not None or "choices" in table:
            choices = table.get("choices", list(default.choices or ()))
            if not isinstance(choices, list) or not choices:
                raise TlkitError(f"{path}: {name}'s choices are empty: give a list of at least one value")
            if name == "augment" and set(choices) - set(AUGMENT_PRESETS):
                raise TlkitError(f"{path}: augment choices must be presets ({', '.join(AUGMENT_PRESETS)}), "
                                 f"not {', '.join(map(str, set(choices) - set(AUGMENT_PRESETS)))}")
            space[name] = dataclasses.replace(default, choices=tuple(choices), low=None, high=None)
            continue
        low, high = table.get("low", default.low), table.get("high", default.high)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise TlkitError(f"{path}: {name}'s low and high must be numbers")
        log_scale = table.get("log", default.log)
        if low > high or (low == high and not default.integer) or (default.integer and int(low) > int(high)):
            raise TlkitError(f"{path}: {name}'s range is empty (low {low:g}, high {high:g}): give low below high")
        if log_scale and low <= 0:
            raise TlkitError(f"{path}: {name} is searched on a log scale: low must be above 0, not {low:g}")
        space[name] = dataclasses.replace(default, low=low, high=high, log=bool(log_scale))
    if not space:
        raise TlkitError(f"space file {path} names no parameter: add a table per parameter "
                         f"({', '.join(PARAMETERS)})")
    return space


def suggest(trial, name: str, p: Parameter):
    if p.choices is not None:
        return trial.suggest_categorical(name, list(p.choices))
    if p.integer:
        return trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(name, float(p.low), float(p.high), log=p.log)


def trial_recipe(recipe: Recipe, space: dict[str, Parameter], values: dict) -> Recipe:
    """`recipe` with a trial's `values` of the parameters of `space`, resolved."""
    fields, stages = {}, {}
    for name, value in values.items():
        p = space[name]
        if not p.kinds:
            fields[p.field] = value
        for kind in p.kinds:
            if any(s.kind == kind for s in recipe.stages):
                stages.setdefault(kind, {})[p.field] = value
    return resolve(recipe, stages=stages, check_base_name=False, **fields)
