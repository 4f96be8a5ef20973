"""The jobs: fine-tune, extract, train from scratch, pretrain, resume. Each resolves its recipe
(with the settings and per-stage parameters given) and runs it through `run_recipe`, which runs
its stages on the engine and writes the run directory, whose `recipe.toml` repeats it.

Settings are recipe fields (`weights`, `image_size`, `batch_size`, `seed`, ...); `stages` sets
stage parameters, keyed by kind or by stage number: `stages={"finetune": {"unfreeze": 2}}`.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import keras

import tlkit.stages  # noqa: F401  (registers the stage kinds)
from tlkit._util.io import save_model_atomic
from tlkit._util.track import tracker_name
from tlkit._util.urls import is_url
from tlkit.bases import Base
from tlkit.bases.zoo import zoo_input
from tlkit.data import manifest
from tlkit.engine import tracking
from tlkit.engine.results import log_summary, write_results
from tlkit.engine.resume import ResumeState, RunInterrupted
from tlkit.engine.strategy import (
    check_same_resume_state,
    distribution_strategy,
    is_chief,
    tf_config_task,
    worker_folder,
)
from tlkit.engine.training import BaseBuilder, RunContext, context
from tlkit.errors import TlkitError
from tlkit.evaluation.calibrate import calibrate_run
from tlkit.evaluation.report import write_run_report
from tlkit.models import ZOO
from tlkit.models.blocks import build_block_map
from tlkit.recipe.kinds import STAGES, StageKind, StageOverrides, resolve, stage_params  # noqa: F401  (tlkit.resolve)
from tlkit.recipe.schema import Recipe
from tlkit.rundir import bucket
from tlkit.rundir import guard as runguard
from tlkit.rundir.files import RunDir
from tlkit.rundir.load import Run, with_calibration, write_labels

log = logging.getLogger(__name__)


def default_out(name: str) -> Path:
    return Path("runs") / f"{name.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"


def finetune(base: str | None = None, data: str | None = None, recipe=None, out: str | Path | None = None, *,
             stages: StageOverrides | None = None, verbose: str | int = "auto", job: str = "finetune",
             overwrite: bool = False, **settings) -> Run:
    """Fine-tune a pretrained base on a folder of images; returns the finished run.

    `recipe` is a Recipe, a built-in name or a TOML path (default: classic). A recipe whose first
    stage is `autoencoder` needs no base: it pretrains its own. An existing run in `out` is
    replaced only with `overwrite` (tlkit.rundir.guard). `data` is a folder of class folders, a
    manifest file, or a DataFrame of path,label[,split] (tlkit.data.manifest).
    """
    data = _data_file(data, settings)
    return run(resolve(recipe, base=base, data=data, stages=stages, **settings), out, job=job, verbose=verbose,
               overwrite=overwrite)


def extract(base: str | None = None, data: str | None = None, recipe="extract", out: str | Path | None = None, *,
            stages: StageOverrides | None = None, verbose: str | int = "auto", overwrite: bool = False,
            **settings) -> Run:
    """Feature-extraction mode: the frozen base runs once over the images (or its cached features
    are reused, see tlkit.engine.frozen), a head is trained on the features and attached to the base.
    The run directory is the same as `finetune`'s; `cache=DIR` sets the cache folder."""
    return finetune(base, data, recipe, out, stages=stages, verbose=verbose, job="extract", overwrite=overwrite,
                    **settings)


def train(arch: str, data: str | None = None, recipe="scratch", out: str | Path | None = None, *,
          stages: StageOverrides | None = None, verbose: str | int = "auto", overwrite: bool = False,
          **settings) -> Run:
    """Train a zoo architecture from scratch, with its own top, through the same engine and run
    directory as `finetune` (so the result evaluates, predicts and exports the same way)."""
    data = _data_file(data, settings)
    return run(resolve(recipe, base=arch, weights="none", data=data, stages=stages, **settings), out, job="train",
               verbose=verbose, overwrite=overwrite)


def _data_file(data, settings: dict):
    """`data`, a DataFrame saved as a manifest file (whose paths are relative to the working
    folder, unless `settings` has an image_root)."""
    if not manifest.is_frame(data):
        return data
    if settings.get("image_root") is None:
        settings["image_root"] = str(Path.cwd())
    return str(manifest.saved_frame(data))


def _zoo_builder(arch: str, recipe):
    """What `train` builds once the classes are known: the zoo model with its own top."""
    spec = ZOO.get(arch)
    size = (recipe.image_size, recipe.image_size) if recipe.image_size else None

    def build(classes: list[str]):
        inputs, x = zoo_input(spec, size)
        try:
            model = spec.build(include_top=True, classes=len(classes), input_tensor=x)
        except ValueError as err:
            raise TlkitError(f"{arch} cannot take images of {inputs.shape[1]}x{inputs.shape[2]}: {err}") from err
        # the trained top is a block of its own (every layer after the arch's blocks but the input
        # and its scaling), so a later finetune can start from this model
        blocks = build_block_map(model, [*spec.blocks, ("top", r"(?!image$|preprocessing$)")])
        return Base(arch, model, blocks, spec.input_shape[:2], "zoo", "none"), model

    return build


def pretrain(data: str | None = None, out: str | Path | None = None, recipe="autoencoder", *,
             stages: StageOverrides | None = None, verbose: str | int = "auto", overwrite: bool = False,
             **settings) -> Run:
    """Pretrain a convolutional autoencoder on a folder of unlabeled images (with or without class
    sub-folders); its run directory is a base for `finetune(base=RUN)`."""
    return run(resolve(recipe, data=data, stages=stages, **settings), out, job="pretrain", verbose=verbose,
               overwrite=overwrite)


def resume(path: str | Path, *, verbose: str | int = "auto") -> Run:
    """Go on with the run in `run` that stopped (a crash, Ctrl-C, a killed machine) from the end
    of its last saved epoch, with the recipe it resolved; it ends as it would have. A run on a
    bucket is copied down into its staging folder first (tlkit.rundir.bucket)."""
    if is_url(path):
        local = bucket.staging(path)
        runguard.check_out(local, resume=True)  # a run on this machine writing it now
        state = ResumeState.read(bucket.pull(path, local))
        if state is None:
            raise TlkitError(f"{path} has nothing to resume from (no {RunDir.RESUME_STATE}): "
                             + ("it finished" if RunDir(local).model.is_file() else "it stopped before its first "
                                "epoch ended, or is not a run directory") + "; run it again")
        return run(Recipe.load(RunDir(local).recipe), path, job=state.job, verbose=verbose, resume=True)
    path = Path(path)
    # A worker other than the chief of a multi-worker run resumes from its own copy of the run, on
    # its own machine; the chief, or a run on one machine, from `run`. If this worker has nothing
    # to resume from, it stops here with that said, before the strategy: the other workers wait for
    # it to join until they are killed (run_recipe's check that all saved the same epoch needs them all).
    task = tf_config_task()
    copy = worker_folder(path, *task) if task else None
    saved = copy if copy is not None and ResumeState.read(copy) is not None else path
    state = ResumeState.read(saved)
    if state is None:
        where = f" (nor has this worker's copy of it, {copy})" if copy is not None else ""
        raise TlkitError(f"{path} has nothing to resume from (no {RunDir.RESUME_STATE}){where}: "
                         + ("it finished" if RunDir(path).model.is_file() else "there is no such folder"
                            if not path.exists() else "it stopped before its first epoch ended, or is not a run "
                            "directory") + "; run it again")
    recipe = Recipe.load(RunDir(saved).recipe)
    return run(recipe, path, job=state.job, verbose=verbose, resume=True)


def run(recipe: Recipe, out: str | Path | None = None, *, job: str = "finetune", verbose: str | int = "auto",
        overwrite: bool = False, resume: bool = False, track: str | None = None, hooks=()) -> Run:
    """Run the resolved `recipe` (`resolve`, done once per request: by the job functions above,
    or by the CLI, which checks it before TensorFlow loads) as `job` into `out` (default
    runs/<base>-<time>); the finished run. `track`: "mlflow" logs the run there (default
    $TLKIT_TRACK; tlkit.engine.tracking); a resumed run that was tracked goes on being tracked.
    `hooks` make more callbacks for every stage (RunContext.hooks). An `out` on a bucket
    (`gs://...`) is written locally and mirrored there (tlkit.rundir.bucket); the run returned
    is the local copy's."""
    if job == "pretrain" and [s.kind for s in recipe.stages] != ["autoencoder"]:
        raise TlkitError(f"recipe {recipe.name} is not one autoencoder stage: run recipes with more stages "
                         "through `tlkit finetune --recipe`")
    if is_url(out):
        return _run_to_bucket(recipe, str(out), job=job, verbose=verbose, overwrite=overwrite, resume=resume,
                              track=track, hooks=hooks)
    out = Path(out) if out else default_out("autoencoder" if job == "pretrain" else recipe.base or "run")
    build = _zoo_builder(recipe.base, recipe) if job == "train" else None
    track = tracker_name(track) or ("mlflow" if resume and RunDir(out).tracking.is_file() else None)
    ctx = _run_resolved(recipe, None, out, build=build, verbose=verbose, job=job, resume=resume,
                        overwrite=overwrite, track=track, hooks=hooks)
    # a pretrain run has no classifier: its model is the encoder, a base
    model, file = (ctx.served, RunDir(out).model) if ctx.classes else (ctx.base.model, RunDir(out).base)
    return with_calibration(Run(out, model, ctx.classes, ctx.recipe, file, results=ctx.results, base=ctx.base))


def _run_to_bucket(recipe: Recipe, url: str, *, overwrite: bool, resume: bool, hooks, **options) -> Run:
    """`run` into the staging folder of `url`, mirrored to it after every epoch and at the end,
    whether the run ends, fails or is interrupted. With `resume`, `resume` has pulled it down."""
    if recipe.distribute == "multiworker":  # a worker's mirror of its own (empty) folder would empty the bucket's run
        raise TlkitError(f"--out {url}: a multi-worker run writes its run directory on the chief's disk, not to a "
                         "bucket yet; give a local --out and copy it up when it ends")
    if not resume:
        bucket.check_out(url, overwrite=overwrite)
    local = bucket.staging(url)
    mirror = bucket.mirror(local, url)
    log.info("run directory %s, written in %s and mirrored there after every epoch", url, local)

    def push_every_epoch(ctx, index, kind):
        # at the next epoch's start and the stage's end: the resume snapshot is the last callback of an epoch's end
        return keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: mirror.push(),
                                              on_train_end=lambda logs: mirror.push())

    try:
        # overwrite: what an earlier run left in the staging folder; a live run's lock still refuses it
        return run(recipe, local, overwrite=not resume, resume=resume, hooks=[*hooks, push_every_epoch], **options)
    except RunInterrupted:  # the command that goes on names the bucket, not the staging folder
        raise RunInterrupted(url, options["job"], ResumeState.read(local)) from None
    finally:
        if local.is_dir():
            mirror.push()


def run_recipe(recipe: Recipe, base: Base | None, out: str | Path, *, model: keras.Model | None = None,
               build: BaseBuilder | None = None, data=None, verbose: str | int = "auto", job: str = "finetune",
               resume: bool = False, overwrite: bool = False) -> RunContext:
    """Run every stage of the resolved `recipe` (see `tlkit.recipe.kinds.resolve`) and write the
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

    `out` must be new, empty, or an existing run with `overwrite` (tlkit.rundir.guard); the run holds
    its lock throughout and is marked unfinished until its last file is written.
    """
    # a recipe made in Python gets its stages' defaults and absolute paths too
    return _run_resolved(resolve(recipe, check_base_name=base is None and build is None), base, Path(out),
                         model=model, build=build, data=data, verbose=verbose, job=job, resume=resume,
                         overwrite=overwrite)


def _run_resolved(recipe: Recipe, base: Base | None, out: Path, *, model: keras.Model | None = None,
                  build: BaseBuilder | None = None, data=None, verbose: str | int = "auto", job: str = "finetune",
                  resume: bool = False, overwrite: bool = False, track: str | None = None, hooks=()) -> RunContext:
    """`run_recipe` on a recipe already resolved."""
    # the strategy first: a multi-worker one can only be made before TensorFlow has run anything
    strategy = distribution_strategy(recipe.distribute)
    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        # Keras averages the loss on each replica, then over replicas: uneven shares weigh unevenly
        log.warning("batch size %d does not split evenly over %d replicas: each step then weighs images "
                    "unevenly; pass a multiple of %d", recipe.batch_size, replicas, replicas)
    run_dir = Path(out)
    chief = is_chief(strategy)
    if not chief:
        resolver = strategy.cluster_resolver
        out = worker_folder(run_dir, resolver.task_type, resolver.task_id)
        if not resume:
            # what a run that stopped left here; only now, once the strategy is made: that waits for
            # every worker, so the chief has accepted its --out (a mistaken rerun it refused, in place
            # of --resume, has not cost this worker its state)
            shutil.rmtree(out, ignore_errors=True)
        log.info("not the chief: writing this worker's copy of the run to %s, kept until the run ends so that "
                 "--resume %s finds it here; the chief writes the run directory", out, run_dir)
    if resume and recipe.distribute == "multiworker":
        check_same_resume_state(strategy, ResumeState.read(Path(out)), run_dir)
    lock = runguard.claim(out, overwrite=overwrite, resume=resume)
    try:
        return _run_recipe(recipe, base, Path(out), model=model, build=build, data=data, verbose=verbose, job=job,
                           resume=resume, overwrite=overwrite, run_dir=run_dir, track=track if chief else None,
                           hooks=hooks)
    except Exception as err:
        if not isinstance(err, RunInterrupted):  # an interrupted run is unfinished: it resumes
            runguard.fail(Path(out), err)
        if track and chief:
            tracking.end_tracked(Path(out), "KILLED" if isinstance(err, RunInterrupted) else "FAILED")
        raise
    finally:
        lock.release()
        if not chief and ResumeState.read(Path(out)) is None:  # it ended, or stopped with nothing to resume
            shutil.rmtree(out, ignore_errors=True)


def _run_recipe(recipe: Recipe, base: Base | None, out: Path, *, model, build, data, verbose, job, resume,
                overwrite, run_dir: Path, track: str | None = None, hooks=()) -> RunContext:
    """`run_recipe` writing into `out`: `run_dir` itself, or a worker's own copy of it."""
    state = ResumeState.read(out) if resume else None
    if resume and state is None:
        raise TlkitError(f"{out} has nothing to resume from (no {RunDir.RESUME_STATE}): it finished, or "
                         "stopped before its first epoch ended; run it again")
    kinds: list[StageKind] = [STAGES.get(stage.kind) for stage in recipe.stages]
    params = [stage_params(stage, f"recipe {recipe.name}, stage {i}") for i, stage in enumerate(recipe.stages, 1)]
    labelled = any(kind.needs_labels for kind in kinds)
    ctx, report = context(recipe, base, out, model=model, build=build, data=data, verbose=verbose)
    ctx.job, ctx.resume = job, state
    classes, train, val, resolved = ctx.classes, ctx.train, ctx.val, ctx.recipe
    runguard.start(out, overwrite=overwrite, resume=resume)
    tracker = tracking.MlflowTracker.start(out, resolved, job, resume) if track else None
    ctx.hooks = [*hooks, *([tracker.callback] if tracker else [])]
    if labelled:
        log.info("%d training and %d validation images in %d classes; base %s (%s, weights %s); run directory %s",
                 len(train), len(val), len(classes), ctx.base.name, ctx.base.source, ctx.base.weights, out)
    else:
        log.info("%d training and %d validation images; run directory %s", len(train), len(val), out)
    if ctx.class_weight:
        log.info("class weights (%s): %s", recipe.class_weight,
                 ", ".join(f"{c} {w:.3g}" for c, w in zip(classes, ctx.class_weight.values())))
    if labelled:
        write_labels(RunDir(out).labels, classes)
    resolved.save(RunDir(out).recipe)
    report.save(RunDir(out).data_report)
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
        raise RunInterrupted(run_dir, job, saved) from None
    if state is not None and state.stage > len(kinds) and classes:  # every stage had ended: the last one's weights
        state.restore(ctx.classifier, None, None, None, None)
    if labelled:
        ctx.calibrated = calibrate_run(out, ctx.classifier, train, val, resolved, base=ctx.base)
        # after the stages: an autoencoder stage replaces the base
        RunDir(out).write_blocks(ctx.base.blocks)
        save_model_atomic(ctx.served, RunDir(out).model)
    write_results(ctx)
    tracking.write_hparams(ctx)
    shutil.rmtree(RunDir(out).resume, ignore_errors=True)  # finished: nothing to resume
    if labelled:
        write_run_report(out, ctx.served, classes, train, val, resolved, ctx.results)
        log_summary(ctx)
    if tracker:
        tracker.finish()
    runguard.finish(out)
    return ctx

