"""`tlkit runs` over finished, unfinished and failed runs; `runs diff`; runs.png."""
from __future__ import annotations

import json

import pytest

from tlkit import jobs
from tlkit.engine.resume import RunInterrupted

pytestmark = pytest.mark.integration  # four whole runs, one stopped and one failed, before the first test: over a minute on 2 cores


@pytest.fixture(scope="module")
def runs_folder(tiny_images, tmp_path_factory, tiny_run):
    tiny_recipe, stop_at = tiny_run
    root = tmp_path_factory.mktemp("runs")
    jobs.run(jobs.resolve(tiny_recipe(tiny_images)), root / "done", verbose=0)
    jobs.run(jobs.resolve(tiny_recipe(tiny_images, lr=0.003)), root / "done-slow", verbose=0)
    with pytest.MonkeyPatch.context() as mp:
        stop_at(mp, 2, 1, KeyboardInterrupt())
        with pytest.raises(RunInterrupted):
            jobs.run(jobs.resolve(tiny_recipe(tiny_images)), root / "stopped", verbose=0)
    with pytest.MonkeyPatch.context() as mp:
        stop_at(mp, 2, 1, MemoryError("out of memory"))
        with pytest.raises(MemoryError):
            jobs.run(jobs.resolve(tiny_recipe(tiny_images)), root / "broken", verbose=0)
    return root


def test_runs_lists_each_run_with_its_status_and_figures(runs_folder, cli):
    code, out, err = cli("runs", runs_folder, "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert {n: r["status"] for n, r in rows.items()} == {
        "done": "finished", "done-slow": "finished", "stopped": "unfinished", "broken": "failed"}
    metrics = json.loads((runs_folder / "done" / "metrics.json").read_text())["stages"]
    history = json.loads((runs_folder / "done" / "history.json").read_text())
    done = rows["done"]
    assert done["epochs"] == 3 and done["base"] == "lenet5" and done["image_size"] == 32 and done["job"] == "finetune"
    assert done["recipe"] == "head 1@0.01, finetune 2@0.01 u1"
    assert done["val_loss"] == min(v for h in history for v in h["val_loss"])
    assert done["val_accuracy"] == max(v for h in history for v in h["val_accuracy"])
    assert [s["val_accuracy"] for s in done["stages"]] == [s["val_accuracy"] for s in metrics]
    assert done["seconds"] == pytest.approx(sum(h["seconds"] for h in history))
    # the unfinished and the failed run: the head stage and one finetune epoch, as their last snapshot saved them
    for name in ("stopped", "broken"):
        assert rows[name]["epochs"] == 2 and [s["kind"] for s in rows[name]["stages"]] == ["head"]
    assert rows["broken"]["error"] == "MemoryError: out of memory" and rows["stopped"]["error"] is None
    code, out, _ = cli("runs", runs_folder, "--sort", "val_loss")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["run", "status"] and len(lines) == 5
    by_loss = sorted(rows.values(), key=lambda r: r["val_loss"])
    assert [line.split()[0] for line in lines[1:]] == [r["name"] for r in by_loss]
    code, _, err = cli("runs", runs_folder, "--sort", "val_los")
    assert code == 2 and "unknown sort key 'val_los': did you mean val_loss" in err


def test_runs_diff_shows_what_differs_and_the_figures(runs_folder, cli):
    code, out, err = cli("runs", "diff", runs_folder / "done", runs_folder / "done-slow")
    assert code == 0, err
    recipe = out.split("recipe:")[1].split("data:")[0]
    assert [line.split()[0] for line in recipe.strip().splitlines()] == ["stage1.learning_rate",
                                                                         "stage2.learning_rate"]
    assert "0.01" in recipe and "0.003" in recipe
    assert out.split("data:")[1].split("results:")[0].strip() == "the same"
    assert "stage 2 (finetune) val_acc" in out
    code, _, err = cli("runs", "diff", runs_folder / "done", runs_folder)
    assert code == 2 and "is not a run directory" in err


def test_runs_plot_draws_every_run(runs_folder, cli, tmp_path):
    code, out, err = cli("runs", "plot", runs_folder, "--out", tmp_path / "runs.png")
    assert code == 0, err
    assert (tmp_path / "runs.png").stat().st_size > 10_000
