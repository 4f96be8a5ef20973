"""`tlkit audit` on the sample photos (efficientnet_lite0; one feature cache for the session):
flipped labels found (at 112 px) and few flagged without flips, planted copies named, a blank and
a digit image as outliers, multi-label data audited from its manifest (at 64 px)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

SAMPLES = Path(__file__).resolve().parents[2] / "data_samples"
SIZE = "64"
# At 64 px the flips of seed 2 are found at recall 0.79 (19 of 24); at 112 px each of seeds 0-4 at
# precision and recall of at least 0.83 (BENCHMARKS.md).
LABEL_SIZE = "112"


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    shutil.copytree(SAMPLES / "photos", root, ignore=shutil.ignore_patterns("*.csv"))
    return root


def run_audit(cli, data: Path, out: Path, cache: Path, *options, size=SIZE) -> tuple[list[dict], dict, str]:
    code, stdout, err = cli("audit", "--base", "efficientnet_lite0", "--data", data, "--out", out,
                            "--image-size", size, "--cache", cache, *options)
    assert code == 0, err
    with open(out / "issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((out / "summary.json").read_text()), stdout


@pytest.mark.parametrize("seed", [0, *(pytest.param(seed, marks=pytest.mark.integration) for seed in (1, 2, 3, 4))])
def test_flipped_labels_are_found(cli, tmp_path, feature_cache, seed):
    root = photos(tmp_path)
    files = sorted(root.glob("*/*.jpg"))
    classes = sorted(p.name for p in root.iterdir())
    rng = np.random.default_rng(seed)
    flipped = set()
    for path in rng.choice(files, size=len(files) // 10, replace=False):
        other = rng.choice([c for c in classes if c != path.parent.name])
        target = root / other / path.name
        path.rename(target)
        flipped.add(str(target))
    rows, summary, stdout = run_audit(cli, root, tmp_path / "audit", feature_cache, size=LABEL_SIZE)
    found = {r["path"] for r in rows if r["kind"] == "label_issue"}
    hits = len(found & flipped)
    assert hits / len(found) >= 0.8 and hits / len(flipped) >= 0.8, (len(found), hits, len(flipped))
    assert summary["counts"]["label_issue"] == len(found) and summary["images"] == len(files)
    assert "label_issue" in stdout
    for row in rows:
        if row["kind"] == "label_issue":
            assert row["suggested"] != row["given"] and 0 <= float(row["score"]) <= 1
    for picture in ("label_issues.png", "duplicates.png", "outliers.png"):
        assert (tmp_path / "audit" / picture).stat().st_size > 0


def test_clean_sample_flags_few(cli, tmp_path, feature_cache):
    rows, summary, _ = run_audit(cli, photos(tmp_path), tmp_path / "audit", feature_cache)
    assert summary["counts"]["label_issue"] <= 0.03 * summary["images"]
    assert summary["counts"]["duplicate"] == 0  # no pair of distinct sample photos is named
    assert summary["counts"]["outlier"] + summary["counts"]["blank"] <= 2


def test_planted_copies_and_outliers(cli, tmp_path, feature_cache):
    root = photos(tmp_path)
    planted = {}  # copy -> original
    originals = sorted(root.glob("*/*.jpg"))[::40]  # one photo of each class
    for k, original in enumerate(originals):
        image = Image.open(original).convert("RGB")
        other = sorted(p.name for p in root.iterdir() if p.name != original.parent.name)[k % 5]
        resized = root / other / f"copy_{k}_resized.jpg"  # in another class
        image.resize((48, 48)).save(resized, quality=60)
        bright = root / original.parent.name / f"copy_{k}_bright.png"  # same class, maybe across the split
        ImageEnhance.Brightness(image).enhance(1.3).save(bright)
        planted.update({str(resized): str(original), str(bright): str(original)})
    blank = root / "cat" / "blank.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank)

    rows, summary, _ = run_audit(cli, root, tmp_path / "audit", feature_cache)
    group = {r["path"]: r["group"] for r in rows if r["kind"] == "duplicate"}
    for copy, original in planted.items():
        assert copy in group and group.get(original) == group[copy], (copy, original)
    assert set(group) == set(planted) | set(planted.values())  # no other pair of photos
    detail = {r["path"]: r["detail"] for r in rows if r["kind"] == "duplicate"}
    assert "across classes" in detail[next(p for p in planted if "resized" in p)]
    first = next(r for r in rows if r["kind"] == "duplicate")
    assert "across the split" in first["detail"] or "across classes" in first["detail"]
    kinds = {r["path"]: r["kind"] for r in rows if r["kind"] in ("blank", "outlier")}
    assert kinds.get(str(blank)) == "blank", kinds


def test_digit_among_photos_is_an_outlier(cli, tmp_path, feature_cache):
    root = photos(tmp_path)
    digit = root / "coffee" / "digit.png"
    shutil.copy(sorted((SAMPLES / "digits" / "3").iterdir())[0], digit)
    rows, _, _ = run_audit(cli, root, tmp_path / "audit", feature_cache)
    assert {r["path"]: r["kind"] for r in rows}.get(str(digit)) == "outlier"


def test_too_few_images_for_the_folds(cli, tiny_images, tmp_path):
    code, _, err = cli("audit", "--base", "efficientnet_lite0", "--data", tiny_images, "--folds", "9",
                       "--out", tmp_path / "audit", "--image-size", "32", "--cache", tmp_path)
    assert code == 2
    assert err.strip().splitlines()[-1] == ("error: 9-fold audit needs at least 9 images per class: 'blue' has 8 "
                                            "images, 'green' has 8 images, 'red' has 8 images; add images or pass "
                                            "--folds 8")


@pytest.mark.parametrize("args, message", [
    ((), "pass --base NAME (see `tlkit bases`) or --model RUN (a trained run's base), one of them"),
    (("--base", "efficientnet_lite9"), "unknown base 'efficientnet_lite9': did you mean"),
    (("--base", "efficientnet_lite0", "--task", "multilabel", "--val-data", "."),
     "a multi-label audit takes its validation images from the manifest's split column"),
])
def test_bad_options(cli, tiny_images, args, message):
    code, _, err = cli("audit", "--data", tiny_images, *args)
    assert code == 2 and err.startswith("error: " + message), err


def test_multilabel_manifest(cli, tmp_path, feature_cache):
    """photo_tags.csv (each photo's class, and `round` on three classes) with the class of 10% of
    its rows changed: `--task multilabel` audits it with cleanlab's multi-label functions and
    names them, the given and suggested labels as label sets."""
    with open(SAMPLES / "photo_tags.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({row["label"].split("|")[0] for row in rows})
    rng = np.random.default_rng(0)
    changed = set()
    for i in rng.choice(len(rows), size=len(rows) // 10, replace=False):
        labels = rows[i]["label"].split("|")
        labels[0] = rng.choice([c for c in classes if c != labels[0]])
        rows[i]["label"] = "|".join(labels)
        changed.add(str(SAMPLES / rows[i]["path"]))
    tags = tmp_path / "tags.csv"
    with open(tags, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    found, summary, _ = run_audit(cli, tags, tmp_path / "audit", feature_cache, "--task", "multilabel",
                                  "--image-root", SAMPLES)
    issues = {r["path"]: r for r in found if r["kind"] == "label_issue"}
    hits = len(set(issues) & changed)
    assert hits / len(issues) >= 0.8 and hits / len(changed) >= 0.8, (len(issues), hits, len(changed))
    assert "round" in summary["classes"] and summary["images"] == len(rows)
    some = next(r for path, r in issues.items() if path in changed)
    assert some["given"] != some["suggested"] and "p(" in some["detail"]
