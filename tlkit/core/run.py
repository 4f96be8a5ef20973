"""Running a recipe: the run context its stages share, the head, `configure`, the one place that
compiles and fits, and `run_recipe`, which every job goes through."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit import data as tldata
from tlkit import datareport
from tlkit.bases import Base, load_base
from tlkit.compat import built_from_shapes, mean_logs_over_workers, set_op_determinism
from tlkit.core.kinds import STAGES, StageKind, StageParams, stage_params
from tlkit.curves import TrainingCurves
from tlkit.errors import TlkitError
from tlkit.io import save_model_atomic, write_json_atomic
from tlkit.recipe import POOLINGS, Recipe
from tlkit.report import write_run_report
from tlkit.rundir import write_labels

log = logging.getLogger(__name__)

BASE_LAYER = "base"


def configure(recipe: Recipe) -> tf.distribute.Strategy:
    """Seeds, determinism and precision, before anything is built; returns the distribution
    strategy in whose scope every model of the run is built, compiled and fitted."""
    # first: a multi-worker strategy can only be made before TensorFlow has run anything
    strategy = distribution_strategy(recipe.distribute)
    keras.utils.set_random_seed(recipe.seed)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    # Deterministic kernels make the same seed give the same metrics on the CPU; on a GPU some
    # ops have no deterministic kernel, so there speed wins. Keras compiles no XLA step while they
    # are on (its `model_supports_jit`), so --jit turns them off.
    set_op_determinism(not gpu and not recipe.jit)
    if recipe.jit and not gpu:
        log.info("--jit: op determinism is off (Keras runs no XLA step with it), so the same seed may give "
                 "slightly different metrics")
    if recipe.mixed_precision and not gpu:
        log.warning("--mixed-precision on a CPU makes training slower, not faster (float16 is emulated): "
                    "it pays on a GPU")
    keras.mixed_precision.set_global_policy("mixed_float16" if recipe.mixed_precision else "float32")
    return strategy


_strategies: dict[str, tf.distribute.Strategy] = {}  # one of each kind per process: collectives are set up once


def distribution_strategy(distribute: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy `distribute` names (Recipe.distribute). "mirrored" replicates
    over every GPU of this machine, or over its logical CPU devices when it has no GPU and more
    than one CPU device is configured (tests, benchmarks); "multiworker" over the machines that
    TF_CONFIG lists, with the GPUs (or CPU) of each; "auto" is "mirrored" when more than one GPU
    is visible, else the default strategy (one device), as is "none"."""
    if distribute == "auto":
        distribute = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if distribute == "none":
        return tf.distribute.get_strategy()
    if distribute not in _strategies:
        if distribute == "mirrored":
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            _strategies[distribute] = tf.distribute.MirroredStrategy([d.name for d in devices])
        else:
            _strategies[distribute] = _multiworker()
        strategy = _strategies[distribute]
        log.info("distribute %s: %d replicas; the batch size is the global batch", distribute,
                 strategy.num_replicas_in_sync)
    return _strategies[distribute]


def _multiworker() -> tf.distribute.Strategy:
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise TlkitError("--distribute multiworker needs TF_CONFIG, set on every machine: the cluster's workers and "
                         "this machine's task (see the README, 'Several GPUs, several machines')")
    try:
        cluster = json.loads(config)["cluster"]
    except (ValueError, KeyError, TypeError) as err:
        raise TlkitError(f"TF_CONFIG is not a JSON object with a 'cluster' ({err}): see the README") from None
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as err:
        # TensorFlow sets up collective ops when its runtime starts, so the strategy must come first
        raise TlkitError("--distribute multiworker must be set up before TensorFlow has run anything in this "
                         f"process ({err}): run it in a fresh process, with tlkit's run first") from None
    mean_logs_over_workers()
    resolver = strategy.cluster_resolver
    log.info("multiworker: %s %d of the cluster %s", resolver.task_type, resolver.task_id, cluster)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's results: the only process of a single-machine run,
    the chief (or worker 0 of a cluster without one) of a multi-worker run."""
    return strategy.extended.should_checkpoint


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

    Writing a whole model costs seconds, as much as an epoch of a small dataset: a better epoch
    is kept in memory, and written when `every` seconds have passed since the last write, and
    at the end of the stage, so a crash loses at most `every` seconds of it.
    """

    def __init__(self, path: Path, model: keras.Model, every: float = 60.0):
        super().__init__()
        self.path = path
        self.saved = model
        self.best = np.inf
        self.every = every
        self.written = time.monotonic()
        self.pending: list[np.ndarray] | None = None  # the best epoch's weights, not yet written

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = loss
            self.pending = self.saved.get_weights()
        if self.pending is not None and time.monotonic() - self.written >= self.every:
            self.write()

    def on_train_end(self, logs=None):
        if self.pending is not None:
            self.write()

    def write(self):
        current = self.saved.get_weights()
        self.saved.set_weights(self.pending)
        try:
            save_model_atomic(self.saved, self.path)
        finally:
            self.saved.set_weights(current)
        self.pending = None
        self.written = time.monotonic()


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
    curves: TrainingCurves | None = None  # curves.png, redrawn after every epoch of every stage

    @property
    def classifier(self) -> keras.Model:
        if self.model is None:
            with self.strategy.scope():
                self.model = build_classifier(self.base, len(self.classes), self.recipe.dropout, self.recipe.pooling)
        return self.model

    def dataset(self, which: str, augment: bool | None = None) -> tf.data.Dataset:
        """The "train" or "val" images; only training images are shuffled and augmented."""
        training = which == "train"
        r = self.recipe
        images = self.train if training else self.val
        key = (which, self.image_size, self.base.channels)
        if key not in self.decoded:
            self.decoded[key] = tldata.decode_once(images, self.image_size, self.base.channels, r.cache_images)
        return tldata.make_dataset(
            images, self.image_size, r.batch_size, channels=self.base.channels, shuffle=training,
            augment=training and (r.augment if augment is None else augment), seed=r.seed, cache=self.decoded[key],
        )

    def fit(self, index: int, kind: str, params: StageParams, model: keras.Model | None = None,
            data: tuple[tf.data.Dataset, tf.data.Dataset] | None = None, *,
            loss="sparse_categorical_crossentropy", metrics=("accuracy",), checkpoint: bool = True,
            detail: str = "") -> StageResult:
        """The one place that compiles and fits: `model` (the classifier by default), inside the
        run's strategy scope, with a fresh optimizer at the stage's own learning rate (every stage
        gets new optimizer state), `loss` and `metrics`, on `data` (train, val; default the
        images), with the callbacks every stage has: TensorBoard, early stopping when the recipe
        asks for it, and, with `checkpoint`, the best classifier of the run. `detail` says what
        the stage trains, for the line that opens it."""
        log.info("stage %d/%d %s: %s%d epochs, lr %g", index, len(self.recipe.stages), kind,
                 f"{detail}, " if detail else "", params.epochs, params.learning_rate)
        model = model or self.classifier
        train, val = (_by_element(ds) for ds in (data or (self.dataset("train"), self.dataset("val"))))
        with self.strategy.scope():
            optimizer = keras.optimizers.Adam(params.learning_rate)
            model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics), jit_compile=self.recipe.jit)
        self.curves = self.curves or TrainingCurves(self.out)
        callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.TensorBoard(str(self.out / "logs" / f"{index}-{kind}")), self.curves.stage(f"{index} {kind}")]
        if checkpoint:
            best = BestCheckpoint(self.out / "checkpoints" / "best.keras", self.classifier)
            best.best = self.best
            callbacks.append(best)
        if self.recipe.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.recipe.early_stopping, restore_best_weights=True))
        start = time.perf_counter()
        with built_from_shapes(model, train):
            history = model.fit(
                train, validation_data=val, epochs=params.epochs, callbacks=callbacks, verbose=self.verbose,
                shuffle=False,  # the dataset shuffles
            ) if params.epochs else None
            scores = model.evaluate(val, verbose=0, return_dict=True)
        if checkpoint:
            self.best = best.best
        val_loss, val_accuracy = float(scores["loss"]), scores.get("accuracy")
        result = StageResult(params, kind, history.history if history else {}, val_loss,
                             None if val_accuracy is None else float(val_accuracy), optimizer,
                             time.perf_counter() - start)
        self.results.append(result)
        accuracy = "" if val_accuracy is None else f"val_accuracy={val_accuracy:.4f} "
        log.info("stage %d (%s): %sval_loss=%.4f", len(self.results), kind, accuracy, val_loss)
        return result


def _by_element(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset`, split between the workers of a multi-worker run batch by batch (each worker its
    share of every global batch), not file by file: a dataset of paths or of decoded images reads
    no files of its own that TensorFlow could hand out. Other strategies ignore the option."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


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
    loaded by name; all of it is built inside the run's strategy scope (a `base` or `model`
    passed in must have been built in the scope of `configure(recipe)`). `data` is (classes,
    train, val), loaded from the recipe unless given.

    In a multi-worker run every worker runs every step (the collectives need them all), but only
    the chief writes `out`; the others write to a temporary directory, deleted at the end, as
    Keras' own callbacks do.
    """
    out = Path(out)
    kinds: list[StageKind] = [STAGES.get(stage.kind) for stage in recipe.stages]
    params = [stage_params(stage, f"recipe {recipe.name}, stage {i}") for i, stage in enumerate(recipe.stages, 1)]
    labelled = any(kind.needs_labels for kind in kinds)
    makes_base = bool(kinds) and kinds[0].make_base is not None
    if base is None and build is None and not makes_base and not recipe.base:
        raise TlkitError("no base: pass --base NAME (see `tlkit bases`)")
    strategy = configure(recipe)
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        # Keras averages the loss on each replica, then over replicas: uneven shares weigh unevenly
        log.warning("batch size %d does not split evenly over %d replicas: each step then weighs images "
                    "unevenly; pass a multiple of %d", recipe.batch_size, replicas, replicas)
    if not chief:
        out = Path(tempfile.mkdtemp(prefix="tlkit-worker-"))
        log.info("not the chief: writing to %s, deleted at the end; the chief writes the run directory", out)
    # the base before the data: a base that cannot load (no weights offline, an image size it
    # cannot take) is reported before minutes of scanning
    with strategy.scope():
        if base is None and build is None and makes_base:
            base = kinds[0].make_base(recipe, params[0])
        elif base is None and build is None:
            size = (recipe.image_size, recipe.image_size) if recipe.image_size else None
            base = load_base(recipe.base, recipe.weights, size, recipe.base_layer, recipe.hub_range)
    if base is not None:
        check_unfreeze(recipe, base)
    if data:
        classes, train, val = data
        report = datareport.DataReport.of(train, val)
    else:
        progress = datareport.console_progress() if verbose else None
        classes, train, val, report = load_data(recipe, labelled, progress)
    if base is None:
        with strategy.scope():
            base, model = build(classes)
    image_size = tuple(base.model.input_shape[1:3])
    if None in image_size:
        image_size = base.input_size
    resolved = dataclasses.replace(recipe, base=recipe.base or base.name, image_size=image_size[0])
    out.mkdir(parents=True, exist_ok=True)
    if labelled:
        log.info("%d training and %d validation images in %d classes; base %s (%s, weights %s); run directory %s",
                 len(train), len(val), len(classes), base.name, base.source, base.weights, out)
    else:
        log.info("%d training and %d validation images; run directory %s", len(train), len(val), out)
    ctx = RunContext(resolved, base, classes, train, val, image_size, out, strategy, verbose, model)
    if labelled:
        write_labels(out / "labels.txt", classes)
    resolved.save(out / "recipe.toml")
    report.save(out / datareport.REPORT_FILE)
    for index, (kind, stage) in enumerate(zip(kinds, params), start=1):
        kind.run(ctx, index, stage)
    if labelled:
        # after the stages: an autoencoder stage replaces the base
        write_json_atomic(out / "blocks.json", {block.name: list(block.layers) for block in ctx.base.blocks})
        save_model_atomic(ctx.classifier, out / "model.keras")
    write_results(ctx)
    if labelled:
        write_run_report(out, ctx.classifier, classes, train, val, resolved, ctx.results)
    if not chief:
        shutil.rmtree(out, ignore_errors=True)
    return ctx


def check_unfreeze(recipe: Recipe, base: Base) -> None:
    """Every stage's `unfreeze` against the blocks of the loaded base, before any stage trains."""
    for number, stage in enumerate(recipe.stages, start=1):
        unfreeze = stage.params.get("unfreeze")
        if isinstance(unfreeze, int) and unfreeze > len(base.blocks):
            raise TlkitError(
                f"recipe {recipe.name}, stage {number}: cannot unfreeze {unfreeze} blocks: base {base.name} has "
                f"{len(base.blocks)} ({', '.join(b.name for b in base.blocks)}); choose --unfreeze between 1 and "
                f"{len(base.blocks)}")


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
        "train_images": len(ctx.train),
        "val_images": len(ctx.val),
    })
