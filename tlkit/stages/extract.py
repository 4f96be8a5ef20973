"""`extract`: the head stage on features the frozen base computes once, or finds in the on-disk
cache (`tlkit.engine.frozen`); the head trained on them is the classifier's own."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from tlkit.recipe.kinds import STAGES, StageKind, StageParams, amount
from tlkit.stages.head import new_head, prepare

log = logging.getLogger(__name__)


@dataclass
class Extract(StageParams):
    epochs: int = 10


def describe(params: Extract, recipe, blocks: list[str], classes: int) -> str:
    return (f"run the frozen base once over the images, cache the features, train {new_head(recipe, classes)} on "
            f"them, {amount(params)}")


def run(ctx, index: int, params: Extract):
    # TensorFlow: imported when a stage runs, so checking a recipe stays fast
    from tlkit.data.pipeline import targets
    from tlkit.engine import frozen as features

    model, detail = prepare(ctx, params)  # the head stage's: the base frozen
    if ctx.augmentation.active:
        log.info("stage %d (extract): augment=%s gives new images every epoch, so features are not cached: "
                 "training the head on the frozen base, as a head stage does", index, ctx.recipe.augment)
        return ctx.fit(index, "extract", params, model, detail=detail)
    r = ctx.recipe
    found = features.extract(ctx.base, ctx.train.files + ctx.val.files, ctx.image_size, pooling=r.pooling,
                             batch_size=r.batch_size, cache=r.cache, verbose=ctx.verbose)
    train, val = found[:len(ctx.train)], found[len(ctx.train):]
    with ctx.strategy.scope():  # a model fitted under a strategy is made in its scope
        head = features.feature_head(ctx.classifier)
    return ctx.fit(index, "extract", params, head, (
        features.dataset(train, targets(ctx.train), r.batch_size, shuffle=True, seed=r.seed),
        features.dataset(val, targets(ctx.val), r.batch_size),
    ), detail="new head on the cached features", sharing=ctx.classifier)


# lr-find sweeps it as the head stage it equals (the same trainable weights), on the images
STAGES.add("extract", StageKind("extract", Extract, run,
                                "base frozen, its features computed once (cached on disk), a new head trained on them",
                                describe, prepare=prepare))
