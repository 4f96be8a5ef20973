"""Running a recipe: the run context its stages share, the head, `configure`, the one place that
compiles and fits, and `run_recipe`, which every job goes through."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit import augment as tlaugment
from tlkit import data as tldata
from tlkit import datareport, runguard, training
from tlkit.bases import Base, load_base
from tlkit.compat import (ITERATORS_PER_EPOCH, built_from_shapes, keep_inference_mode, keeps_inference_mode,
                          mean_logs_over_workers, set_op_determinism)
from tlkit.core.kinds import STAGES, StageKind, StageParams, check_unfreeze, needs_base, resolve, stage_params
from tlkit.curves import TrainingCurves
from tlkit.errors import TlkitError
from tlkit.io import cache_root, save_model_atomic, write_atomic, write_json_atomic
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


def check_replica_batches(strategy: tf.distribute.Strategy, batch_size: int, counts: dict[str, int]) -> None:
    """Refuse a distributed run on CPUs in which a replica would get an empty batch while
    TensorFlow's oneDNN kernels are on: they give a convolution over an empty batch the shape of its
    input (`Incompatible shapes: [0,1,1,320] vs. [1280]` at the next layer), and the other replicas
    then wait on the collective for ever. A last batch of r images goes to the first r replicas."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1 or os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" or tf.config.list_logical_devices("GPU"):
        return
    for which, count in counts.items():
        if 0 < count % batch_size < replicas:
            raise TlkitError(
                f"the {which} images' last batch has {count % batch_size} image(s) for {replicas} replicas, and "
                "TensorFlow's oneDNN CPU kernels get an empty batch wrong: start the process with "
                "TF_ENABLE_ONEDNN_OPTS=0 (the tlkit command does this for --distribute), or a batch size whose "
                f"last batch of the {count} images has at least {replicas}")


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


def tf_config_task() -> tuple[str, int] | None:
    """This process's task in TF_CONFIG, (type, index), as TensorFlow reads it, without making a
    strategy; None when it names none."""
    try:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    except ValueError:  # not JSON: making the strategy says so
        return None
    return (resolver.task_type, resolver.task_id or 0) if resolver.task_type else None


def worker_folder(run: str | Path, task_type: str, index: int) -> Path:
    """Where a worker other than the chief of a multi-worker run writes its own copy of the run
    that the chief writes into `run`: under this machine's tlkit cache ($TLKIT_CACHE, else
    ~/.cache/tlkit), named by `run`'s absolute path and the task, so that `--resume RUN` on that
    machine finds the resume state it kept there with no file shared between the machines, and
    nothing of it lies where results do."""
    run = Path(run).resolve()
    key = hashlib.sha256(str(run).encode()).hexdigest()[:12]
    return cache_root() / "workers" / f"{run.name}-{task_type}{index}-{key}"


def check_same_resume_state(strategy: tf.distribute.Strategy, state: ResumeState | None, run: Path) -> None:
    """Refuse to resume a multi-worker run whose workers did not all save the same epoch: each
    restores its own copy of the state, and copies of different epochs would make their variables
    and data order diverge. It can happen: every worker writes its copy at an epoch's end with no
    collective between the writes, so a crash may come after one worker's write and before
    another's (never more than one write apart: the next epoch's first step needs them all).
    A collective itself, so every worker must call it, at the same point of the run."""
    here = (state.stage, state.epoch) if state else (0, -1)
    mine = tf.constant([here], tf.int64)
    every = strategy.gather(strategy.experimental_distribute_values_from_function(lambda _: mine), axis=0).numpy()
    positions = sorted({tuple(int(x) for x in row) for row in every})
    if len(positions) > 1:
        said = ", ".join("no state" if epoch < 0 else f"stage {stage} epoch {epoch}" for stage, epoch in positions)
        raise TlkitError(f"the workers saved {run} at different points ({said}; a crash came between their "
                         "writes): every worker saves the same state, so copy the checkpoints/resume folder of the "
                         "one furthest on over the others' (each logs where it keeps it), then resume again")


HEAD_POOLING = dict(zip(POOLINGS, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D,
                                    keras.layers.Flatten)))


def build_classifier(base: Base, num_classes: int, dropout: float, pooling: str = "avg") -> keras.Model:
    """The base, called in inference mode, under a new head (pooling, dropout, softmax)."""
    base.model.name = BASE_LAYER
    inputs = keras.Input((*base.model.input_shape[1:3], base.channels), name="image")
    # inference mode in the head and finetune stages (`base_in_inference`): BatchNorm keeps its
    # statistics, dropout inside the base is off, as the frozen base's features were at extraction
    x = base.model(inputs, training=False)
    x = head_layers(x, num_classes, dropout, pooling)
    return keras.Model(inputs, x, name=f"{base.name}_classifier")


def base_in_inference(classifier: keras.Model, on: bool) -> None:
    """Whether the base inside `classifier` stays in inference mode while the classifier trains
    (head and finetune stages) or trains with it (train stage); see compat.keep_inference_mode."""
    keep_inference_mode(classifier.get_layer(BASE_LAYER), on)


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
        self.changing: list = []  # the weights the stage can change (not those of a base it keeps fixed)
        self.pending: list[np.ndarray] | None = None  # their values at the best epoch, not yet written

    def on_train_begin(self, logs=None):
        fixed = _fixed_variables(self.saved)
        self.changing = [v for v in self.saved.weights if id(v) not in fixed]

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = loss
            self.pending = [v.numpy() for v in self.changing]
        if self.pending is not None and time.monotonic() - self.written >= self.every:
            self.write()

    def on_train_end(self, logs=None):
        if self.pending is not None:
            self.write()

    def write(self):
        current = [v.numpy() for v in self.changing]
        for variable, value in zip(self.changing, self.pending):
            variable.assign(value)
        try:
            save_model_atomic(self.saved, self.path)
        finally:
            for variable, value in zip(self.changing, current):
                variable.assign(value)
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
    curves: TrainingCurves | None = None  # curves.png, redrawn during every stage
    class_weight: dict[int, float] | None = None  # fit's class_weight (recipe.class_weight), for every stage
    job: str = "finetune"  # the job that made the run, for the command that resumes it
    resume: ResumeState | None = None  # where a resumed run goes on

    @property
    def classifier(self) -> keras.Model:
        if self.model is None:
            with self.strategy.scope():
                self.model = build_classifier(self.base, len(self.classes), self.recipe.dropout, self.recipe.pooling)
        return self.model

    @property
    def augmentation(self) -> tlaugment.Augmentation:
        return tlaugment.of(self.recipe)

    def dataset(self, which: str, ordered: bool = False) -> tf.data.Dataset:
        """The "train" or "val" images; only training images are shuffled and augmented, and not
        `ordered` ones (for one pass of a fixed function over the set)."""
        training = which == "train" and not ordered
        r = self.recipe
        images = self.train if which == "train" else self.val
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
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=self.recipe.jit)
        return optimizer

    def layer_scales(self, model: keras.Model, decay: float) -> dict[str, float]:
        """The learning-rate factor of each trainable variable of the base in `model` (by its
        path; `model` is the classifier or shares its layers): the top trainable block of the
        base's block map 1, the next one down `decay`, the next `decay`**2...; the head's
        variables are left at 1. {} when decay is 1."""
        if decay == 1.0:
            return {}
        base = self.classifier.get_layer(BASE_LAYER)
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
            loss=None, metrics=("accuracy",), checkpoint: bool = True, detail: str = "",
            sharing: keras.Model | None = None) -> StageResult:
        """The one place that compiles and fits: `model` (the classifier by default), compiled by
        `compile` with the stage's learning-rate schedule, on `data` (train, val; default the
        images), with the recipe's class weights when `loss` is the classifier's, and the
        callbacks every stage has: the learning rate of every step (history and TensorBoard),
        TensorBoard, curves.png, early stopping when the recipe asks for it, with `checkpoint` the
        best classifier of the run, and the snapshot a resumed run goes on from. `detail` says what
        the stage trains, for the line that opens it. `sharing`: a model whose trainable variables
        `model` trains, the same in the same order (the classifier, when the finetune stage fits
        its trainable part on the frozen part's outputs), compiled with the same optimizer, so that
        its checkpoints and model.keras carry the stage's optimizer."""
        schedule = "" if params.schedule == "constant" and not params.warmup_epochs else \
            f" ({params.schedule}" + (f", warmup {params.warmup_epochs:g} epochs)" if params.warmup_epochs else ")")
        log.info("stage %d/%d %s: %s%d epoch%s, lr %g%s", index, len(self.recipe.stages), kind,
                 f"{detail}, " if detail else "", params.epochs, "" if params.epochs == 1 else "s",
                 params.learning_rate, schedule)
        model = model or self.classifier
        train, val = (_by_element(ds) for ds in (data or (self.dataset("train"), self.dataset("val"))))
        steps = int(train.cardinality())
        if steps < 1:  # unknown or infinite: count the batches of the training images
            steps = -(-len(self.train) // self.recipe.batch_size)
        rate = training.schedule(params.schedule, params.learning_rate, steps, params.epochs, params.warmup_epochs)
        classifying = loss is None
        optimizer = self.compile(model, params, rate, loss, metrics)
        if sharing is not None:
            with self.strategy.scope():
                sharing.compile(optimizer=optimizer, loss=model.loss, metrics=metrics, jit_compile=self.recipe.jit)
        rates = training.LearningRateLog()
        self.curves = self.curves or TrainingCurves(self.out)
        callbacks: list[keras.callbacks.Callback] = [
            rates, keras.callbacks.TensorBoard(str(self.out / "logs" / f"{index}-{kind}"), update_freq="batch"),
            self.curves.stage(f"{index} {kind}")]
        if checkpoint:
            best = BestCheckpoint(self.out / "checkpoints" / "best.keras", self.classifier)
            best.best = self.best
            callbacks.append(best)
        stopping = None
        if self.recipe.early_stopping:
            stopping = ResumableEarlyStopping(monitor="val_loss", patience=self.recipe.early_stopping,
                                              restore_best_weights=True)
            callbacks.append(stopping)
        done, earlier = 0, {}
        if self.resume is not None and self.resume.stage == index:
            with self.strategy.scope():  # the optimizer's variables are built here: mirrored like the model's
                done, earlier = self.resume.restore(self.saved_model(model), model, optimizer, stopping, train)
            self.curves.stages[-1] = (self.curves.stages[-1][0], {k: list(v) for k, v in earlier.items()})
            log.info("stage %d resumed after epoch %d of %d", index, done, params.epochs)
        self.resume = None
        snapshot = Snapshot(self, index, model, optimizer, stopping, earlier, best if checkpoint else None)
        callbacks.append(snapshot)
        start = time.perf_counter()
        with built_from_shapes(model, train):
            history = model.fit(
                train, validation_data=val, epochs=params.epochs, initial_epoch=done, callbacks=callbacks,
                verbose=self.verbose, class_weight=self.class_weight if classifying else None,
                shuffle=False,  # the dataset shuffles
            ) if params.epochs > done else None
            scores = model.evaluate(val, verbose=0, return_dict=True)
        if checkpoint:
            self.best = best.best
        val_loss, val_accuracy = float(scores["loss"]), scores.get("accuracy")
        result = StageResult(params, kind, {**snapshot.history, "step_learning_rate": rates.steps}, val_loss,
                             None if val_accuracy is None else float(val_accuracy), optimizer,
                             time.perf_counter() - start)
        self.results.append(result)
        accuracy = "" if val_accuracy is None else f"val_accuracy={val_accuracy:.4f} "
        log.info("stage %d (%s): %sval_loss=%.4f", len(self.results), kind, accuracy, val_loss)
        save_state(self, index + 1, 0, variables(self.saved_model(model), "model"))
        return result

    def saved_model(self, fitted: keras.Model) -> keras.Model:
        """The model whose variables hold everything trained so far: the classifier (whose head
        an extract stage fits), or, in a run without labels, the model being fitted."""
        return self.classifier if self.classes else fitted


def _by_element(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset`, split between the workers of a multi-worker run batch by batch (each worker its
    share of every global batch), not file by file: a dataset of paths or of decoded images reads
    no files of its own that TensorFlow could hand out. Other strategies ignore the option."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


RESUME_FOLDER = Path("checkpoints") / "resume"


class RunInterrupted(TlkitError):
    """Ctrl-C (or SIGTERM, tlkit.runguard) during a run: what was saved, and the command that goes on
    from there."""

    def __init__(self, out: Path, job: str, state: ResumeState | None):
        if state is None:  # `--resume` would refuse: say what works
            super().__init__(f"interrupted: {out} stopped before its first epoch ended, with nothing saved to resume "
                             f"from; run it again (--out {out} --overwrite reuses its folder)")
            return
        super().__init__(f"interrupted: {out} is saved at {state.where}; go on with: tlkit {job} --resume {out}")


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping whose count of epochs without improvement, best value and best
    weights can be saved at an epoch's end and given back to a resumed stage."""

    restored: dict | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.restored:
            self.wait, self.best, self.best_epoch = (self.restored["wait"], self.restored["best"],
                                                     self.restored["best_epoch"])
            self.best_weights = self.restored.get("best_weights")

    def state(self) -> dict:
        return {"wait": self.wait, "best": float(self.best), "best_epoch": self.best_epoch}


class Snapshot(keras.callbacks.Callback):
    """At the end of every epoch, atomically, what a run needs to go on after a crash: the
    weights (every variable, the random generators' states too) of the model being fitted, the
    optimizer's state, the stage and epoch, the history so far, the early-stopping and
    best-checkpoint state (tlkit.core.run.ResumeState reads it back).

    The stage's first snapshot holds every variable; the later ones only those the stage can
    change, beside a reference to the first: a base frozen in inference mode keeps its weights
    and statistics, and copying and writing all of them every epoch was most of what tlkit added
    to a short epoch (bench/run.py, P3)."""

    def __init__(self, ctx: RunContext, index: int, model, optimizer, stopping, earlier: dict, best):
        super().__init__()
        self.ctx, self.index, self.saved, self.optimizer = ctx, index, ctx.saved_model(model), optimizer
        self.stopping, self.best_checkpoint = stopping, best
        self.history = {k: list(v) for k, v in earlier.items()}
        fixed = _fixed_variables(self.saved)
        self.changing = [i for i, v in enumerate(self.saved.variables) if id(v) not in fixed]
        self.full: str | None = None  # the file of the stage's first snapshot

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.best_checkpoint is not None:
            self.ctx.best = self.best_checkpoint.best
        if self.full is None:
            model = variables(self.saved, "model")
        else:
            model = {f"model_{i}": np.asarray(self.saved.variables[i]) for i in self.changing}
        arrays = {**model, **variables(self.optimizer, "optimizer")}
        stopping = None
        if self.stopping is not None:
            stopping = self.stopping.state()
            arrays.update({f"stopping_{i}": np.asarray(w) for i, w in enumerate(self.stopping.best_weights or [])})
        name = save_state(self.ctx, self.index, epoch + 1, arrays, self.history, stopping, full=self.full)
        self.full = self.full or name


def _fixed_variables(model: keras.Model) -> set[int]:
    """ids of the variables of `model` that no step of its stage changes: those of its base that
    are not trained while the base is kept in inference mode (its frozen weights, its BatchNorm
    statistics, its dropout's random state)."""
    try:
        base = model.get_layer(BASE_LAYER)
    except ValueError:  # no base layer: a model of its own (autoencoder)
        return set()
    return {id(v) for v in base.non_trainable_variables} if keeps_inference_mode(base) else set()


def variables(holder, prefix: str) -> dict[str, np.ndarray]:
    """Every variable of a model or optimizer (random generators' states too), by position."""
    return {f"{prefix}_{i}": np.asarray(v) for i, v in enumerate(holder.variables)}


def save_state(ctx: RunContext, stage: int, epoch: int, arrays: dict | None = None, history: dict | None = None,
               stopping: dict | None = None, full: str | None = None) -> str:
    """Write the resume state: the arrays first, then state.json naming them (and `full`, an
    earlier file of the stage holding the variables `arrays` leaves out), so that a crash
    between the two leaves the previous, whole state. Returns the arrays' file name."""
    folder = ctx.out / RESUME_FOLDER
    name = f"stage{stage}-epoch{epoch}.npz"
    if arrays is not None:
        write_atomic(folder / name, lambda tmp: np.savez(tmp, **arrays))
    previous = ResumeState.read(ctx.out)
    write_json_atomic(folder / "state.json", {
        "job": ctx.job, "stage": stage, "epoch": epoch, "arrays": name if arrays is not None else None,
        "full": full, "history": history or {}, "early_stopping": stopping, "best": float(ctx.best),
        "results": [{"kind": r.kind, "history": r.history, "val_loss": r.val_loss, "val_accuracy": r.val_accuracy,
                     "seconds": r.seconds} for r in ctx.results],
    })
    for old in (previous.arrays, previous.full) if previous else ():
        if old and old not in (name, full):
            (folder / old).unlink(missing_ok=True)
    return name


@dataclass
class ResumeState:
    """Where an interrupted run stopped: the stage in progress (1-based) and the epochs of it
    done, with everything saved at that epoch's end."""

    folder: Path
    job: str
    stage: int
    epoch: int
    arrays: str | None
    history: dict
    early_stopping: dict | None
    best: float
    results: list[dict]
    full: str | None = None  # the file holding the variables `arrays` leaves out (Snapshot)

    @property
    def where(self) -> str:
        """Where the run stands, in words: "stage 2, after epoch 3"."""
        return f"stage {self.stage}, after epoch {self.epoch}" if self.epoch else f"the start of stage {self.stage}"

    @classmethod
    def read(cls, run: Path) -> ResumeState | None:
        path = run / RESUME_FOLDER / "state.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(path.parent, **data)

    def result(self, index: int, params: StageParams) -> StageResult:
        """The result of stage `index`, which ended before the run stopped."""
        done = self.results[index - 1]
        return StageResult(params, done["kind"], done["history"], done["val_loss"], done["val_accuracy"], None,
                           done["seconds"])

    def restore(self, saved_model, fitted, optimizer, stopping, train: tf.data.Dataset) -> tuple[int, dict]:
        """Give `saved_model` (see RunContext.saved_model), the optimizer of `fitted` and
        `stopping` their saved state and replay the data order of the epochs done, so that the
        stage goes on as if it had never stopped; returns the epochs done and the history so far."""
        if self.arrays is None:
            return 0, {}
        with np.load(self.folder / self.arrays) as saved, np.load(self.folder / (self.full or self.arrays)) as whole:
            for i, variable in enumerate(saved_model.variables):
                key = f"model_{i}"
                variable.assign(saved[key] if key in saved.files else whole[key])
            if not self.epoch:  # saved at the end of the stage before: a fresh optimizer
                return 0, {}
            optimizer.build(fitted.trainable_variables)
            for i, variable in enumerate(optimizer.variables):
                variable.assign(saved[f"optimizer_{i}"])
            if stopping is not None and self.early_stopping is not None:
                best = [saved[k] for k in sorted((k for k in saved.files if k.startswith("stopping_")),
                                                 key=lambda k: int(k.split("_")[1]))]
                stopping.restored = {**self.early_stopping, "best_weights": best or None}
        # Each iterator made over the training set draws the next shuffle and augmentation seeds;
        # `fit` makes ITERATORS_PER_EPOCH of them per epoch: make as many, reading nothing.
        for _ in range(self.epoch * ITERATORS_PER_EPOCH):
            iter(train)
        return self.epoch, self.history


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
               build: BaseBuilder | None = None, data=None, verbose: str | int = "auto", job: str = "finetune",
               resume: bool = False, overwrite: bool = False) -> RunContext:
    """Run every stage of the resolved `recipe` (see `tlkit.core.kinds.resolve`) and write the
    run directory `out`.

    The base is `base`, else what `build(classes)` returns (a base, and the classifier when the
    job makes its own), else what the first stage makes (autoencoder), else the recipe's base
    loaded by name; all of it is built inside the run's strategy scope. `data` is (classes,
    train, val), loaded from the recipe unless given.

    At every epoch's end the run saves what it needs to go on (`Snapshot`); with `resume`, the
    run in `out` goes on from there: the stages done are not run again, the stage in progress
    goes on from its next epoch. `job` names the job, for the line that tells how to resume.

    In a multi-worker run every worker runs every step (the collectives need them all), but only
    the chief writes `out`; each other worker writes its own copy of the run into its
    `worker_folder`, resume state included, so that it can resume too: cleared when a new run
    starts, kept when the run stops before its end, deleted when it ends.

    `out` must be new, empty, or an existing run with `overwrite` (tlkit.runguard); the run holds
    its lock throughout and is marked unfinished until its last file is written.
    """
    # a recipe made in Python gets its stages' defaults and absolute paths too
    recipe = resolve(recipe, check_base_name=base is None and build is None)
    # the strategy first: a multi-worker one can only be made before TensorFlow has run anything
    strategy = distribution_strategy(recipe.distribute)
    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        # Keras averages the loss on each replica, then over replicas: uneven shares weigh unevenly
        log.warning("batch size %d does not split evenly over %d replicas: each step then weighs images "
                    "unevenly; pass a multiple of %d", recipe.batch_size, replicas, replicas)
    run = Path(out)
    chief = is_chief(strategy)
    if not chief:
        resolver = strategy.cluster_resolver
        out = worker_folder(run, resolver.task_type, resolver.task_id)
        if not resume:
            # what a run that stopped left here; only now, once the strategy is made: that waits for
            # every worker, so the chief has accepted its --out (a mistaken rerun it refused, in place
            # of --resume, has not cost this worker its state)
            shutil.rmtree(out, ignore_errors=True)
        log.info("not the chief: writing this worker's copy of the run to %s, kept until the run ends so that "
                 "--resume %s finds it here; the chief writes the run directory", out, run)
    if resume and recipe.distribute == "multiworker":
        check_same_resume_state(strategy, ResumeState.read(Path(out)), run)
    lock = runguard.claim(out, overwrite=overwrite, resume=resume)
    try:
        return _run_recipe(recipe, base, Path(out), model=model, build=build, data=data, verbose=verbose, job=job,
                           resume=resume, overwrite=overwrite, run=run)
    finally:
        lock.release()
        if not chief and ResumeState.read(Path(out)) is None:  # it ended, or stopped with nothing to resume
            shutil.rmtree(out, ignore_errors=True)


def _run_recipe(recipe: Recipe, base: Base | None, out: Path, *, model, build, data, verbose, job, resume,
                overwrite, run: Path) -> RunContext:
    """`run_recipe` writing into `out`: `run` itself, or a worker's own copy of it."""
    state = ResumeState.read(out) if resume else None
    if resume and state is None:
        raise TlkitError(f"{out} has nothing to resume from (no {RESUME_FOLDER / 'state.json'}): it finished, or "
                         "stopped before its first epoch ended; run it again")
    kinds: list[StageKind] = [STAGES.get(stage.kind) for stage in recipe.stages]
    params = [stage_params(stage, f"recipe {recipe.name}, stage {i}") for i, stage in enumerate(recipe.stages, 1)]
    labelled = any(kind.needs_labels for kind in kinds)
    ctx, report = context(recipe, base, out, model=model, build=build, data=data, verbose=verbose)
    ctx.job, ctx.resume = job, state
    classes, train, val, resolved = ctx.classes, ctx.train, ctx.val, ctx.recipe
    runguard.start(out, overwrite=overwrite, resume=resume)
    if labelled:
        log.info("%d training and %d validation images in %d classes; base %s (%s, weights %s); run directory %s",
                 len(train), len(val), len(classes), ctx.base.name, ctx.base.source, ctx.base.weights, out)
    else:
        log.info("%d training and %d validation images; run directory %s", len(train), len(val), out)
    if ctx.class_weight:
        log.info("class weights (%s): %s", recipe.class_weight,
                 ", ".join(f"{c} {w:.3g}" for c, w in zip(classes, ctx.class_weight.values())))
    if labelled:
        write_labels(out / "labels.txt", classes)
    resolved.save(out / "recipe.toml")
    report.save(out / datareport.REPORT_FILE)
    try:
        for index, (kind, stage) in enumerate(zip(kinds, params), start=1):
            if state is not None and index < state.stage:
                ctx.results.append(state.result(index, stage))
                if kind.skipped:
                    kind.skipped(ctx, index, stage)
                continue
            kind.run(ctx, index, stage)
    except KeyboardInterrupt:
        saved = ResumeState.read(out)
        raise RunInterrupted(run, job, saved) from None
    if state is not None and state.stage > len(kinds) and classes:  # every stage had ended: the last one's weights
        state.restore(ctx.classifier, None, None, None, None)
    if labelled:
        # after the stages: an autoencoder stage replaces the base
        write_json_atomic(out / "blocks.json", {block.name: list(block.layers) for block in ctx.base.blocks})
        save_model_atomic(ctx.classifier, out / "model.keras")
    write_results(ctx)
    shutil.rmtree(out / RESUME_FOLDER, ignore_errors=True)  # finished: nothing to resume
    if labelled:
        write_run_report(out, ctx.classifier, classes, train, val, resolved, ctx.results)
        log_summary(ctx)
    runguard.finish(out)
    return ctx


def log_summary(ctx: RunContext) -> None:
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


def context(recipe: Recipe, base: Base | None, out: str | Path, *, model: keras.Model | None = None,
            build: BaseBuilder | None = None, data=None, verbose: str | int = "auto"
            ) -> tuple[RunContext, datareport.DataReport]:
    """What `run_recipe` does before the first stage, writing nothing: configure, build the base
    (before the data: a base that cannot load, with no weights offline or at an image size it
    cannot take, is told before minutes of scanning), load the data; the run's context (with the
    recipe resolved against the base) and the data report."""
    kinds: list[StageKind] = [STAGES.get(stage.kind) for stage in recipe.stages]
    params = [stage_params(stage, f"recipe {recipe.name}, stage {i}") for i, stage in enumerate(recipe.stages, 1)]
    labelled = any(kind.needs_labels for kind in kinds)
    makes_base = not needs_base(recipe)
    if base is None and build is None and not makes_base and not recipe.base:
        raise TlkitError("no base: pass --base NAME (see `tlkit bases`)")
    strategy = configure(recipe)
    with strategy.scope():
        if base is None and build is None and makes_base:
            base = kinds[0].make_base(recipe, params[0])
        elif base is None and build is None:
            size = (recipe.image_size, recipe.image_size) if recipe.image_size else None
            base = load_base(recipe.base, recipe.weights, size, recipe.base_layer, recipe.hub_range)
    if base is not None:
        check_unfreeze(recipe, base.name, [block.name for block in base.blocks])
    if data:
        classes, train, val = data
        report = datareport.DataReport.of(train, val)
    else:
        progress = datareport.console_progress() if verbose else None
        classes, train, val, report = load_data(recipe, labelled, progress)
    check_replica_batches(strategy, recipe.batch_size, {"training": len(train.files), "validation": len(val.files)})
    if base is None:
        with strategy.scope():
            base, model = build(classes)
    image_size = tuple(base.model.input_shape[1:3])
    if None in image_size:
        image_size = base.input_size
    resolved = dataclasses.replace(recipe, base=recipe.base or base.name, image_size=image_size[0],
                                   pooling=head_pooling(recipe, base) if labelled else recipe.pooling)
    ctx = RunContext(resolved, base, classes, train, val, image_size, Path(out), strategy, verbose, model)
    if labelled:
        ctx.class_weight = training.class_weights(recipe.class_weight, classes, train.counts())
    return ctx, report


def head_pooling(recipe: Recipe, base: Base) -> str:
    """The pooling of the new head: --pooling, else the base's choice (said, with why), else avg."""
    if recipe.pooling:
        return recipe.pooling
    if base.pooling:
        log.info("head pooling: %s, as base %s asks (%s); --pooling overrides", base.pooling[0], base.name,
                 base.pooling[1])
        return base.pooling[0]
    return "avg"


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
