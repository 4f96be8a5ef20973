"""The jobs: fine-tune, extract, train from scratch, pretrain. Each resolves its recipe (with the
settings and per-stage parameters given) and runs it through `tlkit.core.run.run_recipe`, so
every job writes the same run directory, whose `recipe.toml` repeats it.

Settings are recipe fields (`weights`, `image_size`, `batch_size`, `seed`, ...); `stages` sets
stage parameters, keyed by kind or by stage number: `stages={"finetune": {"unfreeze": 2}}`.
"""
from __future__ import annotations

import time
from pathlib import Path

import tlkit.stages  # noqa: F401  (registers the stage kinds)
from tlkit.bases import Base
from tlkit.bases.zoo import zoo_input
from tlkit.blocks import build_block_map
from tlkit.core.kinds import StageOverrides, resolve  # noqa: F401  (tlkit.resolve)
from tlkit.core.run import RESUME_FOLDER, ResumeState, RunContext, run_recipe, tf_config_task, worker_folder
from tlkit.errors import TlkitError
from tlkit.models import ZOO
from tlkit.recipe import Recipe


def default_out(name: str) -> Path:
    return Path("runs") / f"{name.replace(':', '_').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"


def finetune(base: str | None = None, data: str | None = None, recipe=None, out: str | Path | None = None, *,
             stages: StageOverrides | None = None, verbose: str | int = "auto", job: str = "finetune",
             overwrite: bool = False, **settings) -> RunContext:
    """Fine-tune a pretrained base on a folder of images; returns the finished run.

    `recipe` is a Recipe, a built-in name or a TOML path (default: classic). A recipe whose first
    stage is `autoencoder` needs no base: it pretrains its own. An existing run in `out` is
    replaced only with `overwrite` (tlkit.runguard).
    """
    recipe = resolve(recipe, base=base, data=data, stages=stages, **settings)
    return run_recipe(recipe, None, Path(out) if out else default_out(recipe.base or "run"), verbose=verbose,
                      job=job, overwrite=overwrite)


def extract(base: str | None = None, data: str | None = None, recipe="extract", out: str | Path | None = None, *,
            stages: StageOverrides | None = None, verbose: str | int = "auto", overwrite: bool = False,
            **settings) -> RunContext:
    """Feature-extraction mode: the frozen base runs once over the images (or its cached features
    are reused, see tlkit.features), a head is trained on the features and attached to the base.
    The run directory is the same as `finetune`'s; `cache=DIR` sets the cache folder."""
    return finetune(base, data, recipe, out, stages=stages, verbose=verbose, job="extract", overwrite=overwrite,
                    **settings)


def train(arch: str, data: str | None = None, recipe="scratch", out: str | Path | None = None, *,
          stages: StageOverrides | None = None, verbose: str | int = "auto", overwrite: bool = False,
          **settings) -> RunContext:
    """Train a zoo architecture from scratch, with its own top, through the same engine and run
    directory as `finetune` (so the result evaluates, predicts and exports the same way)."""
    recipe = resolve(recipe, base=arch, weights="none", data=data, stages=stages, **settings)
    return run_recipe(recipe, None, Path(out) if out else default_out(arch), build=_zoo_builder(arch, recipe),
                      verbose=verbose, job="train", overwrite=overwrite)


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
             **settings) -> RunContext:
    """Pretrain a convolutional autoencoder on a folder of unlabeled images (with or without class
    sub-folders); its run directory is a base for `finetune(base=RUN)`."""
    recipe = resolve(recipe, data=data, stages=stages, **settings)
    if [s.kind for s in recipe.stages] != ["autoencoder"]:
        raise TlkitError(f"recipe {recipe.name} is not one autoencoder stage: run recipes with more stages "
                         "through `tlkit finetune --recipe`")
    return run_recipe(recipe, None, Path(out) if out else default_out("autoencoder"), verbose=verbose, job="pretrain",
                      overwrite=overwrite)


def resume(run: str | Path, *, verbose: str | int = "auto") -> RunContext:
    """Go on with the run in `run` that stopped (a crash, Ctrl-C, a killed machine) from the end
    of its last saved epoch, with the recipe it resolved; it ends as it would have."""
    run = Path(run)
    # A worker other than the chief of a multi-worker run resumes from its own copy of the run, on
    # its own machine; the chief, or a run on one machine, from `run`. If this worker has nothing
    # to resume from, it stops here with that said, before the strategy: the other workers wait for
    # it to join until they are killed (run_recipe's check that all saved the same epoch needs them all).
    task = tf_config_task()
    copy = worker_folder(run, *task) if task else None
    saved = copy if copy is not None and ResumeState.read(copy) is not None else run
    state = ResumeState.read(saved)
    if state is None:
        where = f" (nor has this worker's copy of it, {copy})" if copy is not None else ""
        raise TlkitError(f"{run} has nothing to resume from (no {RESUME_FOLDER / 'state.json'}){where}: "
                         + ("it finished" if (run / "model.keras").is_file() else "there is no such folder"
                            if not run.exists() else "it stopped before its first epoch ended, or is not a run "
                            "directory") + "; run it again")
    recipe = Recipe.load(saved / "recipe.toml")
    build = _zoo_builder(recipe.base, recipe) if state.job == "train" else None
    return run_recipe(recipe, None, run, build=build, verbose=verbose, job=state.job, resume=True)
