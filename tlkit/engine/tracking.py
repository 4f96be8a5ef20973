"""A run logged to MLflow (`--track mlflow`, TLKIT_TRACK=mlflow), and TensorBoard's HParams.

MLflow gets, through its client (not Keras autologging, which lags Keras releases): the resolved
recipe, flattened, as parameters; every epoch's metrics (step: the epoch counted over all
stages); at the end the data report's and the evaluation's figures and the run's files (curves,
confusion, REPORT.md, the model). The store is MLFLOW_TRACKING_URI, else a SQLite file beside
the run directory (`sqlite:///<runs folder>/mlflow.db`, which `mlflow ui --backend-store-uri`
opens; a SQLite store's artefacts go to mlartifacts/ beside it). RUN/tracking.json keeps the store and MLflow run id, so a resumed run goes on in the same
MLflow run. Tracking never costs the run: the first error of the store (a server down, a full
disk) is one warning, and the run goes on untracked.

HParams: logs/hparams holds the same parameters and the final figures, for TensorBoard's HParams
dashboard (TensorBoard comes with TensorFlow: no extra).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import keras
import tensorflow as tf

from tlkit._util.io import write_json_atomic
from tlkit.recipe.schema import Recipe
from tlkit.rundir.files import RunDir

log = logging.getLogger(__name__)

# the files of a finished run logged as artefacts, where they exist
ARTEFACTS = (RunDir.RECIPE, RunDir.CURVES, RunDir.REPORT, "report.json", "confusion.png", "top_losses.png",
             RunDir.DATA_REPORT, RunDir.MODEL)


def default_uri(out: Path) -> str:
    """MLFLOW_TRACKING_URI, else a SQLite store in the folder that holds the run directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out).resolve().parent / 'mlflow.db'}"


def _scalar(value):
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class MlflowTracker:
    """One run directory's MLflow run (see the module); every call to the store goes through `_call`."""

    def __init__(self, out: Path, uri: str, run_id: str | None = None):
        from mlflow import MlflowClient

        self.out, self.uri, self.run_id = Path(out), uri, run_id
        if uri.startswith("http"):
            # a server that is down must not hold the run for MLflow's default minutes of retries;
            # a user's own settings win
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # MLflow's lines as it makes a SQLite store's tables are noise on a run's console
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.client = MlflowClient(uri)
        self.working = True

    def _call(self, what: str, call, *args, **kwargs):
        """`call(*args, **kwargs)`, or None, once the store has failed (warned about once)."""
        if not self.working:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (any failure of the store: the run goes on)
            self.working = False
            line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("MLflow tracking at %s failed (%s: %s); the run goes on untracked", self.uri, what, line[:300])
            return None

    @classmethod
    def start(cls, out: Path, recipe: Recipe, job: str, resume: bool) -> MlflowTracker:
        """A new MLflow run for `out`, or with `resume` the one RUN/tracking.json names."""
        saved = RunDir(out).tracking
        if resume and saved.is_file():
            data = json.loads(saved.read_text(encoding="utf-8"))
            tracker = cls(out, data["uri"], data["run_id"])
            tracker._call("resuming the run", tracker.client.update_run, tracker.run_id, status="RUNNING")
            log.info("MLflow: going on with run %s at %s", tracker.run_id, tracker.uri)
            return tracker
        tracker = cls(out, default_uri(out))
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tlkit")
        experiment = tracker._call("opening the experiment", tracker._experiment, name)
        run = experiment is not None and tracker._call(
            "starting a run", tracker.client.create_run, experiment, run_name=Path(out).name,
            tags={"tlkit.run_dir": str(Path(out).resolve()), "tlkit.job": job})
        if not run:
            return tracker
        tracker.run_id = run.info.run_id
        write_json_atomic(saved, {"uri": tracker.uri, "run_id": tracker.run_id})
        from mlflow.entities import Param

        # MLflow caps a parameter's value at 6000 characters
        params = [Param(k, str(v)[:6000]) for k, v in recipe.flat().items()]
        tracker._call("logging the recipe", tracker.client.log_batch, tracker.run_id, params=params)
        log.info("MLflow: run %s at %s", tracker.run_id, tracker.uri)
        return tracker

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # MLflow would put a SQLite store's artefacts in ./mlruns, wherever the command ran: beside the store
        where = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri() \
            if self.uri.startswith("sqlite:///") else None
        return self.client.create_experiment(name, artifact_location=where)

    def log_metrics(self, figures: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        import time

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in figures.items() if isinstance(v, (int, float))]
        self._call("logging metrics", self.client.log_batch, self.run_id, metrics=metrics)

    def callback(self, ctx, index: int, kind: str) -> keras.callbacks.Callback:
        """The per-epoch logger of stage `index` (a RunContext hook)."""
        return _EpochLogger(self, ctx)

    def finish(self, status: str = "FINISHED") -> None:
        """The run's figures and files, then the MLflow run ended with `status`."""
        if self.run_id is None:
            return
        if status == "FINISHED":
            self.log_metrics(run_figures(self.out))
            for name in ARTEFACTS:
                path = self.out / name
                if path.is_file():
                    self._call(f"logging {name}", self.client.log_artifact, self.run_id, str(path))
        self._call("ending the run", self.client.set_terminated, self.run_id, status)


def end_tracked(out: Path, status: str) -> None:
    """End the MLflow run of `out` (if it is tracked) with `status`: FAILED, or KILLED when interrupted."""
    saved = RunDir(out).tracking
    try:
        data = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    except (OSError, ValueError):  # the run's own error is what the user must see
        return
    if data is not None:
        MlflowTracker(out, data["uri"], data["run_id"]).finish(status)


class _EpochLogger(keras.callbacks.Callback):
    def __init__(self, tracker: MlflowTracker, ctx):
        super().__init__()
        self.tracker = tracker
        # the epochs of the stages before this one, so steps count over the whole run
        self.offset = sum(len(r.history.get("loss", [])) for r in ctx.results)

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.log_metrics(dict(logs or {}), step=self.offset + epoch + 1)


def run_figures(out: Path) -> dict[str, float]:
    """A finished run's figures: each stage's (metrics.json; its seconds from history.json), the data report's, the validation
    evaluation's (report.json)."""
    run = RunDir(out)
    figures = {}
    if run.metrics.is_file():
        metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
        for stage in metrics["stages"]:
            for key in ("val_accuracy", "val_loss"):
                if stage.get(key) is not None:
                    figures[f"stage{stage['stage']}.{key}"] = stage[key]
        figures.update(train_images=metrics["train_images"], val_images=metrics["val_images"])
    if run.history.is_file():
        for i, stage in enumerate(json.loads(run.history.read_text(encoding="utf-8")), start=1):
            if "seconds" in stage:
                figures[f"stage{i}.seconds"] = stage["seconds"]
    if run.data_report.is_file():
        report = json.loads(run.data_report.read_text(encoding="utf-8"))
        figures.update({"data.classes": len(report.get("classes", [])),
                        "data.duplicates": len(report.get("duplicates", [])),
                        "data.skipped": len(report.get("skipped", []))})
    evaluation = run.path / "report.json"
    if evaluation.is_file():
        report = json.loads(evaluation.read_text(encoding="utf-8"))
        figures.update({f"eval.{k}": v for k, v in report.items() if isinstance(v, (int, float))
                        and not isinstance(v, bool)})
        for average in ("macro avg", "weighted avg"):
            for k, v in (report.get(average) or {}).items():
                if isinstance(v, (int, float)):
                    figures[f"eval.{average.replace(' ', '_')}.{k}"] = v
    return figures


def write_hparams(ctx) -> None:
    """logs/hparams: the recipe's parameters and the run's final figures, for TensorBoard's HParams."""
    from tensorboard.plugins.hparams import api as hp

    last = ctx.results[-1] if ctx.results else None
    params = {k: _scalar(v) for k, v in ctx.recipe.flat().items()}
    with tf.summary.create_file_writer(str(RunDir(ctx.out).logs / "hparams")).as_default():
        hp.hparams(params, trial_id=Path(ctx.out).name)
        if last is not None:
            tf.summary.scalar("val_loss", last.val_loss, step=0)
            if last.val_accuracy is not None:
                tf.summary.scalar("val_accuracy", last.val_accuracy, step=0)
