"""`head`: the base frozen (and in inference mode), a new head trained on top of it."""
from __future__ import annotations

from dataclasses import dataclass

from tlkit.core.kinds import STAGES, StageKind, StageParams


@dataclass
class Head(StageParams):
    pass


def run(ctx, index: int, params: Head):
    from tlkit.core.run import BASE_LAYER  # TensorFlow: imported when a stage runs, so checking a recipe stays fast

    ctx.classifier.get_layer(BASE_LAYER).trainable = False
    return ctx.fit(index, "head", params, detail="base frozen, new head")


STAGES.add("head", StageKind("head", Head, run, "base frozen, a new head trained"))
