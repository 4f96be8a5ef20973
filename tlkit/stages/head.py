"""`head`: the base frozen (and in inference mode), a new head trained on top of it."""
from __future__ import annotations

from dataclasses import dataclass

from tlkit.recipe.kinds import STAGES, StageKind, StageParams, amount


@dataclass
class Head(StageParams):
    pass


def new_head(recipe, classes: int) -> str:
    if recipe.task == "multilabel":
        return f"a new head ({recipe.pooling} pooling, dropout {recipe.dropout:g}, a sigmoid for each of {classes} labels)"
    return f"a new head ({recipe.pooling} pooling, dropout {recipe.dropout:g}, softmax over {classes} classes)"


def describe(params: Head, recipe, blocks: list[str], classes: int) -> str:
    return f"train {new_head(recipe, classes)} on the frozen base (BatchNorm in inference mode), {amount(params)}"


def prepare(ctx, params: StageParams):
    """The classifier with its base frozen and in inference mode."""
    from tlkit.engine.classifier import BASE_LAYER, base_in_inference  # TensorFlow: imported when a stage runs, so
    # checking a recipe stays fast

    ctx.classifier.get_layer(BASE_LAYER).trainable = False
    base_in_inference(ctx.classifier, True)
    return ctx.classifier, "base frozen, new head"


def run(ctx, index: int, params: Head):
    from tlkit.engine import (
        frozen as features,  # TensorFlow: imported when a stage runs, so checking a recipe stays fast
    )

    model, detail = prepare(ctx, params)
    return features.fit_frozen_once(ctx, index, "head", params, model, detail)


STAGES.add("head", StageKind("head", Head, run, "base frozen, a new head trained", describe, prepare=prepare))
