"""Hyperparameter search with Optuna (`tlkit tune`): trials of a recipe over a search space.

A study is a folder:

    tune.toml       the recipe searched, the space, the objective: what `--resume STUDY` goes on with
    study.db        Optuna's storage (SQLite), so a study continues across processes
    trial-000/ ...  each trial a normal run directory (`tlkit runs STUDY` lists them), with trial.json
    recipe.toml     the best trial's resolved recipe: `tlkit finetune --recipe STUDY/recipe.toml` repeats it
    importance.json each parameter's importance to the objective (fANOVA)
    tune.png        the objective of each trial, and against each parameter

The sampler is TPE, seeded by the recipe's seed (plus the trials already run, so a resumed study
draws new points). Every epoch reports the validation figure to Optuna; the median pruner stops a
trial that falls behind the others (its trial.json says "pruned"). A trial that fails (out of
memory, a setting the base cannot take) is recorded as failed and the study goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from tlkit import jobs
from tlkit._util.io import write_json_atomic, write_text_atomic
from tlkit.engine.resume import RunInterrupted
from tlkit.errors import TlkitError, unknown_name
from tlkit.experiments.runs import STUDY
from tlkit.experiments.space import PARAMETERS, Parameter, read_space, suggest, trial_recipe
from tlkit.recipe.schema import Recipe
from tlkit.rundir.files import RunDir

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import tomli_w

log = logging.getLogger(__name__)

METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}


class _Reporter(keras.callbacks.Callback):
    """Each epoch's validation figure to the Optuna trial (step: the epoch over all stages); stops
    the run with TrialPruned when the pruner says so."""

    def __init__(self, trial, metric: str, offset: int):
        super().__init__()
        self.trial, self.metric, self.offset = trial, metric, offset

    def on_epoch_end(self, epoch, logs=None):
        import optuna

        value = (logs or {}).get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), self.offset + epoch + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {self.offset + epoch + 1}: {self.metric} {value:.4f}")


@contextlib.contextmanager
def _runs_quiet():
    """A trial's run says only its warnings, unless the user asked for detail (-v): the study
    says one line per trial."""
    logger = logging.getLogger("tlkit")
    level = logger.level
    if logger.getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _objective(run: Path, metric: str) -> float:
    stages = json.loads(RunDir(run).metrics.read_text(encoding="utf-8"))["stages"]
    return float(stages[-1][metric])


@dataclass
class TuneResult:
    study: Path
    best_trial: int | None
    best_value: float | None
    best_params: dict
    recipe: Path | None  # STUDY/recipe.toml
    importance: dict[str, float]
    trials: list[dict]  # number, state, value, params, run


def _study_files(study: Path) -> dict[str, Path]:
    return {"settings": study / STUDY, "db": study / "study.db", "recipe": study / "recipe.toml",
            "importance": study / "importance.json", "png": study / "tune.png"}


def tune(recipe: Recipe | None = None, study: str | Path | None = None, *, trials: int = 20,
         space: str | Path | None = None, metric: str = "val_accuracy", resume: bool = False,
         track: str | None = None, verbose: str | int = 0) -> TuneResult:
    """Run `trials` trials of the resolved `recipe` over `space` (a TOML file; None: the default
    space) into the study folder `study` (default runs/tune-<time>); with `resume`, `study` is an
    existing study, continued with its own recipe, space and objective. See the module."""
    import optuna

    if trials < 1:
        raise TlkitError(f"--trials must be at least 1, not {trials}")
    if metric not in METRICS:
        raise unknown_name("metric", metric, METRICS)
    if resume:
        study = Path(study)
        files = _study_files(study)
        if not files["settings"].is_file() or not files["db"].is_file():
            raise TlkitError(f"{study} is not a study (no tune.toml and study.db): pass the folder `tlkit tune` made")
        saved = tomllib.loads(files["settings"].read_text(encoding="utf-8"))
        recipe = Recipe.from_dict(saved["recipe"], str(files["settings"]))
        metric = saved["metric"]
        space_tables = saved["space"]
        chosen = {name: dataclasses.replace(PARAMETERS[name], **{k: tuple(v) if k == "choices" else v
                                                                  for k, v in table.items()})
                  for name, table in space_tables.items()}
    else:
        if recipe is None:
            raise TlkitError("no recipe to tune: pass --recipe or the finetune options (--base, --data)")
        chosen = read_space(space, recipe)
        study = Path(study) if study else Path("runs") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
        files = _study_files(study)
        if study.exists() and any(study.iterdir()):
            raise TlkitError(f"--out {study} is not empty: choose a new folder for the study, or "
                             f"`tlkit tune --resume {study}` to add trials to it")
        study.mkdir(parents=True, exist_ok=True)
        tables = {name: {k: list(v) if k == "choices" else v for k, v in
                         dict(low=p.low, high=p.high, log=p.log, choices=p.choices).items() if v is not None}
                  for name, p in chosen.items()}
        write_text_atomic(files["settings"], tomli_w.dumps({"metric": metric, "space": tables,
                                                             "recipe": recipe.to_dict()}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{files['db'].resolve()}"
    direction = METRICS[metric]
    # the same study name whatever the folder is called later: the storage is the study's own
    loaded = optuna.create_study(study_name="tlkit", storage=storage, direction=direction, load_if_exists=True)
    loaded.sampler = optuna.samplers.TPESampler(seed=recipe.seed + len(loaded.trials))
    # a trial's first epochs say little of where it ends (a low learning rate starts slow): none is
    # stopped in the first third of its epochs
    epochs = sum(s.params.get("epochs", 1) for s in recipe.stages)
    loaded.pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 3))
    log.info("study %s: %d trials of recipe %s over %s (%s %s)%s", study, trials, recipe.name,
             ", ".join(chosen), direction, metric, f", after {len(loaded.trials)} earlier" if loaded.trials else "")
    for _ in range(trials):
        _run_trial(loaded, recipe, chosen, study, metric, track, verbose)
    return _conclude(loaded, study, files, chosen, metric, recipe.seed)


def _run_trial(study, recipe: Recipe, space: dict[str, Parameter], folder: Path, metric: str, track, verbose) -> None:
    import optuna

    trial = study.ask()
    values = {name: suggest(trial, name, p) for name, p in space.items()}
    out = folder / f"trial-{trial.number:03d}"
    info = {"study": str(folder), "number": trial.number, "params": values, "metric": metric}
    start = time.perf_counter()
    try:
        resolved = trial_recipe(recipe, space, values)
        offsets = {}

        def reporter(ctx, index, kind):
            offsets[index] = sum(len(r.history.get("loss", [])) for r in ctx.results)
            return _Reporter(trial, metric, offsets[index])

        with _runs_quiet():
            jobs.run(resolved, out, verbose=verbose, track=track, hooks=[reporter])
        value = _objective(out, metric)
    except optuna.TrialPruned as pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        # not failed; what it saved stays (its curves in `tlkit runs`; `--resume` finishes it)
        RunDir(out).failed.unlink(missing_ok=True)
        write_json_atomic(RunDir(out).trial, {**info, "state": "pruned", "why": str(pruned)})
        log.info("trial %d pruned (%s) in %.0fs", trial.number, pruned, time.perf_counter() - start)
        return
    except RunInterrupted:  # Ctrl-C, SIGTERM: the study stops; the trial is recorded as failed
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    except Exception as err:  # noqa: BLE001  (a failed trial is recorded; the study goes on)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if out.exists():
            write_json_atomic(RunDir(out).trial, {**info, "state": "failed", "error": f"{type(err).__name__}: {line}"})
        log.warning("trial %d failed (%s: %s); the study goes on", trial.number, type(err).__name__, line)
        return
    study.tell(trial, value)
    write_json_atomic(RunDir(out).trial, {**info, "state": "complete", "value": value})
    log.info("trial %d: %s %.4f in %.0fs (%s)", trial.number, metric, value, time.perf_counter() - start,
             ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))


def _conclude(study, folder: Path, files: dict[str, Path], space: dict[str, Parameter], metric: str,
              seed: int) -> TuneResult:
    """The best trial's recipe.toml, the importance table and tune.png."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    rows = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
             "run": str(folder / f"trial-{t.number:03d}")} for t in study.trials]
    importance = {}
    if len(done) >= 2:
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            importance = {k: float(v) for k, v in optuna.importance.get_param_importances(
                study, evaluator=evaluator).items()}
        except (RuntimeError, ValueError) as err:  # every trial the same point: nothing to attribute
            log.info("no parameter importance: %s", err)
    write_json_atomic(files["importance"], importance)
    best = study.best_trial if done else None
    recipe_path = None
    if best is not None:
        recipe_path = files["recipe"]
        shutil.copyfile(RunDir(folder / f"trial-{best.number:03d}").recipe, recipe_path)
    plot(rows, space, metric, files["png"])
    return TuneResult(folder, best.number if best else None, best.value if best else None,
                      best.params if best else {}, recipe_path, importance, rows)


def summary_lines(result: TuneResult, metric: str = "") -> list[str]:
    """The end of a study in lines: the trials by state, the best, the importance table."""
    states = {}
    for row in result.trials:
        states[row["state"]] = states.get(row["state"], 0) + 1
    out = [f"study {result.study}: {len(result.trials)} trials ("
           + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"]
    if result.best_trial is None:
        out.append("no trial completed: nothing to recommend")
        return out
    out.append(f"best: trial {result.best_trial}, {result.best_value:.4f}")
    out += [f"  {k} = {v:.4g}" if isinstance(v, float) else f"  {k} = {v}" for k, v in result.best_params.items()]
    if result.importance:
        out.append("importance (fANOVA):")
        width = max(len(k) for k in result.importance)
        out += [f"  {k.ljust(width)}  {v:.3f}  {'#' * round(v * 30)}" for k, v in result.importance.items()]
    out.append(f"next: tlkit finetune --recipe {result.recipe} --out runs/best   (tune.png, importance.json in "
               f"{result.study})")
    return out


def plot(rows: list[dict], space: dict[str, Parameter], metric: str, out: Path) -> None:
    """tune.png: the objective of each trial (the best so far as a line), then against each parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(space)
    columns = min(4, len(names) + 1)
    lines = math.ceil((len(names) + 1) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3.3 * lines), squeeze=False)
    axes = axes.ravel()
    # a pruned trial's value is its last report, not an end: only completed trials are points
    done = [r for r in rows if r["state"] == "complete"]
    maximize = METRICS[metric] == "maximize"
    ax = axes[0]
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], color="tab:blue", label="complete", zorder=3)
    best, so_far = None, []
    for r in done:
        best = r["value"] if best is None else (max if maximize else min)(best, r["value"])
        so_far.append((r["number"], best))
    if so_far:
        ax.step(*zip(*so_far), where="post", color="tab:orange", label="best so far")
    for state, marker in (("pruned", "x"), ("fail", "v")):
        numbers = [r["number"] for r in rows if r["state"] == state]
        if numbers and done:
            bottom = min(r["value"] for r in done)
            ax.scatter(numbers, [bottom] * len(numbers), marker=marker, color="tab:red" if state == "fail" else "gray",
                       label="failed" if state == "fail" else "pruned", zorder=3)
    ax.set_title(f"{metric} per trial")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    for ax, name in zip(axes[1:], names):
        p = space[name]
        xs = [r["params"].get(name) for r in done]
        if p.choices is not None:
            order = [str(c) for c in p.choices]
            ax.scatter([order.index(str(x)) for x in xs], [r["value"] for r in done], color="tab:blue")
            ax.set_xticks(range(len(order)), order)
        else:
            ax.scatter(xs, [r["value"] for r in done], color="tab:blue")
            if p.log:
                ax.set_xscale("log")
        ax.set_title(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(names) + 1:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
