"""Running a recipe: the run context its stages share, the head, `configure`, the one place that
compiles and fits, and `run_recipe`, which every job goes through."""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit import augment as tlaugment
from tlkit import data as tldata
from tlkit import datareport, training
from tlkit.bases import Base, load_base
from tlkit.core.kinds import STAGES, StageKind, StageParams, stage_params
from tlkit.errors import TlkitError
from tlkit.io import save_model_atomic, write_json_atomic
from tlkit.recipe import POOLINGS, Recipe
from tlkit.rundir import write_labels

log = logging.getLogger(__name__)

BASE_LAYER = "base"


def configure(recipe: Recipe) -> tf.distribute.Strategy:
    """Seeds, determinism and precision, before anything is built; returns the distribution
    strategy in whose scope every model of the run is built, compiled and fitted."""
    keras.utils.set_random_seed(recipe.seed)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    # Deterministic kernels make the same seed give the same metrics on the CPU; on a GPU some
    # ops have no deterministic kernel, so there speed wins.
    if not gpu:
        tf.config.experimental.enable_op_determinism()
    if recipe.mixed_precision and not gpu:
        log.warning("--mixed-precision on a CPU makes training slower, not faster (float16 is emulated): "
                    "it pays on a GPU")
    keras.mixed_precision.set_global_policy("mixed_float16" if recipe.mixed_precision else "float32")
    return tf.distribute.get_strategy()


HEAD_POOLING = dict(zip(POOLINGS, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
                                    keras.layers.Flatten)))


def build_classifier(base: Base, num_classes: int, dropout: float, pooling: str = "avg") -> keras.Model:
    """The base, called in inference mode, under a new head (pooling, dropout, softmax)."""
    base.model.name = BASE_LAYER
    inputs = keras.Input((*base.model.input_shape[1:3], base.channels), name="image")
    # training=False is recorded in the graph: BatchNorm inside the base stays in inference mode
    # in every stage, including after its layers are unfrozen.
    x = base.model(inputs, training=False)
    x = head_layers(x, num_classes, dropout, pooling)
    return keras.Model(inputs, x, name=f"{base.name}_classifier")


def head_layers(features, num_classes: int, dropout: float, pooling: str = "avg"):
    """`pooling` reduces a feature map to a vector: "avg" or "max" over all positions, or
    "flatten", which keeps where each feature is (small maps of small images: digits)."""
    x = features
    if len(x.shape) == 4:
        x = HEAD_POOLING[pooling](name="head_pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output under mixed precision, for a numerically stable softmax and loss
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="head_dense")(x)


class BestCheckpoint(keras.callbacks.Callback):
    """The model at the lowest validation loss over all stages of a run.

    Our own rather than ModelCheckpoint because it writes atomically and keeps its best value
    across the several `fit` calls of a recipe. `model` is what it saves, which may be more than
    the model being fitted (the whole classifier while an extract stage fits its head).
    """

    def __init__(self, path: Path, model: keras.Model):
        super().__init__()
        self.path = path
        self.saved = model
        self.best = np.inf

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = loss
            save_model_atomic(self.saved, self.path)


@dataclass
class StageResult:
    stage: StageParams
    kind: str
    history: dict[str, list[float]]
    val_loss: float
    val_accuracy: float | None  # None for a stage that trains no classifier (autoencoder)
    optimizer: keras.optimizers.Optimizer | None
    seconds: float


@dataclass
class RunContext:
    """What the stages of one run share. `model` is built on first use from `base`, so a stage
    that replaces the base (autoencoder) can run before the head is made."""

    recipe: Recipe
    base: Base
    classes: list[str]
    train: tldata.ImageSet
    val: tldata.ImageSet
    image_size: tuple[int, int]
    out: Path
    strategy: tf.distribute.Strategy
    verbose: str | int = "auto"
    model: keras.Model | None = None
    results: list[StageResult] = field(default_factory=list)
    best: float = np.inf  # the lowest validation loss of the classifier so far, over all stages
    decoded: dict = field(default_factory=dict)  # the decode-once image cache of each split, for every stage
    class_weight: dict[int, float] | None = None  # fit's class_weight (recipe.class_weight), for every stage

    @property
    def classifier(self) -> keras.Model:
        if self.model is None:
            with self.strategy.scope():
                self.model = build_classifier(self.base, len(self.classes), self.recipe.dropout, self.recipe.pooling)
        return self.model

    @property
    def augmentation(self) -> tlaugment.Augmentation:
        return tlaugment.of(self.recipe)

    def dataset(self, which: str) -> tf.data.Dataset:
        """The "train" or "val" images; only training images are shuffled and augmented."""
        training = which == "train"
        r = self.recipe
        images = self.train if training else self.val
        key = (which, self.image_size, self.base.channels)
        if key not in self.decoded:
            self.decoded[key] = tldata.decode_once(images, self.image_size, self.base.channels, r.cache_images)
        return tldata.make_dataset(
            images, self.image_size, r.batch_size, channels=self.base.channels, shuffle=training,
            augment=self.augmentation if training else False, seed=r.seed, cache=self.decoded[key],
        )

    def compile(self, model: keras.Model, params: StageParams, learning_rate, loss=None,
                metrics=("accuracy",)) -> keras.optimizers.Optimizer:
        """Compile `model` for a stage, inside the run's strategy scope, with a fresh Adam (every
        stage gets new optimizer state) at `learning_rate` (a float or a schedule), scaled per
        block by the stage's `layer_decay`, and `loss` (None: the classifier's cross-entropy,
        with the recipe's label smoothing, on soft labels when MixUp or CutMix mix them)."""
        r = self.recipe
        soft = self.augmentation.mixes
        if loss is None:
            loss = (training.Crossentropy(r.label_smoothing) if r.label_smoothing or soft
                    else "sparse_categorical_crossentropy")
        # Keras' "accuracy" turns sparse or categorical by the shape of the first labels it sees:
        # categorical on mixed training labels, it would then misread integer validation labels
        metrics = [training.accuracy_metric() if m == "accuracy" and soft else m for m in metrics]
        with self.strategy.scope():
            scales = self.layer_scales(model, getattr(params, "layer_decay", 1.0))
            optimizer = (training.ScaledAdam(learning_rate, scales) if scales
                         else keras.optimizers.Adam(learning_rate))
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
        return optimizer

    def layer_scales(self, model: keras.Model, decay: float) -> dict[str, float]:
        """The learning-rate factor of each trainable variable of the base in `model` (by its
        path): the top trainable block of the base's block map 1, the next one down `decay`, the
        next `decay`**2...; the head's variables are left at 1. {} when decay is 1."""
        if decay == 1.0 or model is not self.model:
            return {}
        base = model.get_layer(BASE_LAYER)
        trainable = [b for b in self.base.blocks if any(base.get_layer(n).trainable_weights for n in b.layers)]
        scales = {}
        for depth, block in enumerate(reversed(trainable)):
            for name in block.layers:
                scales.update({v.path: decay ** depth for v in base.get_layer(name).trainable_weights})
        paths = [v.path for v in model.trainable_variables]
        if len(set(paths)) != len(paths):
            raise ValueError(f"{model.name}: two trainable variables share a path, so layer decay cannot tell them "
                             "apart")
        log.info("layer decay %g: %s", decay, ", ".join(f"{b.name} x{decay ** d:.3g}"
                                                     for d, b in enumerate(reversed(trainable))))
        return scales

    def fit(self, index: int, kind: str, params: StageParams, model: keras.Model | None = None,
            data: tuple[tf.data.Dataset, tf.data.Dataset] | None = None, *,
            loss=None, metrics=("accuracy",), checkpoint: bool = True, detail: str = "") -> StageResult:
        """The one place that compiles and fits: `model` (the classifier by default), compiled by
        `compile` with the stage's learning-rate schedule, on `data` (train, val; default the
        images), with the recipe's class weights when `loss` is the classifier's, and the
        callbacks every stage has: the learning rate of every step (history and TensorBoard),
        TensorBoard, early stopping when the recipe asks for it, and, with `checkpoint`, the best
        classifier of the run. `detail` says what the stage trains, for the line that opens it."""
        schedule = "" if params.schedule == "constant" and not params.warmup_epochs else \
            f" ({params.schedule}" + (f", warmup {params.warmup_epochs:g} epochs)" if params.warmup_epochs else ")")
        log.info("stage %d/%d %s: %s%d epochs, lr %g%s", index, len(self.recipe.stages), kind,
                 f"{detail}, " if detail else "", params.epochs, params.learning_rate, schedule)
        model = model or self.classifier
        train, val = data or (self.dataset("train"), self.dataset("val"))
        steps = int(train.cardinality())
        if steps < 1:  # unknown or infinite: count the batches of the training images
            steps = -(-len(self.train) // self.recipe.batch_size)
        rate = training.schedule(params.schedule, params.learning_rate, steps, params.epochs, params.warmup_epochs)
        classifying = loss is None
        optimizer = self.compile(model, params, rate, loss, metrics)
        rates = training.LearningRateLog()
        callbacks: list[keras.callbacks.Callback] = [
            rates, keras.callbacks.TensorBoard(str(self.out / "logs" / f"{index}-{kind}"), update_freq="batch")]
        if checkpoint:
            best = BestCheckpoint(self.out / "checkpoints" / "best.keras", self.classifier)
            best.best = self.best
            callbacks.append(best)
        if self.recipe.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.recipe.early_stopping, restore_best_weights=True))
        start = time.perf_counter()
        history = model.fit(
            train, validation_data=val, epochs=params.epochs, callbacks=callbacks, verbose=self.verbose,
            class_weight=self.class_weight if classifying else None,
            shuffle=False,  # the dataset shuffles
        ) if params.epochs else None
        if checkpoint:
            self.best = best.best
        scores = model.evaluate(val, verbose=0, return_dict=True)
        val_loss, val_accuracy = float(scores["loss"]), scores.get("accuracy")
        result = StageResult(params, kind, {**history.history, "step_learning_rate": rates.steps} if history else {},
                             val_loss, None if val_accuracy is None else float(val_accuracy), optimizer,
                             time.perf_counter() - start)
        self.results.append(result)
        accuracy = "" if val_accuracy is None else f"val_accuracy={val_accuracy:.4f} "
        log.info("stage %d (%s): %sval_loss=%.4f", len(self.results), kind, accuracy, val_loss)
        return result


def load_data(recipe: Recipe, labelled: bool = True, progress: tldata.Progress | None = None):
    """Scan and check the data (every file, before any training), split it and report on it:
    (classes, train, val, DataReport). Unlabelled data (for stages that need no labels) may have
    class sub-folders or not."""
    if not recipe.data:
        raise TlkitError("no data: pass --data DIR (a folder with one sub-folder of images per class)"
                         if labelled else "no data: pass --data DIR (a folder of images, with or without sub-folders)")
    if not labelled:
        images = tldata.scan_unlabeled(recipe.data, skip_bad=recipe.skip_bad, progress=progress)
        train, val = tldata.split(images, recipe.val_split, recipe.seed)
        report = datareport.DataReport.of(train, val)
    else:
        train, val, report = datareport.prepare(
            recipe.data, val_data=recipe.val_data, val_split=recipe.val_split, seed=recipe.seed,
            skip_bad=recipe.skip_bad, progress=progress)
    report.log()
    return train.classes if labelled else [], train, val, report


BaseBuilder = Callable[[list[str]], tuple[Base, "keras.Model | None"]]


def run_recipe(recipe: Recipe, base: Base | None, out: str | Path, *, model: keras.Model | None = None,
               build: BaseBuilder | None = None, data=None, verbose: str | int = "auto") -> RunContext:
    """Run every stage of the resolved `recipe` (see `tlkit.core.kinds.resolve`) and write the
    run directory `out`.

    The base is `base`, else what `build(classes)` returns (a base, and the classifier when the
    job makes its own), else what the first stage makes (autoencoder), else the recipe's base
    loaded by name; all of it is built inside the run's strategy scope. `data` is (classes,
    train, val), loaded from the recipe unless given.
    """
    ctx, report = context(recipe, base, out, model=model, build=build, data=data, verbose=verbose)
    labelled = any(STAGES.get(stage.kind).needs_labels for stage in recipe.stages)
    ctx.out.mkdir(parents=True, exist_ok=True)
    if labelled:
        log.info("%d training and %d validation images in %d classes; base %s (%s, weights %s); run directory %s",
                 len(ctx.train), len(ctx.val), len(ctx.classes), ctx.base.name, ctx.base.source, ctx.base.weights,
                 ctx.out)
    else:
        log.info("%d training and %d validation images; run directory %s", len(ctx.train), len(ctx.val), ctx.out)
    if ctx.class_weight:
        log.info("class weights (%s): %s", recipe.class_weight,
                 ", ".join(f"{c} {w:.3g}" for c, w in zip(ctx.classes, ctx.class_weight.values())))
    if labelled:
        write_labels(ctx.out / "labels.txt", ctx.classes)
    ctx.recipe.save(ctx.out / "recipe.toml")
    report.save(ctx.out / datareport.REPORT_FILE)
    for index, stage in enumerate(ctx.recipe.stages, start=1):
        STAGES.get(stage.kind).run(ctx, index, stage_params(stage))
    if labelled:
        # after the stages: an autoencoder stage replaces the base
        write_json_atomic(ctx.out / "blocks.json", {block.name: list(block.layers) for block in ctx.base.blocks})
        save_model_atomic(ctx.classifier, ctx.out / "model.keras")
    write_results(ctx)
    return ctx


def context(recipe: Recipe, base: Base | None, out: str | Path, *, model: keras.Model | None = None,
            build: BaseBuilder | None = None, data=None, verbose: str | int = "auto"
            ) -> tuple[RunContext, datareport.DataReport]:
    """What `run_recipe` does before the first stage, writing nothing: configure, load the data,
    build the base; the run's context (with the recipe resolved against the base) and the data
    report."""
    kinds: list[StageKind] = [STAGES.get(stage.kind) for stage in recipe.stages]
    params = [stage_params(stage, f"recipe {recipe.name}, stage {i}") for i, stage in enumerate(recipe.stages, 1)]
    labelled = any(kind.needs_labels for kind in kinds)
    makes_base = bool(kinds) and kinds[0].make_base is not None
    if base is None and build is None and not makes_base and not recipe.base:
        raise TlkitError("no base: pass --base NAME (see `tlkit bases`)")
    strategy = configure(recipe)
    if data:
        classes, train, val = data
        report = datareport.DataReport.of(train, val)
    else:
        progress = datareport.console_progress() if verbose else None
        classes, train, val, report = load_data(recipe, labelled, progress)
    with strategy.scope():
        if base is None and build is not None:
            base, model = build(classes)
        elif base is None and makes_base:
            base = kinds[0].make_base(recipe, params[0])
        elif base is None:
            size = (recipe.image_size, recipe.image_size) if recipe.image_size else None
            base = load_base(recipe.base, recipe.weights, size, recipe.base_layer, recipe.hub_range)
    image_size = tuple(base.model.input_shape[1:3])
    if None in image_size:
        image_size = base.input_size
    resolved = dataclasses.replace(recipe, base=recipe.base or base.name, image_size=image_size[0])
    ctx = RunContext(resolved, base, classes, train, val, image_size, Path(out), strategy,
                     verbose, model)
    if labelled:
        ctx.class_weight = training.class_weights(recipe.class_weight, classes, train.counts())
    return ctx, report


def write_results(ctx: RunContext) -> None:
    """history.json and metrics.json of a finished run."""
    write_json_atomic(ctx.out / "history.json", [{"kind": r.kind, **r.history} for r in ctx.results])
    write_json_atomic(ctx.out / "metrics.json", {
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
