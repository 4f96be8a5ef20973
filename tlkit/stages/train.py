"""`train`: every layer trainable (a model from scratch, `tlkit train`)."""
from __future__ import annotations

from dataclasses import dataclass

from tlkit.recipe.kinds import STAGES, StageKind, StageParams, amount


@dataclass
class Train(StageParams):
    pass


def describe(params: Train, recipe, blocks: list[str], classes: int) -> str:
    return f"train every layer from scratch, {amount(params)}"


def prepare(ctx, params: StageParams):
    """The whole classifier trainable, but for fixed preprocessing."""
    from tlkit.models.preprocessing import NAME as PREPROCESSING  # TensorFlow: imported when a stage runs, so that
    # checking a recipe stays fast

    ctx.classifier.trainable = True
    for layer in _all_layers(ctx.classifier):
        if layer.name == PREPROCESSING:  # fixed arithmetic (a caffe channel flip has weights), not to be learnt
            layer.trainable = False
    return ctx.classifier, "every layer trainable"


def run(ctx, index: int, params: Train):
    model, detail = prepare(ctx, params)
    return ctx.fit(index, "train", params, model, detail=detail)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # a nested model: the base inside a classifier
            yield from _all_layers(layer)


STAGES.add("train", StageKind("train", Train, run, "every layer trained (from scratch)", describe, prepare=prepare))
