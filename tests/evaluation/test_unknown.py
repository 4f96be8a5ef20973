"""Know when it does not know: on a model of the sample photos, digits and textures given as
unknown images are told apart from the photos, and printed as `unknown`; the photos keep their
class. Also: a run saved before calibration loads and predicts as it did."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tlkit.data import folders, splits
from tlkit.data.pipeline import load_images
from tlkit.errors import TlkitError
from tlkit.evaluation.predict import evaluate, predict
from tlkit.jobs import extract
from tlkit.models.calibration import temperature_of
from tlkit.rundir.files import RunDir

pytestmark = pytest.mark.integration  # a calibrated run of the sample photos and unknown images: each test is a whole run or more

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
TEXTURES = ("brick", "grass", "gravel")  # scikit-image's, 512x512 greyscale


@pytest.fixture(scope="module")
def unknown_images(tmp_path_factory) -> Path:
    """DIR/<texture>/*.jpg: 25 96x96 tiles of each texture, and DIR/digits/: every 12th sample
    digit (150), as RGB, none of them a photo of the run's classes."""
    import skimage.data

    root = tmp_path_factory.mktemp("unknown")
    for name in TEXTURES:
        texture = getattr(skimage.data, name)()
        (root / name).mkdir()
        for i in range(25):
            y, x = 96 * (i // 5), 96 * (i % 5)
            Image.fromarray(texture[y:y + 96, x:x + 96]).convert("RGB").save(root / name / f"{i}.jpg")
    (root / "digits").mkdir()
    for n, path in enumerate(sorted((SAMPLES / "digits").rglob("*.png"))[::12]):
        Image.open(path).convert("RGB").save(root / "digits" / f"{n}.png")
    return root


@pytest.fixture(scope="module")
def photos_run(tmp_path_factory):
    """EfficientNet-Lite0's features of the sample photos at 160 px, a head trained on them."""
    out = tmp_path_factory.mktemp("photos") / "run"
    extract("efficientnet_lite0", str(SAMPLES / "photos"), out=out, image_size=160, verbose=0,
            cache=str(tmp_path_factory.mktemp("cache")), stages={"extract": {"epochs": 40}})
    return out


@pytest.fixture(scope="module")
def photos_val(photos_run, tmp_path_factory) -> Path:
    """The run's validation split, copied into a labelled folder."""
    images = folders.scan(SAMPLES / "photos")
    _, val = splits.split(images, 0.2, 0)
    root = tmp_path_factory.mktemp("photos_val")
    for path, label in zip(val.files, val.labels):
        (root / val.classes[label]).mkdir(exist_ok=True)
        shutil.copy(path, root / val.classes[label] / path.name)
    return root


def test_the_temperature_lowers_the_validation_nll(photos_run):
    summary = json.loads(RunDir(photos_run).calibration.read_text())
    assert summary["nll_after"] < summary["nll_before"]
    assert summary["keep"] == 0.95 and RunDir(photos_run).calibration_plot.is_file()
    assert temperature_of(keras.saving.load_model(RunDir(photos_run).model)) == summary["temperature"]


def test_unknown_images_are_told_apart_and_printed_unknown(photos_run, photos_val, unknown_images, cli, tmp_path):
    report = evaluate(photos_run, photos_val, tmp_path / "eval", unknown_data=unknown_images, top_losses=1)
    unknown = report["unknown"]
    assert unknown["images"] == 225 and unknown["auroc"] >= 0.9
    assert unknown["given_a_class"] <= 0.1 * 225
    assert unknown["known_keep_class"] >= 0.9  # kept (not unknown) and right
    code, out, _ = cli("predict", "--model", photos_run, "--out", tmp_path / "p.csv", unknown_images)
    assert code == 0
    lines = [line for line in out.splitlines() if str(unknown_images) in line]
    assert len(lines) == 225 and sum(": unknown (score " in line for line in lines) >= 0.9 * 225
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(row["unknown"] == "true" for row in rows) == sum(": unknown (" in line for line in lines)


def test_a_run_saved_before_calibration_predicts_as_it_did(photos_run, photos_val, unknown_images, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(photos_run, old)
    RunDir(old).calibration.unlink()
    RunDir(old).reference.unlink()
    shutil.copy(RunDir(old).best, RunDir(old).model)  # best.keras is saved before calibration: a softmax head
    model = keras.saving.load_model(RunDir(old).model)
    assert temperature_of(model) is None
    results = predict(old, photos_val, out=tmp_path / "p.json")
    assert all(r.unknown is None for r in results)
    assert "unknown" not in json.loads((tmp_path / "p.json").read_text())[0]
    images = load_images([r.path for r in results], (160, 160))
    np.testing.assert_allclose([r.probabilities for r in results], model.predict(images, verbose=0), atol=1e-5)
    with pytest.raises(TlkitError, match="no unknown score"):
        evaluate(old, photos_val, tmp_path / "eval", unknown_data=unknown_images)


def test_no_calibrate_leaves_the_model_as_trained_and_keep_sets_the_threshold(tiny_images, cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("extract", "--base", "efficientnet_lite0", "--data", tiny_images, "--out", out,
                       "--image-size", 32, "--no-calibrate", "--keep", 0.5, "--cache", tmp_path / "cache",
                       "--stage-option", "extract:epochs=2", "--val-split", 0.5)
    assert code == 0, err
    summary = json.loads(RunDir(out).calibration.read_text())
    assert not summary["calibrated"] and summary["keep"] == 0.5
    assert temperature_of(keras.saving.load_model(RunDir(out).model)) is None
    assert "Not calibrated (`--no-calibrate`" in RunDir(out).report.read_text()
    val = splits.split(folders.scan(tiny_images), 0.5, 0)[1]
    flags = [r.unknown for r in predict(out, val.files)]
    assert 0.5 <= flags.count(False) / len(flags) < 0.7
    code, _, err = cli("extract", "--base", "efficientnet_lite0", "--data", tiny_images, "--out", tmp_path / "bad",
                       "--keep", 1.5)
    assert code != 0 and "keep must be between 0 and 1" in err
