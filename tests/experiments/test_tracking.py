"""--track mlflow: parameters and every epoch's metrics in a local SQLite store, one MLflow run
through a resume, a store that cannot be reached costs one warning; TensorBoard's HParams."""
from __future__ import annotations

import json
import logging

import pytest

from tlkit import jobs
from tlkit.engine.resume import RunInterrupted

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def no_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "TLKIT_TRACK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.integration
def test_a_resumed_tracked_run_is_one_mlflow_run_with_its_recipe_and_every_epoch(tiny_images, tmp_path, tiny_run,
                                                                                   no_mlflow_env, monkeypatch):
    tiny_recipe, stop_at = tiny_run
    out = tmp_path / "runs" / "tracked"
    recipe = jobs.resolve(tiny_recipe(tiny_images))
    with pytest.MonkeyPatch.context() as mp:
        stop_at(mp, 2, 1, KeyboardInterrupt())
        with pytest.raises(RunInterrupted):
            jobs.run(recipe, out, verbose=0, track="mlflow")
    jobs.resume(out, verbose=0)  # tracked because the run was: RUN/tracking.json

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"  # the default store: beside the run
    assert json.loads((out / "tracking.json").read_text())["uri"] == uri
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["tlkit"], output_format="list")
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["base"] == "lenet5" and run.data.params["stage2.kind"] == "finetune"
    assert float(run.data.params["stage1.learning_rate"]) == 0.01 and run.data.params["image_size"] == "32"
    history = json.loads((out / "history.json").read_text())
    expected = [v for stage in history for v in stage["val_loss"]]
    logged = sorted(mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)
    assert [m.step for m in logged] == [1, 2, 3]
    assert [m.value for m in logged] == pytest.approx(expected)
    metrics = json.loads((out / "metrics.json").read_text())["stages"]
    assert run.data.metrics["stage2.val_accuracy"] == pytest.approx(metrics[1]["val_accuracy"])
    assert "eval.accuracy" in run.data.metrics and run.data.metrics["data.classes"] == 3
    artefacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # beside the store, not in the current folder
    assert {"model.keras", "REPORT.md", "curves.png", "confusion.png", "recipe.toml"} <= artefacts
    # TensorBoard's HParams: the same parameters
    assert list((out / "logs" / "hparams").iterdir())


@pytest.mark.integration
def test_a_tracking_store_that_cannot_be_reached_costs_one_warning(tiny_images, tmp_path, tiny_run, monkeypatch,
                                                                     caplog, no_mlflow_env):
    tiny_recipe, _ = tiny_run
    monkeypatch.setenv("TLKIT_TRACK", "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    recipe = jobs.resolve(tiny_recipe(tiny_images)).with_stages("finetune", epochs=1)
    with caplog.at_level(logging.WARNING, logger="tlkit"):
        jobs.run(recipe, tmp_path / "run", verbose=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and "http://127.0.0.1:9" in warnings[0] and "untracked" in warnings[0]
    assert (tmp_path / "run" / "model.keras").is_file() and not (tmp_path / "run" / ".unfinished").exists()


def test_an_unknown_tracker_is_one_line(cli, tiny_images, tmp_path):
    code, _, err = cli("finetune", "--base", "lenet5", "--data", tiny_images, "--track", "mlflw", "--out", tmp_path)
    assert code == 2 and "mlflw" in err
