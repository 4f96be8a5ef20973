"""The learning-rate finder (fastai's `lr_find`, after Leslie Smith): train the model one stage of a
recipe would train, with the learning rate growing exponentially from `start_lr` to `end_lr`
over `steps` steps, and record the loss of every step; stop, as fastai does, when the loss's
moving average passes four times its best. The suggestion is the rate where the loss, smoothed
without lag, falls fastest (the steepest descent against log10 of the rate).

    result = tlkit.lr_find(base="efficientnet_lite0", data="photos", stage=1, out="sweep")
    result.suggestion, result.flag      # 3e-3, "--lr-head 3e-3"

It builds the model exactly as the stage would (the same frozen and unfrozen blocks, BatchNorm in
inference mode, the same optimizer, layer decay, loss and class weights) from the recipe's base
as it is loaded, so for a stage after others it sweeps from the base's weights, not from where
the stages before would leave them. It writes nothing but `OUT/lr_find.png`: no run directory,
no TensorBoard logs, no image cache, and the model's weights are put back afterwards.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import tlkit.stages  # noqa: F401  (registers the stage kinds)
from tlkit._util.io import write_atomic
from tlkit.engine.training import context
from tlkit.errors import TlkitError
from tlkit.recipe.kinds import STAGES, StageOverrides, resolve, stage_params

log = logging.getLogger(__name__)

PLOT = "lr_find.png"
BETA = 0.98  # fastai's moving average of the loss, for when to stop
DIVERGED = 4.0  # stop once that average is this many times its best
SKIP_START, SKIP_END = 10, 5  # steps left out of the suggestion (and the plot), as fastai's plot


@dataclass
class LRFind:
    learning_rates: list[float]  # of each step taken
    losses: list[float]  # each step's training loss
    smoothed: list[float]  # their centred moving average (`smooth`)
    suggestion: float  # where the smoothed loss falls fastest
    flag: str  # the option that sets it: --lr-head 3e-3, or --stage-option N:learning_rate=3e-3
    stage: int  # the stage swept (1-based) and its kind
    kind: str
    plot: Path


def smooth(losses, half_width: int = 4) -> list[float]:
    """The mean of each step's loss with the `half_width` steps either side of it (fewer at the
    ends). Centred, so it does not lag: fastai's moving average (beta 0.98) trails the loss by
    about 50 steps, half a 100-step sweep, and so moves its steepest point a few decades right."""
    values = np.asarray(losses, np.float64)
    return [float(values[max(0, i - half_width): i + half_width + 1].mean()) for i in range(len(values))]


def steepest(learning_rates, smoothed) -> float:
    """The rate at which the smoothed loss falls fastest against log10(rate), leaving out the
    first and last few steps (their smoothing is the least settled)."""
    lrs, loss = np.asarray(learning_rates), np.asarray(smoothed)
    keep = slice(SKIP_START, len(loss) - SKIP_END) if len(loss) > SKIP_START + SKIP_END + 2 else slice(None)
    lrs, loss = lrs[keep], loss[keep]
    slope = np.gradient(loss, np.log10(lrs))
    return float(lrs[int(np.argmin(slope))])


def short(rate: float) -> str:
    """A rate with one significant digit, as one writes it on a command line: 3e-3, 0.1."""
    mantissa, exponent = f"{rate:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def lr_find(base: str | None = None, data: str | None = None, recipe=None, stage: int | None = None,
            out: str | Path = ".", *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            stages: StageOverrides | None = None, verbose: str | int = "auto", **settings) -> LRFind:
    """Sweep the learning rate of stage `stage` (1-based; default the first) of `recipe` (a
    Recipe, built-in name or TOML path; default classic) on `data`, and plot the loss against
    it into `out`/lr_find.png. Settings and `stages` are as for `tlkit.finetune`."""
    if not 0 < start_lr < end_lr:
        raise TlkitError(f"the sweep needs 0 < start_lr < end_lr, not {start_lr:g} and {end_lr:g}")
    if steps < SKIP_START + SKIP_END + 5:
        raise TlkitError(f"steps must be at least {SKIP_START + SKIP_END + 5}, not {steps}")
    recipe = resolve(recipe, base=base, data=data, stages=stages, **settings)
    number = stage or 1
    if not 1 <= number <= len(recipe.stages):
        raise TlkitError(f"recipe {recipe.name} has {len(recipe.stages)} stages: there is no stage {number}")
    kinds = [STAGES.get(s.kind) for s in recipe.stages]
    kind = kinds[number - 1]
    if kind.prepare is None:
        trains = ", ".join(name for name, k in STAGES.items() if k.prepare)
        raise TlkitError(f"stage {number} of recipe {recipe.name} is {kind.name}: lr-find sweeps stages that train "
                         f"a classifier ({trains})")
    if kinds[0].make_base is not None:
        raise TlkitError(f"recipe {recipe.name} makes its base in its first stage ({kinds[0].name}): run that "
                         "first (tlkit pretrain) and pass --base RUN")
    params = stage_params(recipe.stages[number - 1])
    # decoded images kept in memory at most: a disk cache would be a trace
    quiet = dataclasses.replace(recipe, cache_images="memory" if recipe.cache_images == "memory" else "none")
    ctx, _ = context(quiet, None, out, verbose=verbose)
    model, detail = kind.prepare(ctx, params)
    log.info("lr-find: stage %d (%s), %s; learning rate %g to %g over %d steps", number, kind.name, detail,
             start_lr, end_lr, steps)
    weights = model.get_weights()
    try:
        lrs, losses = _sweep(ctx, model, params, start_lr, end_lr, steps)
    finally:
        model.set_weights(weights)
    smoothed = smooth(losses)
    suggestion = steepest(lrs, smoothed)
    flag = _flag(recipe, number, kind.name, suggestion)
    plot = Path(out) / PLOT
    _plot(plot, lrs, losses, smoothed, suggestion, f"{recipe.name}, stage {number} ({kind.name}): {detail}")
    log.info("lr-find: the loss falls fastest at %s; set it with %s (plot: %s)", short(suggestion), flag, plot)
    return LRFind(lrs, losses, smoothed, suggestion, flag, number, kind.name, plot)


def _sweep(ctx, model, params, start_lr: float, end_lr: float, steps: int) -> tuple[list[float], list[float]]:
    """One step per batch (the training batches repeated, augmented as in training) at rates
    start_lr * q^i, q chosen to reach end_lr at the last step: (rates, losses) of the steps taken."""
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    # ExponentialDecay with a rate above 1 grows: step i gets start_lr * growth**i
    ctx.compile(model, params, keras.optimizers.schedules.ExponentialDecay(start_lr, 1, growth))
    lrs, losses, best, average = [], [], math.inf, 0.0
    for i, (images, labels) in enumerate(ctx.dataset("train").repeat().take(steps)):
        model.reset_metrics()  # train_on_batch reports running means: this batch's loss alone
        loss = float(model.train_on_batch(images, labels, class_weight=ctx.class_weight, return_dict=True)["loss"])
        lrs.append(start_lr * growth ** i)
        losses.append(loss)
        average = BETA * average + (1 - BETA) * loss
        smoothed = average / (1 - BETA ** (i + 1))
        if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
            break
        best = min(best, smoothed)
    if len(losses) < SKIP_START + SKIP_END + 3:
        raise TlkitError(f"the loss blew up after {len(losses)} steps, at a learning rate of {lrs[-1]:.2g}: "
                         "start the sweep lower (--start-lr)")
    return lrs, losses


def _flag(recipe, number: int, kind: str, rate: float) -> str:
    """The option of `tlkit finetune` that sets stage `number`'s learning rate to `rate`."""
    same = [s for s in recipe.stages if s.kind == kind]
    if kind in ("head", "finetune") and len(same) == 1:
        return f"--lr-{kind} {short(rate)}"
    return f"--stage-option {number}:learning_rate={short(rate)}"


def _plot(path: Path, lrs, losses, smoothed, suggestion: float, title: str) -> None:
    fig = Figure(figsize=(7, 4.5), dpi=100, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = slice(SKIP_START, len(lrs) - SKIP_END)
    ax.plot(lrs, losses, color="0.75", linewidth=0.8, label="loss of each step")
    ax.plot(lrs[shown], smoothed[shown], color="C0", linewidth=2, label="smoothed loss")
    at = lrs.index(suggestion)
    ax.axvline(suggestion, color="C3", linestyle="--", linewidth=1)
    ax.plot([suggestion], [smoothed[at]], "o", color="C3", markersize=8,
            label=f"suggestion {short(suggestion)} (steepest fall)")
    ax.set_xscale("log")
    low, high = min(smoothed[shown]), max(smoothed[shown][:max(1, len(smoothed[shown]) // 2)])
    ax.set_ylim(low - 0.1 * (high - low), high + 0.3 * (high - low))  # the blow-up at the end is off the chart
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    write_atomic(path, lambda tmp: canvas.print_png(str(tmp)))
