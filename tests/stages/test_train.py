"""`tlkit train`: a classic CNN from scratch through the same engine, run directory and export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlkit.evaluation.predict import evaluate, predict
from tlkit.jobs import train

pytestmark = pytest.mark.integration  # LeNet-5 trained 15 epochs on the 1,797 digits: over a minute on 2 cores

DIGITS = Path(__file__).resolve().parents[2] / "data_samples" / "digits"


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "lenet"
    train("lenet5", str(DIGITS), out=out, verbose=0, stages={"train": {"epochs": 15}})
    return out


def test_lenet5_on_the_digits_sample_reaches_95_percent(lenet_run):
    metrics = json.loads((lenet_run / "metrics.json").read_text())
    assert metrics["stages"][-1]["val_accuracy"] >= 0.95
    assert metrics["train_images"] + metrics["val_images"] == 1797


def test_a_trained_run_predicts_and_evaluates_like_a_finetuned_one(lenet_run, tmp_path):
    seven = sorted((DIGITS / "7").glob("*.png"))[:5]
    assert sum(p.top[0][0] == "7" for p in predict(lenet_run, seven)) >= 4
    metrics = evaluate(lenet_run, DIGITS, tmp_path / "eval")
    assert metrics["accuracy"] >= 0.95 and metrics["images"] == 1797
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["accuracy"] == metrics["accuracy"]


def test_a_trained_run_becomes_a_base_with_its_checkpoint(lenet_run, tiny_images):
    import numpy as np

    from tlkit.bases import load_base
    from tlkit.rundir.load import load_run

    base = load_base("lenet5", str(lenet_run), (32, 32))
    trained = load_run(lenet_run).model
    np.testing.assert_array_equal(base.model.get_layer("c3").kernel.numpy(), trained.get_layer("c3").kernel.numpy())
    assert [b.name for b in base.blocks] == ["c1", "c3"]
