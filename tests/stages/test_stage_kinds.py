"""The contract every registered stage kind keeps, checked over the registry: a new kind that
registers gets these checks without a line here. (The distribution matrix, in
test_distribute_matrix.py, runs every kind under each strategy.)"""
from __future__ import annotations

import dataclasses

import pytest

import tlkit.stages  # noqa: F401  (registers the kinds)
from tlkit.recipe.kinds import STAGES, StageParams, stage_params
from tlkit.recipe.schema import Recipe, Stage

KINDS = list(STAGES)


def test_the_built_in_kinds_are_registered():
    assert {"head", "finetune", "extract", "train", "autoencoder"} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_a_kind_has_parameters_with_defaults_a_summary_and_a_run(kind):
    spec = STAGES.get(kind)
    assert spec.name == kind and issubclass(spec.params, StageParams) and dataclasses.is_dataclass(spec.params)
    assert spec.summary and "\n" not in spec.summary
    assert callable(spec.run)
    params = stage_params(Stage(kind))  # every field has a default
    assert params.epochs >= 1 and params.learning_rate > 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_stage_of_every_kind_round_trips_through_toml_with_every_parameter(kind):
    fields = {f.name: getattr(stage_params(Stage(kind)), f.name) for f in dataclasses.fields(STAGES.get(kind).params)}
    recipe = Recipe(name="one", stages=[Stage(kind, **fields)])
    again = Recipe.from_toml(recipe.to_toml())
    assert dataclasses.replace(again, stages=[]) == dataclasses.replace(recipe, stages=[])
    # TOML has no null: a parameter left None comes back unset, which resolves to the same
    assert stage_params(again.stages[0]) == stage_params(recipe.stages[0])


@pytest.mark.parametrize("kind", KINDS)
def test_report_md_says_what_a_stage_of_every_kind_did_in_words_of_its_own(kind):
    recipe = Recipe(name="one", stages=[Stage(kind)], pooling="avg")
    params = stage_params(Stage(kind, epochs=3, learning_rate=0.004))
    said = STAGES.get(kind).describe(params, recipe, ["block1", "block2"], 5)
    assert "3 epochs at learning rate 0.004" in said
    scheduled = stage_params(Stage(kind, epochs=3, learning_rate=0.004, schedule="cosine", warmup_epochs=1))
    assert "(cosine schedule, warmup 1 epoch)" in STAGES.get(kind).describe(scheduled, recipe, ["block1", "block2"], 5)
    others = {other: STAGES.get(other).describe(stage_params(Stage(other, epochs=3, learning_rate=0.004)), recipe,
                                                ["block1", "block2"], 5) for other in KINDS if other != kind}
    assert said not in others.values(), f"{kind} is described as {said!r}, as another kind is"
