"""`finetune`: the top `unfreeze` blocks of the base trained with the head, BatchNorm kept in
inference mode (`tlkit.blocks.set_trainable_top`)."""
from __future__ import annotations

from dataclasses import dataclass

from tlkit.core.kinds import STAGES, StageKind, StageParams


@dataclass
class Finetune(StageParams):
    unfreeze: int = 1  # blocks of the base, counted from the top

    def problem(self) -> str | None:
        if self.unfreeze < 1:
            return f"unfreeze must be >= 1 (blocks of the base to train), not {self.unfreeze}: use --unfreeze N"
        return super().problem()


def run(ctx, index: int, params: Finetune):
    # TensorFlow: imported when a stage runs, so checking a recipe stays fast
    from tlkit.blocks import set_trainable_top
    from tlkit.core.run import BASE_LAYER

    top = set_trainable_top(ctx.classifier.get_layer(BASE_LAYER), ctx.base.blocks, params.unfreeze)
    detail = f"top {len(top)} of {len(ctx.base.blocks)} blocks trainable ({', '.join(b.name for b in top)})"
    return ctx.fit(index, "finetune", params, detail=detail)


STAGES.add("finetune", StageKind("finetune", Finetune, run, "the top N blocks of the base unfrozen and trained"))
