"""The recipe engine: runs the stages of a recipe on a base and a folder of images."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit import data as tldata
from tlkit import features
from tlkit.bases import Base, load_base
from tlkit.blocks import set_trainable_top
from tlkit.errors import TlkitError
from tlkit.recipe import Recipe, Stage, get_recipe
from tlkit.registry import Registry
from tlkit.io import save_model_atomic, write_json_atomic
from tlkit.curves import TrainingCurves
from tlkit.report import write_run_report
from tlkit.rundir import write_labels

BASE_LAYER = "base"


def configure(recipe: Recipe) -> None:
    """Seeds, determinism and precision, before anything is built."""
    keras.utils.set_random_seed(recipe.seed)
    # Deterministic kernels make the same seed give the same metrics on the CPU; on a GPU some
    # ops have no deterministic kernel, so there speed wins.
    if not tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("mixed_float16" if recipe.mixed_precision else "float32")


def build_classifier(base: Base, num_classes: int, dropout: float, pooling: str = "avg") -> keras.Model:
    """The base, called in inference mode, under a new head (pooling, dropout, softmax)."""
    base.model.name = BASE_LAYER
    inputs = keras.Input((*base.model.input_shape[1:3], base.channels), name="image")
    # training=False is recorded in the graph: BatchNorm inside the base stays in inference mode
    # in every stage, including after its layers are unfrozen.
    x = base.model(inputs, training=False)
    x = head_layers(x, num_classes, dropout, pooling)
    return keras.Model(inputs, x, name=f"{base.name}_classifier")


HEAD_POOLING = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
                "flatten": keras.layers.Flatten}


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
    across the several `fit` calls of a recipe.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.best = np.inf

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < self.best:
            self.best = loss
            save_model_atomic(self.model, self.path)


@dataclass
class StageResult:
    stage: Stage
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
    verbose: str | int = "auto"
    model: keras.Model | None = None
    results: list[StageResult] = field(default_factory=list)
    checkpoint: BestCheckpoint | None = None
    curves: TrainingCurves | None = None

    @property
    def classifier(self) -> keras.Model:
        if self.model is None:
            self.model = build_classifier(self.base, len(self.classes), self.recipe.dropout, self.recipe.pooling)
        return self.model

    def dataset(self, which: str, augment: bool | None = None) -> tf.data.Dataset:
        """The "train" or "val" images; only training images are shuffled and augmented."""
        training = which == "train"
        r = self.recipe
        return tldata.make_dataset(
            self.train if training else self.val, self.image_size, r.batch_size, channels=self.base.channels,
            shuffle=training, augment=training and (r.augment if augment is None else augment), seed=r.seed,
        )

    def callbacks(self, index: int, stage: Stage, model: keras.Model | None = None) -> list[keras.callbacks.Callback]:
        if self.checkpoint is None:
            self.checkpoint = BestCheckpoint(self.out / "checkpoints" / "best.keras")
        checkpoint = self.checkpoint
        if model is not None and model is not self.classifier:
            # `model` shares the classifier's head (extract): checkpoint the whole classifier
            self.checkpoint.set_model(self.classifier)
            checkpoint = keras.callbacks.LambdaCallback(on_epoch_end=self.checkpoint.on_epoch_end)
        self.curves = self.curves or TrainingCurves(self.out)
        cbs = [checkpoint, keras.callbacks.TensorBoard(str(self.out / "logs" / f"{index}-{stage.kind}")),
               self.curves.stage(f"{index} {stage.kind}")]
        if self.recipe.early_stopping:
            cbs.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.recipe.early_stopping, restore_best_weights=True))
        return cbs

    def fit(self, index: int, stage: Stage, model: keras.Model | None = None,
            data: tuple[tf.data.Dataset, tf.data.Dataset] | None = None) -> StageResult:
        """Compile `model` (the classifier by default) with a fresh optimizer at the stage's own
        learning rate and train it on `data` (train, val; default the images); every stage gets
        new optimizer state."""
        model = model or self.classifier
        train, val = data or (self.dataset("train"), self.dataset("val"))
        optimizer = keras.optimizers.Adam(stage.learning_rate)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        start = time.perf_counter()
        history = model.fit(
            train, validation_data=val, epochs=stage.epochs,
            callbacks=self.callbacks(index, stage, model), verbose=self.verbose, shuffle=False,  # the dataset shuffles
        ) if stage.epochs else None
        return self.finish(stage, history.history if history else {}, optimizer, start, model, val)

    def finish(self, stage: Stage, history: dict, optimizer, start: float, model: keras.Model | None = None,
               val: tf.data.Dataset | None = None) -> StageResult:
        """Evaluate `model` (the classifier by default) on `val` (default the validation images)
        and record the stage."""
        model = model or self.classifier
        scores = model.evaluate(self.dataset("val") if val is None else val, verbose=0, return_dict=True)
        val_loss, val_accuracy = float(scores["loss"]), scores.get("accuracy")
        result = StageResult(stage, history, val_loss, None if val_accuracy is None else float(val_accuracy),
                             optimizer, time.perf_counter() - start)
        self.results.append(result)
        accuracy = "" if val_accuracy is None else f"val_accuracy={val_accuracy:.4f} "
        print(f"stage {len(self.results)} ({stage.kind}): {accuracy}val_loss={val_loss:.4f}", flush=True)
        return result


StageRunner = Callable[[RunContext, int, Stage], StageResult]
STAGES: Registry[StageRunner] = Registry("stage kind")


@STAGES.register("head")
def run_head(ctx: RunContext, index: int, stage: Stage) -> StageResult:
    ctx.classifier.get_layer(BASE_LAYER).trainable = False
    return ctx.fit(index, stage)


@STAGES.register("finetune")
def run_finetune(ctx: RunContext, index: int, stage: Stage) -> StageResult:
    if not stage.unfreeze:
        raise TlkitError("a finetune stage needs unfreeze >= 1 (blocks of the base to train); use --unfreeze N")
    set_trainable_top(ctx.classifier.get_layer(BASE_LAYER), ctx.base.blocks, stage.unfreeze)
    return ctx.fit(index, stage)


@STAGES.register("train")
def run_train(ctx: RunContext, index: int, stage: Stage) -> StageResult:
    ctx.classifier.trainable = True
    return ctx.fit(index, stage)


@STAGES.register("extract")
def run_extract(ctx: RunContext, index: int, stage: Stage) -> StageResult:
    """The head stage on features the frozen base computes once (or finds in the cache)."""
    if ctx.recipe.augment:
        print(f"stage {index} (extract): augment=true gives new images every epoch, so features are not "
              "cached: training the head on the frozen base, as a head stage does", flush=True)
        return run_head(ctx, index, stage)
    ctx.classifier.get_layer(BASE_LAYER).trainable = False
    r = ctx.recipe
    found = features.extract(ctx.base, ctx.train.files + ctx.val.files, ctx.image_size, pooling=r.pooling,
                             batch_size=r.batch_size, cache=r.cache, verbose=ctx.verbose)
    train, val = found[:len(ctx.train)], found[len(ctx.train):]
    return ctx.fit(index, stage, features.feature_head(ctx.classifier, BASE_LAYER), (
        features.dataset(train, ctx.train.labels, r.batch_size, shuffle=True, seed=r.seed),
        features.dataset(val, ctx.val.labels, r.batch_size),
    ))


@STAGES.register("autoencoder")
def run_autoencoder(ctx: RunContext, index: int, stage: Stage) -> StageResult:
    from tlkit.pretrain import autoencoder_stage

    return autoencoder_stage(ctx, index, stage)


def load_data(recipe: Recipe, classes: list[str] | None = None):
    """Scan and validate the data (every file, before any training) and split it."""
    if not recipe.data:
        raise TlkitError("no data: pass --data DIR (a folder with one sub-folder of images per class)")
    images = tldata.scan(recipe.data, skip_bad=recipe.skip_bad, classes=classes)
    if recipe.val_data:
        val = tldata.scan(recipe.val_data, skip_bad=recipe.skip_bad, classes=images.classes)
        train = images
    else:
        train, val = tldata.split(images, recipe.val_split, recipe.seed)
    skipped = images.skipped + (val.skipped if recipe.val_data else [])
    for path, why in skipped:
        print(f"skipped {path}: {why}", flush=True)
    if skipped:
        print(f"skipped {len(skipped)} bad file(s)", flush=True)
    return images.classes, train, val


def run_recipe(recipe: Recipe, base: Base, out: Path, *, verbose: str | int = "auto",
               classes=None, train=None, val=None, model: keras.Model | None = None) -> RunContext:
    """Run every stage of `recipe` and write the run directory. Data is loaded unless given;
    the classifier is `model`, or the base under a new head."""
    if classes is None:
        classes, train, val = load_data(recipe)
    image_size = tuple(base.model.input_shape[1:3])
    if None in image_size:
        image_size = base.input_size
    # absolute data paths, so `--recipe RUN/recipe.toml` repeats the run from any folder
    resolved = dataclasses.replace(
        recipe, base=recipe.base or base.name, image_size=image_size[0],
        **{key: str(Path(getattr(recipe, key)).resolve()) for key in ("data", "val_data") if getattr(recipe, key)},
    )
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(train)} training and {len(val)} validation images in {len(classes)} classes; "
          f"base {base.name} ({base.source}, weights {base.weights}); run directory {out}", flush=True)
    ctx = RunContext(resolved, base, classes, train, val, image_size, out, verbose, model)
    write_labels(out / "labels.txt", classes)
    resolved.save(out / "recipe.toml")
    for index, stage in enumerate(resolved.stages, start=1):
        STAGES.get(stage.kind)(ctx, index, stage)
    # after the stages: an autoencoder stage replaces the base
    write_json_atomic(out / "blocks.json", {block.name: list(block.layers) for block in ctx.base.blocks})
    save_model_atomic(ctx.classifier, out / "model.keras")
    write_results(ctx)
    write_run_report(out, ctx.classifier, classes, train, val, resolved, ctx.results)
    return ctx


def write_results(ctx: RunContext) -> None:
    """history.json and metrics.json of a finished run."""
    write_json_atomic(ctx.out / "history.json", [{"kind": r.stage.kind, **r.history} for r in ctx.results])
    write_json_atomic(ctx.out / "metrics.json", {
        "stages": [
            {"stage": i, "kind": r.stage.kind, "epochs": r.stage.epochs, "learning_rate": r.stage.learning_rate,
             "val_accuracy": r.val_accuracy, "val_loss": r.val_loss}
            for i, r in enumerate(ctx.results, start=1)
        ],
        "classes": ctx.classes,
        "train_images": len(ctx.train),
        "val_images": len(ctx.val),
    })


def _size(recipe: Recipe) -> tuple[int, int] | None:
    return (recipe.image_size, recipe.image_size) if recipe.image_size else None


def default_out(name: str) -> Path:
    return Path("runs") / f"{name.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"


def finetune(base: str | None = None, data: str | None = None, recipe=None, out: str | Path | None = None,
             *, verbose: str | int = "auto", **overrides) -> RunContext:
    """Fine-tune a pretrained base on a folder of images; returns the finished run.

    `recipe` is a Recipe, a built-in name or a TOML path (default: classic). `overrides` set
    recipe fields (weights, image_size, batch_size, seed, ...) and, for convenience,
    epochs_head, epochs_finetune, lr_head, lr_finetune and unfreeze set those of its stages.
    A recipe whose first stage is `autoencoder` needs no base: it starts from an untrained
    encoder, which that stage pretrains.
    """
    recipe = resolve(recipe, base=base, data=data, **overrides)
    # a recipe that starts with an autoencoder stage pretrains its own base
    pretrains = bool(recipe.stages) and recipe.stages[0].kind == "autoencoder"
    if not recipe.base and not pretrains:
        raise TlkitError("no base: pass --base NAME (see `tlkit bases`)")
    configure(recipe)
    classes, train, val = load_data(recipe)
    if pretrains:
        from tlkit.pretrain import untrained_base

        loaded = untrained_base(recipe)
    else:
        loaded = load_base(recipe.base, recipe.weights, _size(recipe), recipe.base_layer, recipe.hub_range)
    return run_recipe(recipe, loaded, Path(out) if out else default_out(recipe.base or loaded.name), verbose=verbose,
                      classes=classes, train=train, val=val)


def extract(base: str | None = None, data: str | None = None, recipe="extract", out: str | Path | None = None, *,
            epochs: int | None = None, learning_rate: float | None = None, **overrides) -> RunContext:
    """Feature-extraction mode: the frozen base runs once over the images (or its cached features
    are reused, see tlkit.features), a head is trained on the features and attached to the base.
    The run directory is the same as `finetune`'s. `cache` (an override) sets the cache folder."""
    recipe = get_recipe(recipe).with_stages("extract", epochs=epochs, learning_rate=learning_rate)
    return finetune(base, data, recipe, out, **overrides)


def resolve(recipe, *, epochs_head=None, epochs_finetune=None, lr_head=None, lr_finetune=None,
            unfreeze=None, **fields) -> Recipe:
    """A recipe with the command line's settings applied over it."""
    r = get_recipe(recipe)
    unknown = set(fields) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise TypeError(f"unknown recipe settings: {sorted(unknown)}")
    r = dataclasses.replace(r, **{k: v for k, v in fields.items() if v is not None})
    r = r.with_stages("head", epochs=epochs_head, learning_rate=lr_head)
    return r.with_stages("finetune", epochs=epochs_finetune, learning_rate=lr_finetune, unfreeze=unfreeze)


def train(arch: str, data: str | None = None, recipe="scratch", out: str | Path | None = None, *,
          verbose: str | int = "auto", epochs: int | None = None, learning_rate: float | None = None,
          **overrides) -> RunContext:
    """Train a zoo architecture from scratch, with its own top, through the same engine and run
    directory as `finetune` (so the result evaluates, predicts and exports the same way)."""
    from tlkit.bases.zoo import zoo_input
    from tlkit.blocks import build_block_map
    from tlkit.models import ZOO

    spec = ZOO.get(arch)
    recipe = resolve(recipe, base=arch, weights="none", data=data, **overrides)
    recipe = recipe.with_stages("train", epochs=epochs, learning_rate=learning_rate)
    configure(recipe)
    classes, train_set, val_set = load_data(recipe)
    inputs, x = zoo_input(spec, _size(recipe))
    try:
        model = spec.build(include_top=True, classes=len(classes), input_tensor=x)
    except ValueError as err:
        raise TlkitError(f"{arch} cannot take images of {inputs.shape[1]}x{inputs.shape[2]}: {err}") from err
    # the trained top is a block of its own (every layer after the arch's blocks but the input
    # and its scaling), so a later finetune can start from this model
    blocks = build_block_map(model, [*spec.blocks, ("top", r"(?!image$|preprocessing$)")])
    base = Base(arch, model, blocks, spec.input_shape[:2], "zoo", "none")
    return run_recipe(recipe, base, Path(out) if out else default_out(arch), verbose=verbose,
                      classes=classes, train=train_set, val=val_set, model=model)
