"""`finetune`: the top `unfreeze` blocks of the base trained with the head, BatchNorm kept in
inference mode (`tlkit.blocks.set_trainable_top`); with `layer_decay` F below 1, each block down
from the top trains at F times the rate of the one above it (the head at the stage's rate).

The frozen blocks below compute the same outputs every epoch, so unless augmentation changes
the images every epoch, they run once over the images and the epochs train the rest on their
outputs (held in memory, when the image cache may hold things there): the same steps on the
same numbers, without the forward pass through most of the base."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tlkit.core.kinds import STAGES, StageKind, StageParams

log = logging.getLogger(__name__)
# The outputs are a constant of the training set's tf.data graph, which distribution serializes
# (protocol buffers stop at 2 GB).
FROZEN_BUDGET = 1 << 30


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


def prepare(ctx, params: Finetune):
    """The classifier with the top `unfreeze` blocks of its base trainable."""
    # TensorFlow: imported when a stage runs, so checking a recipe stays fast
    from tlkit.blocks import set_trainable_top
    from tlkit.core.run import BASE_LAYER, base_in_inference

    top = set_trainable_top(ctx.classifier.get_layer(BASE_LAYER), ctx.base.blocks, params.unfreeze)
    base_in_inference(ctx.classifier, True)
    detail = f"top {len(top)} of {len(ctx.base.blocks)} blocks trainable ({', '.join(b.name for b in top)})"
    return ctx.classifier, detail


def run(ctx, index: int, params: Finetune):
    model, detail = prepare(ctx, params)
    once = frozen_once(ctx, index)
    if once is None:
        return ctx.fit(index, "finetune", params, model, detail=detail)
    rest, data = once
    return ctx.fit(index, "finetune", params, rest, data, detail=f"{detail}, the frozen layers run once",
                   sharing=ctx.classifier)


def frozen_once(ctx, index: int):
    """(the trainable part of the classifier, its (train, val) datasets of the frozen part's
    outputs), or None where the frozen part must run every epoch (a log line says why)."""
    # TensorFlow: imported when a stage runs, so checking a recipe stays fast
    from tlkit import features, imagecache
    from tlkit.core.run import BASE_LAYER

    r = ctx.recipe
    if ctx.augmentation.active:
        log.info("stage %d (finetune): augment=%s changes the images every epoch: the frozen layers run every epoch",
                 index, r.augment)
        return None
    if r.cache_images in ("disk", "none"):  # asked to hold nothing per image in memory
        return None
    with ctx.strategy.scope():  # a model fitted under a strategy is made in its scope
        split = features.frozen_split(ctx.classifier, BASE_LAYER)
    if split is None:
        log.info("stage %d (finetune): no single layer output separates the frozen layers from the trainable "
                 "ones: the frozen layers run every epoch", index)
        return None
    frozen, rest = split
    images = len(ctx.train) + len(ctx.val)
    size = images * int(np.prod(frozen.output_shape[1:])) * np.dtype(frozen.output.dtype).itemsize
    budget = min(FROZEN_BUDGET, imagecache.memory_budget_of())
    if size > budget:
        log.info("stage %d (finetune): the frozen layers' outputs (%.0f MB) are more than the %.0f MB held in "
                 "memory: they run every epoch", index, size / 2**20, budget / 2**20)
        return None
    train, val = (features.outputs(frozen, ctx.dataset(which, ordered=True)) for which in ("train", "val"))
    log.info("stage %d (finetune): the frozen layers ran once over %d images (%s, %.0f MB in memory)", index,
             images, frozen.layers[-1].name, size / 2**20)
    # shuffled as the images would be (same seed, same count): the same batches
    return rest, (features.dataset(train, ctx.train.labels, r.batch_size, shuffle=True, seed=r.seed),
                  features.dataset(val, ctx.val.labels, r.batch_size))


STAGES.add("finetune", StageKind("finetune", Finetune, run, "the top N blocks of the base unfrozen and trained",
                                 prepare=prepare))
