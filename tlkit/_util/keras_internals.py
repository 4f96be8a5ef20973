"""Every use of private Keras (`keras.src`) in tlkit, in one place.

Each is something Keras does but does not export; checked on Keras 3.15. When Keras changes,
this module is the one to fix.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import keras
from keras.src.backend.config import keras_home  # noqa: F401  (where get_file caches; no public getter)
from keras.src.saving import serialization_lib
from keras.src.utils import file_utils
from keras.src.utils.naming import to_snake_case  # noqa: F401  (how Keras names layers it numbers)

# keras.utils.get_file checks hashes with these, but does not export them.
validate_file = file_utils.validate_file
hash_file = file_utils.hash_file


# Iterators `fit` makes over a dataset of known length per epoch: one as the epoch begins, and one
# it makes as the epoch ends and then drops (EpochIterator._enumerate_iterator). A resumed run
# makes as many to draw the same shuffle and augmentation seeds (tests/engine/test_resume.py checks it).
# Under a tf.distribute strategy `fit` distributes the dataset, and each of its iterators still
# makes one of the dataset's: the same count (tests/engine/test_distribute.py checks it, mirrored and
# multi-worker).
ITERATORS_PER_EPOCH = 2


def in_safe_mode() -> bool:
    """Whether a `.keras` file is being loaded in safe mode: a layer that runs code from outside
    the file (a SavedModel graph) must refuse then. Keras keeps the flag in a private scope."""
    return serialization_lib.in_safe_mode() is not False


def run_through_graph(model: keras.Model, inputs, operation_fn):
    """Run `inputs` through a functional model calling `operation_fn(op)(*args, **kwargs)` for
    each node: what `Functional.call` itself uses, and the only per-layer graph runner Keras has."""
    return model._run_through_graph(inputs, operation_fn=operation_fn)


def is_functional(model) -> bool:
    return hasattr(model, "_run_through_graph")


@contextmanager
def replaced_downloads(get_file, load_weights) -> Iterator[None]:
    """Within this, keras.applications call `get_file` and `load_weights(model, path, ...)` in
    place of Keras' own: the applications look `get_file` up in `file_utils` at each build, and
    load their weights through `keras.Model.load_weights`."""
    saved_get_file, saved_load = file_utils.get_file, keras.Model.load_weights
    file_utils.get_file, keras.Model.load_weights = get_file, load_weights
    try:
        yield
    finally:
        file_utils.get_file, keras.Model.load_weights = saved_get_file, saved_load


@contextmanager
def built_from_shapes(model: keras.Model, dataset) -> Iterator[None]:
    """While inside, `fit` and `evaluate` of `model` under a tf.distribute strategy build its
    metrics from a batch of zeros of `dataset`'s shapes. Keras' own build
    (`TensorFlowTrainer._maybe_symbolic_build`) takes the first batch off a fresh iterator of the
    data: that moves a shuffled dataset's seeds on by one epoch, so a distributed run would see
    other batches than a single-device one, and it fails when that batch does not split evenly
    over the replicas (it averages the replicas' batches). Without a strategy Keras builds
    nothing there, and this changes nothing."""
    x_spec, y_spec, *_ = dataset.element_spec  # sample weights, if any, build nothing
    batch = (tf_zeros(x_spec), tf_zeros(y_spec), None)
    build = type(model)._maybe_symbolic_build
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: build(model, data_batch=batch)
    try:
        yield
    finally:
        del model._maybe_symbolic_build


def tf_zeros(spec):
    import tensorflow as tf  # the TensorFlow backend's trainer is what this module patches

    return tf.zeros([1, *spec.shape[1:]], spec.dtype)


def mean_logs_over_workers() -> None:
    """Let `fit` and `evaluate` run under MultiWorkerMirroredStrategy: Keras 3.15 reduces the
    logs of a step (scalars) over the workers along axis 0 (`reduce_per_replica`, "mean"), which
    fails on a scalar; reduce them over the replicas alone (axis None) instead. The logs are
    metric results, already the same on every replica, so the mean is that value."""
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "tlkit", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.tlkit = True
    trainer.reduce_per_replica = reduce_per_replica


def set_op_determinism(on: bool) -> None:
    """Deterministic kernels on or off for what runs next in this process. TensorFlow exports only
    the switch on (`tf.config.experimental.enable_op_determinism`); its off switch is private."""
    from tensorflow.python.framework import config

    if on:
        config.enable_op_determinism()
    else:
        config.disable_op_determinism()


def keep_inference_mode(layer: keras.Layer, on: bool) -> None:
    """Whether `layer`, called with training=False inside a functional model, stays in inference
    mode when that model is called with training=True (as `fit` calls it). Keras 3 passes the outer
    model's training flag over the one recorded for each layer (`functional.operation_fn`), for
    every layer listing "training" among its call-context arguments: a base called as the Keras
    guide calls it, `base(inputs, training=False)`, still has its Dropout layers (EfficientNet's
    per-block dropout) active in training; only its BatchNormalization layers stay in inference
    mode, because they are frozen. Taking "training" off that list makes the recorded False hold."""
    if on:
        layer._call_context_args = layer._call_context_args - {"training"}
    else:
        layer._call_context_args = layer._call_context_args | {"training"}


def keeps_inference_mode(layer: keras.Layer) -> bool:
    """Whether `keep_inference_mode(layer, True)` is in force."""
    return "training" not in layer._call_context_args
