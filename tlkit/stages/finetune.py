"""`finetune`: the top `unfreeze` blocks of the base trained with the head, BatchNorm kept in
inference mode (`tlkit.models.blocks.set_trainable_top`); with `layer_decay` F below 1, each block down
from the top trains at F times the rate of the one above it (the head at the stage's rate).
The frozen blocks below run once, not every epoch, where they can (`tlkit.engine.frozen.fit_frozen_once`)."""
from __future__ import annotations

from dataclasses import dataclass

from tlkit.recipe.kinds import STAGES, StageKind, StageParams, amount


@dataclass
class Finetune(StageParams):
    unfreeze: int = 1  # blocks of the base, counted from the top
    layer_decay: float = 1.0  # learning-rate factor from one unfrozen block to the one below it

    def problem(self) -> str | None:
        if self.unfreeze < 1:
            return f"unfreeze must be >= 1 (blocks of the base to train), not {self.unfreeze}: use --unfreeze N"
        if not 0 < self.layer_decay <= 1:
            return f"layer_decay must be in (0, 1], not {self.layer_decay}"
        return super().problem()


def describe(params: Finetune, recipe, blocks: list[str], classes: int) -> str:
    top = blocks[-params.unfreeze:] if blocks and params.unfreeze else []
    named = f" ({', '.join(top)})" if top else ""
    decay = f", each block below at {params.layer_decay:g} times the rate above it" if params.layer_decay != 1 else ""
    return (f"unfreeze the top {params.unfreeze} block{'s' if params.unfreeze != 1 else ''} of the base{named} "
            f"and train {'it' if params.unfreeze == 1 else 'them'} with the head, BatchNorm kept frozen, "
            f"{amount(params)}{decay}")


def prepare(ctx, params: Finetune):
    """The classifier with the top `unfreeze` blocks of its base trainable."""
    # TensorFlow: imported when a stage runs, so checking a recipe stays fast
    from tlkit.engine.classifier import BASE_LAYER, base_in_inference
    from tlkit.models.blocks import set_trainable_top

    top = set_trainable_top(ctx.classifier.get_layer(BASE_LAYER), ctx.base.blocks, params.unfreeze)
    base_in_inference(ctx.classifier, True)
    detail = f"top {len(top)} of {len(ctx.base.blocks)} blocks trainable ({', '.join(b.name for b in top)})"
    return ctx.classifier, detail


def run(ctx, index: int, params: Finetune):
    from tlkit.engine import (
        frozen as features,  # TensorFlow: imported when a stage runs, so checking a recipe stays fast
    )

    model, detail = prepare(ctx, params)
    return features.fit_frozen_once(ctx, index, "finetune", params, model, detail)


STAGES.add("finetune", StageKind("finetune", Finetune, run, "the top N blocks of the base unfrozen and trained",
                                 describe, prepare=prepare))
