"""The runs under a folder as a table (`tlkit runs`), two runs side by side (`tlkit runs diff`),
and their validation curves on one plot (runs.png). Reads the run directories' files only: no
TensorFlow, so the table is quick over hundreds of runs.

A run's status: finished (its model written, not marked unfinished), running (its lock held by a
live process), failed (RUN/.failed: it stopped on an error), pruned (a `tlkit tune` trial its
pruner stopped), unfinished (stopped otherwise: killed, interrupted; `--resume` goes on with it).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlkit.errors import TlkitError, unknown_name
from tlkit.recipe.schema import Recipe
from tlkit.rundir.files import RunDir
from tlkit.rundir.guard import check_out

STATUSES = ("finished", "running", "unfinished", "pruned", "failed")
STUDY = "tune.toml"  # a `tlkit tune` study folder: its trials are runs, it is not (its recipe.toml is the best's)


@dataclass
class RunRow:
    """One run of the table; figures are None where the run has none yet."""

    name: str
    path: str
    status: str
    job: str
    base: str | None
    recipe: str  # the recipe in a few words: its stages, epochs and learning rates
    image_size: int | None
    epochs: int  # epochs trained, over all stages
    val_accuracy: float | None  # the best epoch's
    val_loss: float | None  # the lowest
    stages: list[dict] = field(default_factory=list)  # per stage: kind, epochs, val_accuracy, val_loss
    seconds: float | None = None
    error: str | None = None  # a failed run's error line
    history: list[dict] = field(default_factory=list, repr=False)  # per stage, Keras' history

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("history")
        return data


SORT_KEYS = ("name", "status", "val_accuracy", "val_loss", "epochs", "seconds", "base", "image_size")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _job(recipe: Recipe) -> str:
    kinds = [s.kind for s in recipe.stages]
    if kinds == ["autoencoder"]:
        return "pretrain"
    if kinds and kinds[0] == "train":
        return "train"
    return "extract" if set(kinds) == {"extract"} else "finetune"


def recipe_words(recipe: Recipe) -> str:
    """"head 5@0.001, finetune 5@1e-05 u1": each stage's kind, epochs @ learning rate (and unfreeze)."""
    def words(stage) -> str:
        unfreeze = f" u{stage.params['unfreeze']}" if "unfreeze" in stage.params else ""
        return f"{stage.kind} {stage.params.get('epochs', '?')}@{stage.params.get('learning_rate', '?'):.3g}{unfreeze}"
    return ", ".join(words(s) for s in recipe.stages)


def _status(run: RunDir) -> str:
    trial = _read_json(run.trial)
    if trial and trial.get("state") == "pruned":
        return "pruned"
    if run.lock.exists():
        try:
            check_out(run.path, resume=True)
        except TlkitError:
            return "running"
    if run.failed.is_file():
        return "failed"
    if run.unfinished.is_file() or not (run.model.is_file() or run.base.is_file()):
        return "unfinished"
    return "finished"


def read_run(path: Path, root: Path | None = None) -> RunRow:
    """The table's row of the run directory `path` (named relative to `root`)."""
    run = RunDir(path)
    name = str(path.relative_to(root)) if root is not None and path != root else path.name
    try:
        recipe = Recipe.load(run.recipe)
    except TlkitError:
        recipe = None
    metrics = _read_json(run.metrics)
    history = _read_json(run.history)
    stages, seconds = [], None
    if metrics is not None and history is not None:
        stages = [{k: s.get(k) for k in ("kind", "epochs", "val_accuracy", "val_loss")} for s in metrics["stages"]]
        seconds = sum(h["seconds"] for h in history) if all("seconds" in h for h in history) else None
    else:  # not finished: what its last saved epoch holds
        state = _read_json(run.resume_state) or {}
        done = state.get("results", [])
        history = [{"kind": r["kind"], **r["history"]} for r in done]
        stages = [{"kind": r["kind"], "epochs": len(r["history"].get("loss", [])), "val_accuracy": r["val_accuracy"],
                   "val_loss": r["val_loss"]} for r in done]
        if state.get("history"):
            kind = recipe.stages[len(done)].kind if recipe and len(done) < len(recipe.stages) else "?"
            history.append({"kind": kind, **state["history"]})
        seconds = sum(r.get("seconds", 0) for r in done) if done else None
    losses = [v for h in history for v in h.get("val_loss", [])]
    accuracies = [v for h in history for v in h.get("val_accuracy", [])]
    error = run.failed.read_text(encoding="utf-8").strip() if run.failed.is_file() else None
    return RunRow(
        name=name, path=str(path), status=_status(run), job=_job(recipe) if recipe else "?",
        base=recipe.base if recipe else None, recipe=recipe_words(recipe) if recipe else "?",
        image_size=recipe.image_size if recipe else None, epochs=sum(len(h.get("loss", [])) for h in history),
        val_accuracy=max(accuracies) if accuracies else None, val_loss=min(losses) if losses else None,
        stages=stages, seconds=seconds, error=error, history=history)


def find_runs(folder: str | Path) -> list[Path]:
    """Every run directory at or under `folder` (a run's own folders are not searched)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TlkitError(f"{folder} is not a folder: pass the folder that holds your runs (default runs/)")
    if RunDir(folder).is_run() and not (folder / STUDY).is_file():
        return [folder]
    found = []
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.is_symlink():
            found += find_runs(child)
    return found


def table(folder: str | Path = "runs", sort: str = "name") -> list[RunRow]:
    """The rows of every run under `folder`, sorted by `sort` (a SORT_KEYS name; figures best
    first, runs without the figure last)."""
    if sort not in SORT_KEYS:
        raise unknown_name("sort key", sort, SORT_KEYS)
    folder = Path(folder)
    rows = [read_run(path, folder) for path in find_runs(folder)]
    descending = sort in ("val_accuracy", "epochs")
    present = [r for r in rows if getattr(r, sort) is not None]
    absent = [r for r in rows if getattr(r, sort) is None]
    return sorted(present, key=lambda r: getattr(r, sort), reverse=descending) + absent


def _figure(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}s" if value < 120 else f"{value / 60:.1f}m"


def table_lines(rows: list[RunRow]) -> list[str]:
    """The table as aligned text lines, a header first."""
    header = ("run", "status", "job", "base", "size", "recipe", "epochs", "val_acc", "val_loss", "stages (val_acc)",
              "fit time")
    cells = [header] + [(
        r.name, r.status, r.job, r.base or "-", _figure(r.image_size), r.recipe, str(r.epochs),
        _figure(r.val_accuracy), _figure(r.val_loss),
        " ".join(f"{s['kind']}:{_figure(s['val_accuracy'], 3)}" for s in r.stages) or "-", _seconds(r.seconds))
        for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]


def _data_figures(run: RunDir) -> dict:
    report = _read_json(run.data_report) or {}
    figures = {"data": report.get("data"), "val_data": report.get("val_data"),
               "classes": len(report.get("classes", [])),
               "train_images": sum(report.get("train", [])), "val_images": sum(report.get("val", [])),
               "duplicates": len(report.get("duplicates", [])), "skipped": len(report.get("skipped", []))}
    for name, counts in (report.get("per_class") or {}).items():
        figures[f"class {name}"] = f"{counts['train']} train, {counts['val']} val"
    return figures


@dataclass
class RunDiff:
    """Two runs side by side: what differs in their recipes and data (name: (a, b)), and their figures."""

    a: RunRow
    b: RunRow
    recipe: dict[str, tuple]
    data: dict[str, tuple]

    def lines(self) -> list[str]:
        width = max([len(k) for k in [*self.recipe, *self.data, "val_accuracy"]] + [4])
        col = max(len(self.a.name), 12)

        def row(name, x, y) -> str:
            return f"  {name.ljust(width)}  {_figure(x).ljust(col)}  {_figure(y)}"

        out = [f"  {''.ljust(width)}  {self.a.name.ljust(col)}  {self.b.name}", "recipe:"]
        out += [row(k, *v) for k, v in self.recipe.items()] or ["  the same"]
        out.append("data:")
        out += [row(k, *v) for k, v in self.data.items()] or ["  the same"]
        out.append("results:")
        for key in ("status", "epochs", "val_accuracy", "val_loss"):
            out.append(row(key, getattr(self.a, key), getattr(self.b, key)))
        for i in range(max(len(self.a.stages), len(self.b.stages))):
            sa, sb = (r.stages[i] if i < len(r.stages) else {} for r in (self.a, self.b))
            out.append(row(f"stage {i + 1} ({sa.get('kind') or sb.get('kind')}) val_acc", sa.get("val_accuracy"),
                           sb.get("val_accuracy")))
        out.append(row("time", _seconds(self.a.seconds), _seconds(self.b.seconds)))
        return out


def _differing(a: dict, b: dict) -> dict[str, tuple]:
    return {k: (a.get(k), b.get(k)) for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)}


def diff(a: str | Path, b: str | Path) -> RunDiff:
    """The recipe and data differences of runs `a` and `b`, and their figures."""
    for path in (a, b):
        if not RunDir(path).is_run():
            raise TlkitError(f"{path} is not a run directory: pass two run folders (see `tlkit runs`)")
    recipes = []
    for path in (a, b):
        try:
            recipes.append(Recipe.load(RunDir(path).recipe).flat())
        except TlkitError:
            recipes.append({})
    return RunDiff(read_run(Path(a)), read_run(Path(b)), _differing(*recipes),
                   _differing(_data_figures(RunDir(a)), _data_figures(RunDir(b))))


def plot(runs: list[str | Path], out: str | Path) -> Path:
    """runs.png: the validation loss and accuracy of every epoch of `runs` (over all their stages)
    on one plot, a line per run; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [read_run(Path(p)) for p in runs]
    if not rows:
        raise TlkitError("no runs to plot: pass run folders, or a folder that holds runs")
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in rows:
        losses = [v for h in row.history for v in h.get("val_loss", [])]
        accuracies = [v for h in row.history for v in h.get("val_accuracy", [])]
        epochs = range(1, len(losses) + 1)
        line, = loss_ax.plot(epochs, losses, marker=".", label=row.name)
        acc_ax.plot(range(1, len(accuracies) + 1), accuracies, marker=".", color=line.get_color(), label=row.name)
    for ax, title in ((loss_ax, "validation loss"), (acc_ax, "validation accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch (all stages)")
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
