"""What a stage ends with (`StageResult`), and a finished run's history.json, metrics.json and
closing lines."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import keras

from tlkit._util.io import write_json_atomic
from tlkit.recipe.kinds import StageParams
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    stage: StageParams
    kind: str
    history: dict[str, list[float]]
    val_loss: float
    val_accuracy: float | None  # None for a stage that trains no classifier (autoencoder)
    optimizer: keras.optimizers.Optimizer | None
    seconds: float


def log_summary(ctx) -> None:
    """The end of a run on the console: where its models are, its best epoch, what to run next."""
    epochs = [(loss, i, epoch) for i, r in enumerate(ctx.results, start=1)
              for epoch, loss in enumerate(r.history.get("val_loss", []), start=1)]
    log.info("run directory %s: model.keras (the model as the run ended)", ctx.out)
    if epochs:
        loss, stage, epoch = min(epochs)
        log.info("best epoch: stage %d (%s), epoch %d, val_loss %.4f: checkpoints/best.keras", stage,
                 ctx.results[stage - 1].kind, epoch, loss)
    log.info("next: tlkit evaluate --model %s --data DIR;  tlkit export --model %s --out exported/NAME",
             ctx.out, ctx.out)


def write_results(ctx) -> None:
    """history.json and metrics.json of a finished run."""
    # a stage's seconds in history.json, not metrics.json: the same seed gives the same metrics.json
    write_json_atomic(RunDir(ctx.out).history, [{"kind": r.kind, "seconds": round(r.seconds, 3), **r.history}
                                                for r in ctx.results])
    write_json_atomic(RunDir(ctx.out).metrics, {
        "stages": [
            {"stage": i, "kind": r.kind, "epochs": r.stage.epochs, "learning_rate": r.stage.learning_rate,
             "val_accuracy": r.val_accuracy, "val_loss": r.val_loss}
            for i, r in enumerate(ctx.results, start=1)
        ],
        "classes": ctx.classes,
        # fit's class_weight, by class name (recipe.class_weight); null when off
        "class_weights": dict(zip(ctx.classes, ctx.class_weight.values())) if ctx.class_weight else None,
        "train_images": len(ctx.train),
        "val_images": len(ctx.val),
    })

