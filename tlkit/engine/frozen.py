"""Feature extraction with an on-disk cache: the frozen base runs once over a set of images.

The pooled features (a feature map pooled as the head pools it: global average by default; a
vector base's vectors as they are) of a set of image files are stored as one entry of the cache
folder, `<key>.npz` (the features, one row per distinct file content, and the SHA-256 of each
content), beside `<key>.json`, which says what made it. The key is a hash of everything that
determines the features:

- the base: its name, the configuration of every layer (preprocessing, activations, input size,
  channels, dtype policy) and the value of every variable. Hashing the values rather than the
  weights' name or file covers every way a base gets its weights (ImageNet, a file, a run, a
  fine-tuned base); it costs about 10 ms per million parameters;
- the image size, the pooling, and how images are decoded and resized (`tlkit.data.decode.decode_image`,
  `FORMAT`);
- the files, by content: a file that is renamed or moved still hits, and a file whose bytes
  change misses even if its size and modification time were kept. The hash reads every byte,
  far less than decoding them does (BENCHMARKS.md has the figures).

Entries are written to a temporary name and renamed, so a reader sees a whole entry or none, and
two runs that write the same entry at once each leave a whole one.

Within a run, the head and finetune stages also run their frozen layers once (`fit_frozen_once`):
the outputs of the frozen part of the classifier, kept in memory for the stage, in place of the
forward pass through it every epoch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tlkit._util.io import cache_root, write_atomic, write_json_atomic
from tlkit._util.urls import as_path
from tlkit.bases import Base
from tlkit.data import folders, imagecache, shards
from tlkit.data import pipeline as tldata
from tlkit.data.checks import file_digests
from tlkit.engine.classifier import BASE_LAYER, HEAD_POOLING
from tlkit.models.features import features_in
from tlkit.models.preprocessing import NAME as PREPROCESSING

log = logging.getLogger(__name__)

# Bump when decoding, resizing or pooling change, so entries made the old way are not reused.
FORMAT = 3  # 2: JPEGs decoded at reduced size when much larger than the target; 3: EXIF orientation


def cache_dir(path: str | Path | None = None) -> Path:
    """The feature cache folder: `path`, else $TLKIT_CACHE/features, else ~/.cache/tlkit/features."""
    if path:
        return Path(path)
    return cache_root() / "features"


def model_fingerprint(model: keras.Model) -> str:
    """A hash of what a model computes: every layer's class and configuration, and every
    variable's value. Names and trainable flags are left out: they change (a base is renamed
    inside its classifier, a stage freezes it) while the features do not."""
    digest = hashlib.sha256()
    for layer in model.layers:
        config = _without_names(layer.get_config())
        digest.update(f"{type(layer).__name__}{json.dumps(config, sort_keys=True, default=str)}".encode())
    for variable in model.weights:
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _without_names(config):
    if isinstance(config, dict):
        return {k: _without_names(v) for k, v in config.items() if k not in ("name", "trainable")}
    if isinstance(config, list):
        return [_without_names(v) for v in config]
    return config


def pooled_model(model: keras.Model, pooling: str = "avg") -> keras.Model:
    """The base in inference mode, its feature map pooled as the head pools it (HEAD_POOLING)."""
    inputs = keras.Input(model.input_shape[1:])
    x = model(inputs, training=False)
    if len(x.shape) == 4:
        x = HEAD_POOLING[pooling]()(x)
    return keras.Model(inputs, x)


def run_base(model: keras.Model, files: Sequence[Path], image_size: tuple[int, int], batch_size: int,
             pooling: str = "avg", verbose: str | int = 0) -> np.ndarray:
    """Pooled features (N, D) of image files, decoded as training decodes them, without augmentation."""
    images = folders.ImageSet(Path(), [], list(files), [0] * len(files))
    channels = model.input_shape[-1]
    dataset = tldata.make_dataset(images, image_size, batch_size, channels=channels)
    forward = _forward(model, pooling, image_size, channels)
    progress = keras.utils.Progbar(len(files)) if verbose else None
    return _through(forward, dataset, (forward.features,), np.float32, progress).astype(np.float32)


def _through(forward, images: tf.data.Dataset, shape, dtype, progress=None) -> np.ndarray:
    """`forward` over the (image, label) batches of `images`, concatenated; (0, *shape) of
    `dtype` when there are none."""
    out = []
    for batch, _ in images:
        out.append(forward(batch).numpy())
        if progress:
            progress.add(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, *shape), dtype)


_last_forward: list = []  # [(model, key, function)]: the last extraction's, so a repeated one is not traced again


def _forward(model: keras.Model, pooling: str, image_size: tuple[int, int], channels: int):
    """The pooled base's forward pass as one function, traced once for any batch size (the last
    batch is smaller), in place of `predict`, whose function is made per model (a new pooled model
    every call) and traced again for the last batch, with callbacks and a progress bar around
    every step. The last one made is kept (one, so that no more than one base is held) for the
    next extraction with the same base; it reads the base's variables when it runs, so a base
    trained since still gets its current features."""
    key = (pooling, tuple(image_size), channels)
    if not _last_forward or _last_forward[0][0] is not model or _last_forward[0][1] != key:
        pooled = pooled_model(model, pooling)
        forward = tf.function(lambda x: pooled(x, training=False),
                              input_signature=[tf.TensorSpec((None, *image_size, channels), tf.float32)])
        forward.features = pooled.output_shape[-1]
        _last_forward[:] = [(model, key, forward)]
    return _last_forward[0][2]


def extract(base: Base, files: Sequence[Path], image_size: tuple[int, int], *, pooling: str = "avg",
            batch_size: int = 32, cache: str | Path | None = None, verbose: str | int = 0) -> np.ndarray:
    """Pooled features (len(files), D) of `files`, in their order: from the cache when an entry for
    this base, pooling and these contents exists, else by running the base once and storing them."""
    files = [as_path(f) for f in files]  # a bucket's URL stays whole
    entry, digests, distinct = _entry(base, files, image_size, pooling, cache)
    features = _read(entry, distinct)
    if features is None:
        path_of = dict(zip(digests, files))
        start = time.perf_counter()
        stored = run_base(base.model, [path_of[d] for d in distinct], image_size, batch_size, pooling, verbose)
        seconds = time.perf_counter() - start
        try:
            write_atomic(entry, lambda tmp: np.savez(tmp, features=stored, digests=np.array(distinct)))
            write_json_atomic(entry.with_suffix(".json"), {
                "base": base.name, "source": base.source, "weights": base.weights, "image_size": list(image_size),
                "channels": base.channels, "pooling": pooling, "images": len(distinct), "features": stored.shape[1],
                "format": FORMAT,
            })
            log.info("extracted features of %d images with %s in %.1f s; cached in %s", len(distinct), base.name,
                     seconds, entry)
        except OSError as err:  # a cache can only cost time: the run goes on with the features in memory
            log.info("extracted features of %d images with %s in %.1f s", len(distinct), base.name, seconds)
            log.warning("feature cache %s cannot be written (%s); going on without caching", entry.parent,
                        err.strerror or err)
        features = dict(zip(distinct, stored))
    else:
        log.info("features of %d images from the cache: %s", len(distinct), entry)
    return np.stack([features[d] for d in digests])


def cached(base: Base, files: Sequence[Path], image_size: tuple[int, int], *, pooling: str = "avg",
           cache: str | Path | None = None) -> np.ndarray | None:
    """What `extract` gives for these arguments when the cache holds it, else None (nothing is run
    or written)."""
    files = [as_path(f) for f in files]  # a bucket's URL stays whole
    entry, digests, distinct = _entry(base, files, image_size, pooling, cache)
    features = _read(entry, distinct)
    return None if features is None else np.stack([features[d] for d in digests])


def _entry(base: Base, files: list[Path], image_size, pooling: str, cache) -> tuple[Path, list[str], list[str]]:
    """The cache entry of the features of `files` (its key: see the module), the SHA-256 of each
    file's content, and the distinct ones sorted (the entry's rows)."""
    digests = shards.record_digests(files) if files and shards.is_record(files[0]) else file_digests(files)
    distinct = sorted(set(digests))
    key = hashlib.sha256(json.dumps({
        "format": FORMAT,
        "base": base.name,
        "model": model_fingerprint(base.model),
        "image_size": list(image_size),
        "channels": base.channels,
        "pooling": pooling,
        "files": distinct,
    }).encode()).hexdigest()
    return cache_dir(cache) / f"{key}.npz", digests, distinct


def _read(entry: Path, digests: list[str]) -> dict[str, np.ndarray] | None:
    """{digest: features} of a cache entry, or None if there is none, it cannot be read, or it
    does not hold exactly the features of `digests` (its key's contents): a warning says which."""
    try:
        if not entry.is_file():
            return None
        with np.load(entry, allow_pickle=False) as stored:
            held, features = stored["digests"].tolist(), stored["features"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("ignoring unreadable cache entry %s (%s); extracting again", entry, err)
        return None
    if held != digests or features.ndim != 2 or len(features) != len(digests) or features.dtype != np.float32:
        log.warning("ignoring cache entry %s: it does not hold the features of its key's images; extracting again",
                    entry)
        return None
    return dict(zip(held, features))


def dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = False,
            seed: int = 0) -> tf.data.Dataset:
    """(features, labels: int32, or multi-hot rows) batches; with `shuffle`, a new seeded order every epoch."""
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        ds = ds.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# The outputs are a constant of the training set's tf.data graph, which distribution serializes
# (protocol buffers stop at 2 GB).
FROZEN_BUDGET = 1 << 30


def fit_frozen_once(ctx, index: int, kind: str, params, model: keras.Model, detail: str):
    """`ctx.fit` (tlkit.engine.training.RunContext) of a head or finetune stage whose `model` is the
    classifier, made ready by the stage: on the outputs of its frozen layers, computed once, where
    nothing random comes before the trainable layers (no augmentation) and the image cache may hold
    things in memory (`cache_images` auto or memory); else on the images, every epoch. The same
    batches and the same steps either way: only the frozen layers' forward pass is saved."""
    start = time.perf_counter()
    once = frozen_once(ctx, index, kind)
    if once is None:
        return ctx.fit(index, kind, params, model, detail=detail)
    rest, data, note = once
    frozen_seconds = time.perf_counter() - start
    result = ctx.fit(index, kind, params, rest, data, detail=f"{detail}, {note}", sharing=ctx.classifier)
    # the frozen pass is part of the stage's time (REPORT.md's seconds), though fit does not see it
    result.seconds += frozen_seconds
    return result


def frozen_once(ctx, index: int, kind: str):
    """(the trainable part of the classifier, its (train, val) datasets of the frozen part's
    outputs, what was done in words), or None where the frozen part must run every epoch (a log
    line says why)."""
    r = ctx.recipe
    if ctx.augmentation.active:
        log.info("stage %d (%s): augment=%s changes the images every epoch: the frozen layers run every epoch",
                 index, kind, r.augment)
        return None
    if r.cache_images in ("disk", "none"):  # asked to hold nothing per image in memory
        return None
    with ctx.strategy.scope():  # a model fitted under a strategy is made in its scope
        split = frozen_split(ctx.classifier, BASE_LAYER, r.pooling)
    if split is None:
        log.info("stage %d (%s): the frozen layers run every epoch: no single layer output separates them from "
                 "the trainable ones, or only preprocessing is frozen", index, kind)
        return None
    frozen, rest = split
    images = len(ctx.train) + len(ctx.val)
    size = images * int(np.prod(frozen.output_shape[1:])) * np.dtype(frozen.output.dtype).itemsize
    budget = min(FROZEN_BUDGET, imagecache.memory_budget_of())
    if size > budget:
        log.info("stage %d (%s): the frozen layers' outputs (%.0f MB) are more than the %.0f MB held in memory: "
                 "they run every epoch", index, kind, size / 2**20, budget / 2**20)
        return None
    start = time.perf_counter()
    train, val = (outputs(frozen, ctx.dataset(which, ordered=True)) for which in ("train", "val"))
    where = ("the whole base, pooled" if not ctx.classifier.get_layer(BASE_LAYER).trainable_weights
             else f"up to {frozen.layers[-1].name}")
    note = (f"the frozen layers ({where}) run once: {time.perf_counter() - start:.1f} s, "
            f"{size / 2**20:.1f} MB in memory")
    # shuffled as the images would be (same seed, same count): the same batches
    return rest, (dataset(train, tldata.targets(ctx.train), r.batch_size, shuffle=True, seed=r.seed),
                  dataset(val, tldata.targets(ctx.val), r.batch_size)), note


def frozen_split(classifier: keras.Model, base_layer: str,
                 pooling: str = "avg") -> tuple[keras.Model, keras.Model] | None:
    """(frozen, rest): the classifier cut in two where everything below is frozen, so that
    `rest(frozen(images))` is the classifier and only `rest` has anything to train; None when no
    single tensor separates the two, or nothing but preprocessing is frozen. A wholly frozen base
    is cut after the head's `pooling`, as an extraction pools it. The base runs in inference mode
    (tlkit.engine.classifier.base_in_inference), so `frozen` is a fixed function of the image: a stage
    computes it once instead of every epoch. `rest` shares the classifier's layers and lists its
    trainable variables in the classifier's order (an optimizer's saved state is matched to them
    by position)."""
    base = classifier.get_layer(base_layer)
    if not base.trainable_weights:
        frozen, rest = pooled_model(base, pooling), feature_head(classifier)
    else:
        split = _split_base(classifier, base)
        if split is None:
            return None
        frozen, rest = split
    if [v.path for v in rest.trainable_variables] != [v.path for v in classifier.trainable_variables]:
        return None
    return frozen, rest


def _split_base(classifier: keras.Model, base: keras.Model) -> tuple[keras.Model, keras.Model] | None:
    cut = _frozen_cut(base)
    if cut is None:
        return None
    frozen = keras.Model(base.inputs, cut, name=f"{base.name}_frozen")
    if not any(layer.weights for layer in frozen.layers if layer.name != PREPROCESSING):
        return None  # only fixed preprocessing below: nothing worth keeping
    inputs = keras.Input(cut.shape[1:], dtype=cut.dtype, name="frozen_output")
    # a functional model from an inner tensor reuses the base's layers and their variables
    x = keras.Model(cut, base.output, name=f"{base.name}_trainable")(inputs, training=False)
    return frozen, _with_head(classifier, base, inputs, x, "trainable_part")


def _frozen_cut(base: keras.Model):
    """The one tensor of `base` that everything trainable depends on, as far up the base as it can
    be: the layers with trainable weights and all after them are the trainable part; while that
    part takes in more than one tensor (a block that pads its input and also adds it back), the
    latest layer making one of them joins it."""
    try:
        layers = base.layers
        produced = {id(t): layer for layer in layers for t in keras.tree.flatten(layer.output)}
        inputs = {id(t) for t in keras.tree.flatten(base.inputs)}

        def taken(layer):
            return [] if isinstance(layer, keras.layers.InputLayer) else keras.tree.flatten(layer.input)

        live: list = []
        for layer in layers:
            if layer.trainable_weights or any(produced.get(id(t)) in live for t in taken(layer)):
                live.append(layer)
        while live:
            outside = {id(t): t for layer in live for t in taken(layer) if produced.get(id(t)) not in live}
            if inputs & outside.keys():
                return None
            if len(outside) == 1:
                return next(iter(outside.values()))
            live.append(max((produced[i] for i in outside), key=layers.index))
    except (AttributeError, ValueError):  # not a functional graph, or a layer called more than once
        return None
    return None


def outputs(model: keras.Model, images: tf.data.Dataset) -> np.ndarray:
    """`model` in inference mode over the (image, label) batches of `images`, one traced function
    for every batch size."""
    forward = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])
    return _through(forward, images, model.output_shape[1:], model.output.dtype)


def feature_head(classifier: keras.Model) -> keras.Model:
    """The classifier's head on its pooled features (tlkit.models.features): its layers after them,
    shared, not copied, so training this model trains the classifier's head."""
    features = features_in(classifier)
    if features is None:
        raise ValueError(f"{classifier.name} has no pooled features to train a head on")
    # a functional model from an inner tensor takes its input there, through the same layers
    return keras.Model(features, classifier.output, name="head")


def _with_head(classifier: keras.Model, base, inputs, x, name: str) -> keras.Model:
    """The model from `inputs` that takes `x` through the classifier's layers after `base`, shared,
    not copied."""
    for layer in classifier.layers[classifier.layers.index(base) + 1:]:
        x = layer(x)
    return keras.Model(inputs, x, name=name)
