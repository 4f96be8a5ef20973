"""evaluate, predict and visualize gradcam on a trained run, through the command line, and the
report a run writes when it ends."""
from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import classification_report

from tlkit.bases import load_base
from tlkit.engine.classifier import build_classifier
from tlkit.engine.strategy import configure
from tlkit.evaluation.gradcam import gradcam, gradcam_layer
from tlkit.jobs import run_recipe
from tlkit.recipe.schema import Recipe, Stage


@pytest.fixture(scope="module")
def run(tiny_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    recipe = Recipe(stages=[Stage("head", epochs=2, learning_rate=1e-2)], base="mobilenet_v2", weights="none",
                    data=str(tiny_images), image_size=32, batch_size=8)
    configure(recipe)
    run_recipe(recipe, load_base("mobilenet_v2", "none", (32, 32)), out, verbose=0)
    return out


def _csv(path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_a_run_ends_with_its_validation_report(run):
    report = json.loads((run / "report.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["images"] == metrics["val_images"] == 6
    # the report evaluates model.keras on the validation split: the same numbers Keras gave
    assert report["accuracy"] == pytest.approx(metrics["stages"][-1]["val_accuracy"], abs=1e-6)
    assert report["loss"] == pytest.approx(metrics["stages"][-1]["val_loss"], abs=1e-4)
    rows = _csv(run / "predictions.csv")
    assert len(rows) == 6 and list(rows[0])[:4] == ["path", "true", "predicted", "probability"]
    text = (run / "REPORT.md").read_text()
    for needed in ("mobilenet_v2", "random weights", "| blue | 6 | 2 |", "1. **head**: train a new head",
                   "checkpoints/best.keras", "tlkit evaluate --model", "![training curves](curves.png)"):
        assert needed in text, needed
    for picture in ("curves.png", "confusion.png", "top_losses.png"):
        with Image.open(run / picture) as image:
            assert min(image.size) > 200, picture


def test_evaluate_prints_and_writes_the_same_numbers(run, tiny_images, tmp_path, cli):
    code, out, err = cli("evaluate", "--model", str(run), "--data", str(tiny_images),
                         "--out", str(tmp_path / "eval"))
    assert code == 0, err
    assert out.splitlines()[0] == f"model: {run / 'model.keras'} (final: the model as the run ended: last epoch of " \
                                  "the last stage, or its best epoch with early stopping)"
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    rows = _csv(tmp_path / "eval" / "predictions.csv")
    assert len(rows) == 24 and {r["path"] for r in rows} == {str(p) for p in sorted(tiny_images.rglob("*.png"))}
    truth, predicted = [r["true"] for r in rows], [r["predicted"] for r in rows]
    # the predicted class is the most probable of the row's probabilities
    for r in rows:
        assert r["predicted"] == max(("blue", "green", "red"), key=lambda c: float(r[f"p_{c}"]))
    classes = ["blue", "green", "red"]
    hand = np.zeros((3, 3), int)
    for t, p in zip(truth, predicted):
        hand[classes.index(t), classes.index(p)] += 1
    assert report["confusion_matrix"] == hand.tolist()
    theirs = classification_report(truth, predicted, output_dict=True, zero_division=0)
    for row in report["table"]["classes"]:
        assert row["f1"] == pytest.approx(theirs[row["class"]]["f1-score"])
        printed = next(line for line in out.splitlines() if line.startswith(row["class"] + " "))
        assert printed.split() == [row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}",
                                   f"{row['f1']:.4f}", str(row["support"])]
    assert report["table"]["macro avg"]["f1"] == pytest.approx(theirs["macro avg"]["f1-score"])
    assert f"accuracy {report['accuracy']:.4f}" in out


def test_min_accuracy_exits_1_below_and_0_above(run, tiny_images, tmp_path, cli):
    code, _, _ = cli("evaluate", "--model", str(run), "--data", str(tiny_images), "--out",
                     str(tmp_path / "e"), "--top-losses", "2")
    accuracy = json.loads((tmp_path / "e" / "report.json").read_text())["accuracy"]
    assert code == 0
    code, _, err = cli("evaluate", "--model", str(run), "--data", str(tiny_images), "--out",
                       str(tmp_path / "e"), "--top-losses", "2", "--min-accuracy", str(accuracy + 0.01))
    assert code == 1 and err.strip() == f"error: accuracy {accuracy:.4f} is below --min-accuracy {accuracy + 0.01}"
    code, _, err = cli("evaluate", "--model", str(run), "--data", str(tiny_images), "--out",
                       str(tmp_path / "e"), "--top-losses", "2", "--min-accuracy", str(accuracy - 0.01))
    assert code == 0 and err == ""


def test_tta_report_gives_the_accuracy_with_and_without(run, tiny_images, tmp_path, capsys):
    from tlkit.evaluation.predict import evaluate

    plain = evaluate(run, tiny_images, tmp_path / "plain", top_losses=1)
    tta = evaluate(run, tiny_images, tmp_path / "tta", tta=4, top_losses=1)
    assert tta["tta"]["views"] == 4 and tta["tta"]["accuracy_without"] == pytest.approx(plain["accuracy"])
    assert tta["tta"]["accuracy_with"] == pytest.approx(tta["accuracy"])
    probs = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in _csv(tmp_path / "tta" / "predictions.csv")])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_predict_walks_folders_skips_the_bad_file_and_writes_what_it_prints(run, tiny_images, tmp_path, cli):
    tree = tmp_path / "photos"
    shutil.copytree(tiny_images / "red", tree / "a" / "b")
    shutil.copy(tiny_images / "blue" / "0.png", tree / "top.png")
    (tree / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tree / "a" / "notes.txt").write_text("not an image")
    good = [tree / "top.png"] + sorted((tree / "a" / "b").glob("*.png"))

    code, _, err = cli("predict", "--model", str(run), str(tree))
    assert code == 2 and str(tree / "a" / "corrupt.jpg") in err and "--skip-bad" in err

    code, out, err = cli("predict", "--model", str(run), str(tree), "--skip-bad", "--top", "2",
                         "--out", str(tmp_path / "p.csv"))
    assert code == 0, err
    assert f"skipped {tree / 'a' / 'corrupt.jpg'}: " in out
    printed = [line for line in out.splitlines() if line.startswith(str(tree))]
    assert [line.split(":")[0] for line in printed] == [str(p) for p in good]
    rows = _csv(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == [str(p) for p in good]
    for line, row in zip(printed, rows):
        first, p = line.split(": ")[1].split(", ")[0].split()
        assert first == row["predicted"] and p == f"{float(row['probability']):.3f}"
        assert float(row[f"p_{first}"]) == pytest.approx(float(row["probability"]))

    code, _, _ = cli("predict", "--model", str(run), *map(str, good[:2]), "--out", str(tmp_path / "p.json"))
    saved = json.loads((tmp_path / "p.json").read_text())
    assert code == 0 and [s["path"] for s in saved] == [str(p) for p in good[:2]]
    assert saved[0]["top"][0][1] == pytest.approx(float(rows[0]["probability"]), abs=1e-6)


def test_checkpoint_best_uses_the_best_file(run, tiny_images, cli, tmp_path):
    code, out, _ = cli("predict", "--model", str(run), "--checkpoint", "best", str(tiny_images / "red"))
    assert code == 0 and out.startswith(f"model: {run / 'checkpoints' / 'best.keras'} (best: ")


def test_visualize_gradcam_writes_one_picture_per_image(run, tiny_images, tmp_path, cli):
    images = sorted((tiny_images / "green").glob("*.png"))[:2]
    code, out, err = cli("visualize", "gradcam", "--model", str(run), "--class", "red",
                         "--out", str(tmp_path / "cam"), *map(str, images))
    assert code == 0, err
    written = sorted((tmp_path / "cam").glob("*.png"))
    assert [p.name for p in written] == ["000_0_gradcam.png", "001_1_gradcam.png"]
    code, _, err = cli("visualize", "gradcam", "--model", str(run), "--class", "purple",
                       "--out", str(tmp_path / "cam"), str(images[0]))
    assert code == 2 and "class 'purple' is not one of the model's: blue, green, red" in err


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "resnet18"])
def test_gradcam_on_every_kind_of_base(name):
    """keras.applications, EfficientNet-Lite and zoo bases: the heat is taken at the last block
    with a feature map, and the probabilities are the model's own."""
    base = load_base(name, "none", (32, 32))
    model = build_classifier(base, 3, 0.0)
    blocks = {b.name: list(b.layers) for b in base.blocks}
    layer = gradcam_layer(model, blocks)
    last_map = next(b for b in reversed(base.blocks) if len(base.model.get_layer(b.layers[-1]).output.shape) == 4)
    assert layer == last_map.layers[-1]
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    heat, probabilities = gradcam(model, images, layer)
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-5)
    assert heat.shape == (2, 32, 32) and heat.min() >= 0 and heat.max() <= 1


def test_predict_takes_one_path_as_a_str_or_a_path(run, tiny_images):
    """`tlkit.predict(run, "photo.jpg")` once walked the file system from "/", one character at a time."""
    from tlkit import predict

    photo = tiny_images / "red" / "0.png"
    for one in (str(photo), photo):
        results = predict(run, one)
        assert [r.path for r in results] == [photo]
    assert [r.path for r in predict(run, tiny_images / "red")] == sorted((tiny_images / "red").glob("*.png"))



def test_tta_top_losses_are_captioned_with_the_averaged_prediction_that_ranked_them(run, tiny_images, tmp_path,
                                                                                      monkeypatch):
    """With --tta the images are ranked by the averaged loss; their captions once gave the
    single view's figures, calling wrong an image the averaged prediction gets right."""
    from tlkit import evaluate
    from tlkit.evaluation import plots

    captioned = []
    original = plots.top_loss_captions

    def spy(classes, files, truth, probabilities):
        captioned.extend(zip(files, truth, probabilities))
        return original(classes, files, truth, probabilities)

    monkeypatch.setattr(plots, "top_loss_captions", spy)
    evaluate(run, tiny_images, tmp_path / "tta", tta=4, top_losses=6)
    averaged = {row["path"]: row for row in _csv(tmp_path / "tta" / "predictions.csv")}
    labels = [k[2:] for k in next(iter(averaged.values())) if k.startswith("p_")]
    assert len(captioned) == 6
    losses = []
    for path, truth, p in captioned:
        row = averaged[str(path)]
        np.testing.assert_allclose(p, [float(row[f"p_{c}"]) for c in labels], atol=1e-6)
        losses.append(-np.log(max(float(row[f"p_{labels[truth]}"]), 1e-7)))
    assert losses == sorted(losses, reverse=True)  # the captions' own losses rank the images


def test_report_md_says_the_augmentation_the_run_had(run):
    """Every REPORT.md once said "augmentation on (flips, crops, brightness)": `augment` is a
    preset name, and "none" is a non-empty string."""
    assert "augmentation: off." in (run / "REPORT.md").read_text()


@pytest.mark.parametrize("name", ["autoencoder", "classic", "deep", "extract", "head_only", "modern", "scratch"])
def test_every_built_in_recipe_describes_its_augmentation_truthfully(name):
    from tlkit.data.augment import PRESETS, of
    from tlkit.recipe.schema import builtin_recipes

    recipe = builtin_recipes()[name]
    words = of(recipe).describe()
    if of(recipe) == PRESETS["none"]:
        assert words == "off"
    else:
        assert ("horizontal flips" in words) == of(recipe).flip and "off" not in words
