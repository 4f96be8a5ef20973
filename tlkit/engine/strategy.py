"""The tf.distribute strategy of a run and what distribution asks of it: `configure` (strategy,
determinism, precision), one strategy of each kind per process, the chief, each worker's own copy
of the run, and the checks that every replica and worker can go on together."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from tlkit._util.io import cache_root
from tlkit._util.keras_internals import mean_logs_over_workers, set_op_determinism
from tlkit.data import shards
from tlkit.data.folders import ImageSet
from tlkit.engine.resume import ResumeState
from tlkit.errors import TlkitError
from tlkit.recipe.schema import Recipe

log = logging.getLogger(__name__)


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


def reads_own_files(strategy: tf.distribute.Strategy, images: ImageSet) -> bool:
    """Whether each worker of `strategy` trains on its own files of `images`: a pack's records
    under multiworker. A folder's images, or a pack's on one machine, are split batch by batch."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(images.files)
            and shards.is_record(images.files[0]))


def per_worker_input(images: ImageSet, batch_size: int,
                     make: Callable[[ImageSet, int], tf.data.Dataset]) -> Callable[[tf.distribute.InputContext],
                                                                          tf.data.Dataset]:
    """The dataset function (`strategy.distribute_datasets_from_function`) of training on a
    pack's records with `batch_size` images a global batch: each input pipeline (worker) gets
    `make(its share, batch per replica)`, its share being the records of its own shard files
    (`shards.worker_share`), so a worker reads only those files."""
    def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        try:
            batch = context.get_per_replica_batch_size(batch_size)
        except ValueError:
            raise TlkitError(f"the batch size {batch_size} does not divide over the {context.num_replicas_in_sync} "
                             "replicas: give a multiple of their number") from None
        share = shards.worker_share(images, context.num_input_pipelines, context.input_pipeline_id)
        files = sorted({Path(shards.record_ref(f)[0]).name for f in share.files})
        log.info("input pipeline %d of %d: %d training images from its own %d shard file(s) (%s)",
                 context.input_pipeline_id, context.num_input_pipelines, len(share), len(files), ", ".join(files))
        return make(share, batch)

    return dataset


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

