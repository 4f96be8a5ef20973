"""`head`: the base frozen (and in inference mode), a new head trained on top of it."""
from __future__ import annotations

from dataclasses import dataclass

from tlkit.core.kinds import STAGES, StageKind, StageParams


@dataclass
class Head(StageParams):
    pass


def prepare(ctx, params: StageParams):
    """The classifier with its base frozen and in inference mode."""
    from tlkit.core.run import BASE_LAYER, base_in_inference  # TensorFlow: imported when a stage runs, so
    # checking a recipe stays fast

    ctx.classifier.get_layer(BASE_LAYER).trainable = False
    base_in_inference(ctx.classifier, True)
    return ctx.classifier, "base frozen, new head"


def run(ctx, index: int, params: Head):
    from tlkit import features  # TensorFlow: imported when a stage runs, so checking a recipe stays fast

    model, detail = prepare(ctx, params)
    return features.fit_frozen_once(ctx, index, "head", params, model, detail)


STAGES.add("head", StageKind("head", Head, run, "base frozen, a new head trained", prepare=prepare))
