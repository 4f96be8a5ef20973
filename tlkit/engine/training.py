"""The run context the stages of a run share (`RunContext`), with the one place that compiles and
fits; `context` builds it (strategy, base, data) before the first stage."""
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

from tlkit._util.keras_internals import built_from_shapes
from tlkit.bases import Base, load_base
from tlkit.data import augment as tlaugment
from tlkit.data import checks, folders, manifest, splits
from tlkit.data import pipeline as tldata
from tlkit.data import report as datareport
from tlkit.engine import resume as resume_state  # its save_state, looked up when called (tests stop a run there)
from tlkit.engine.checkpoint import BestCheckpoint
from tlkit.engine.classifier import BASE_LAYER, build_classifier, head_pooling
from tlkit.engine.curves import TrainingCurves
from tlkit.engine.results import StageResult
from tlkit.engine.resume import ResumableEarlyStopping, ResumeState, Snapshot, variables
from tlkit.engine.strategy import check_replica_batches, configure, per_worker_input, reads_own_files
from tlkit.errors import TlkitError
from tlkit.models import optimization as optimization
from tlkit.recipe.kinds import STAGES, StageKind, StageParams, check_unfreeze, needs_base, stage_params
from tlkit.recipe.schema import Recipe
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What the stages of one run share. `model`, the classifier the stages train, is built on
    first use from `base`, so a stage that replaces the base (autoencoder) can run before the head
    is made. `calibrated`: the classifier with its temperature inside, made at the run's end."""

    recipe: Recipe
    base: Base
    classes: list[str]
    train: folders.ImageSet
    val: folders.ImageSet
    image_size: tuple[int, int]
    out: Path
    strategy: tf.distribute.Strategy
    verbose: str | int = "auto"
    model: keras.Model | None = None
    calibrated: keras.Model | None = None
    results: list[StageResult] = field(default_factory=list)
    best: float = np.inf  # the lowest validation loss of the classifier so far, over all stages
    decoded: dict = field(default_factory=dict)  # the decode-once image cache of each split, for every stage
    curves: TrainingCurves | None = None  # curves.png, redrawn during every stage
    class_weight: dict[int, float] | None = None  # fit's class_weight (recipe.class_weight), for every stage
    job: str = "finetune"  # the job that made the run, for the command that resumes it
    resume: ResumeState | None = None  # where a resumed run goes on
    # makers of more callbacks for every stage, (ctx, stage index, kind) -> callback: tracking, a tuner's pruning
    hooks: list[Callable] = field(default_factory=list)

    @property
    def classifier(self) -> keras.Model:
        if self.model is None:
            with self.strategy.scope():
                self.model = build_classifier(self.base, len(self.classes), self.recipe.dropout, self.recipe.pooling,
                                              "sigmoid" if self.multilabel else "softmax")
        return self.model

    @property
    def served(self) -> keras.Model:
        """The model the run ends with (model.keras): the calibrated classifier, else the classifier."""
        return self.calibrated if self.calibrated is not None else self.classifier

    @property
    def multilabel(self) -> bool:
        return self.recipe.task == "multilabel"

    @property
    def positive_weights(self) -> list[float] | None:
        """A multi-label run's class weights, as the weight of each label's positives in its loss
        (fit's class_weight takes one label an image)."""
        return [self.class_weight[i] for i in range(len(self.classes))] if self.class_weight else None

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

    def _worker_train(self, weighted: bool) -> tuple[tf.distribute.DistributedDataset, tf.data.Dataset]:
        """The training images of a pack under multiworker, each worker reading its own shard files
        (`per_worker_input`), and this worker's dataset (whose element_spec is a batch's, where the
        distributed one's is per replica); with `weighted`, the class weights as sample weights,
        since fit's class_weight maps a tf.data.Dataset and a distributed dataset has no map."""
        r = self.recipe
        weights = tf.constant([self.class_weight[i] for i in range(len(self.classes))], tf.float32) if weighted else None

        def make(share: folders.ImageSet, batch: int) -> tf.data.Dataset:
            key = ("worker", self.image_size, self.base.channels)
            if key not in self.decoded:
                self.decoded[key] = tldata.decode_once(share, self.image_size, self.base.channels, r.cache_images)
            ds = tldata.make_dataset(share, self.image_size, batch, channels=self.base.channels, shuffle=True,
                                     augment=self.augmentation, seed=r.seed, cache=self.decoded[key])
            if weights is not None:
                # soft labels (MixUp, CutMix) weigh as their largest class, as fit's class_weight does
                ds = ds.map(lambda x, y: (x, y, tf.gather(weights, y if y.shape.rank == 1 else tf.argmax(y, -1))))
            made.append(ds)
            return ds

        made: list[tf.data.Dataset] = []
        distributed = self.strategy.distribute_datasets_from_function(per_worker_input(self.train, r.batch_size, make))
        return distributed, made[0]

    def compile(self, model: keras.Model, params: StageParams, learning_rate, loss=None,
                metrics=("accuracy",)) -> keras.optimizers.Optimizer:
        """Compile `model` for a stage, inside the run's strategy scope, with a fresh Adam (every
        stage gets new optimizer state) at `learning_rate` (a float or a schedule), scaled per
        block by the stage's `layer_decay`, and `loss` (None: the classifier's cross-entropy,
        with the recipe's label smoothing, on soft labels when MixUp or CutMix mix them)."""
        r = self.recipe
        soft = self.augmentation.mixes
        if loss is None and self.multilabel:
            loss = optimization.MultiLabelCrossentropy(r.label_smoothing, self.positive_weights)
            metrics = [keras.metrics.BinaryAccuracy(name="accuracy") if m == "accuracy" else m for m in metrics]
        elif loss is None:
            loss = (optimization.Crossentropy(r.label_smoothing) if r.label_smoothing or soft
                    else "sparse_categorical_crossentropy")
        # Keras' "accuracy" turns sparse or categorical by the shape of the first labels it sees:
        # categorical on mixed training labels, it would then misread integer validation labels
        metrics = [optimization.accuracy_metric() if m == "accuracy" and soft else m for m in metrics]
        with self.strategy.scope():
            scales = self.layer_scales(model, getattr(params, "layer_decay", 1.0))
            optimizer = (optimization.ScaledAdam(learning_rate, scales) if scales
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
        classifying = loss is None
        weighted = classifying and not self.multilabel and self.class_weight is not None
        own_files = data is None and reads_own_files(self.strategy, self.train)
        if own_files:
            (train, shapes), val = self._worker_train(weighted), _by_element(self.dataset("val"))
        else:
            train, val = (_by_element(ds) for ds in (data or (self.dataset("train"), self.dataset("val"))))
            shapes = train
        steps = int(train.cardinality if own_files else train.cardinality())
        if steps < 1:  # unknown or infinite: count the batches of the training images
            steps = -(-len(self.train) // self.recipe.batch_size)
        rate = optimization.schedule(params.schedule, params.learning_rate, steps, params.epochs, params.warmup_epochs)
        optimizer = self.compile(model, params, rate, loss, metrics)
        if sharing is not None:
            with self.strategy.scope():
                sharing.compile(optimizer=optimizer, loss=model.loss, metrics=metrics, jit_compile=self.recipe.jit)
        rates, best, stopping = self._stage_callbacks(checkpoint)
        callbacks: list[keras.callbacks.Callback] = [
            rates, keras.callbacks.TensorBoard(str(RunDir(self.out).logs / f"{index}-{kind}"), update_freq="batch"),
            self.curves.stage(f"{index} {kind}"), *(c for c in (best, stopping) if c is not None),
            *(hook(self, index, kind) for hook in self.hooks)]
        done, earlier = 0, {}
        if self.resume is not None and self.resume.stage == index:
            with self.strategy.scope():  # the optimizer's variables are built here: mirrored like the model's
                done, earlier = self.resume.restore(self.saved_model(model), model, optimizer, stopping, train)
            self.curves.stages[-1] = (self.curves.stages[-1][0], {k: list(v) for k, v in earlier.items()})
            log.info("stage %d resumed after epoch %d of %d", index, done, params.epochs)
        self.resume = None
        snapshot = Snapshot(self, index, model, optimizer, stopping, earlier, best)
        callbacks.append(snapshot)
        start = time.perf_counter()
        with built_from_shapes(model, shapes):
            if params.epochs > done:
                model.fit(train, validation_data=val, epochs=params.epochs, initial_epoch=done, callbacks=callbacks,
                          verbose=self.verbose,
                          class_weight=self.class_weight if weighted and not own_files else None,
                          shuffle=False)  # the dataset shuffles
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
        resume_state.save_state(self, index + 1, 0, variables(self.saved_model(model), "model"))
        return result

    def _stage_callbacks(self, checkpoint: bool):
        """The callbacks of a stage that hold state: the learning rate of every step, with
        `checkpoint` the best classifier of the run, early stopping when the recipe asks for it
        (None where not); curves.png's drawer is made once per run."""
        self.curves = self.curves or TrainingCurves(self.out)
        best = None
        if checkpoint:
            best = BestCheckpoint(RunDir(self.out).best, self.classifier)
            best.best = self.best
        stopping = None
        if self.recipe.early_stopping:
            stopping = ResumableEarlyStopping(monitor="val_loss", patience=self.recipe.early_stopping,
                                              restore_best_weights=True)
        return optimization.LearningRateLog(), best, stopping

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


def load_data(recipe: Recipe, labelled: bool = True, progress: checks.Progress | None = None):
    """Scan and check the data (every file, before any training), split it and report on it:
    (classes, train, val, DataReport). Unlabelled data (for stages that need no labels) may have
    class sub-folders or not."""
    if not recipe.data:
        raise TlkitError("no data: pass --data DIR (a folder with one sub-folder of images per class) or --data FILE.csv"
                         if labelled else "no data: pass --data DIR (a folder of images, with or without sub-folders)")
    if not labelled:
        images = folders.scan_unlabeled(recipe.data, skip_bad=recipe.skip_bad, progress=progress)
        train, val = splits.split(images, recipe.val_split, recipe.seed)
        report = datareport.DataReport.of(train, val)
    else:
        train, val, report = datareport.prepare(
            recipe.data, val_data=recipe.val_data, val_split=recipe.val_split, seed=recipe.seed,
            skip_bad=recipe.skip_bad, progress=progress, image_root=recipe.image_root,
            columns=manifest.Columns.of(recipe), delimiter=recipe.label_delimiter if recipe.task == "multilabel" else None,
            exclude=recipe.exclude, relabel=recipe.relabel)
    report.log()
    return train.classes if labelled else [], train, val, report


BaseBuilder = Callable[[list[str]], tuple[Base, "keras.Model | None"]]


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
        ctx.class_weight = optimization.class_weights(recipe.class_weight, classes, train.counts(),
                                                      images=len(train) if train.multilabel else None)
    return ctx, report

