"""tlkit.data.report and the scan's content hashing: progress, copies of one content, the report."""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tlkit.data import checks, folders, splits
from tlkit.data import report as datareport
from tlkit.data.report import DataReport
from tlkit.errors import TlkitError


@pytest.fixture
def folder(tiny_images, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_images, tmp_path / "images"))


def test_scan_reports_progress_for_every_file(folder):
    calls = []
    folders.scan(folder, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 24) for i in range(25)]


def test_console_progress_writes_a_bar_and_a_line_per_scan(folder):
    out = io.StringIO()  # not a terminal: plain lines, the last one at the end of each scan
    progress = datareport.console_progress(out)
    folders.scan(folder, progress=progress)
    folders.scan(folder, progress=progress)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert all(re.fullmatch(r"24/24 \[=+\] checked in [\d.]+ s, [\d,]+/s", line) for line in lines), lines


def test_digests_are_the_sha256_of_each_file(folder):
    images = folders.scan(folder)
    assert images.digests == checks.file_digests(images.files)
    train, val = splits.split(images, 0.25, seed=0)
    assert train.digests == checks.file_digests(train.files) and val.digests == checks.file_digests(val.files)


def test_copies_within_a_class_count_once(folder):
    shutil.copy(folder / "blue" / "3.png", folder / "blue" / "copy.png")
    (folder / "blue" / "deep").mkdir()
    shutil.copy(folder / "blue" / "3.png", folder / "blue" / "deep" / "again.png")
    images = folders.scan(folder)
    assert len(images) == 24 and images.counts() == [8, 8, 8]
    assert folder / "blue" / "3.png" in images.files
    assert images.duplicates == [
        (folder / "blue" / "copy.png", folder / "blue" / "3.png"),
        (folder / "blue" / "deep" / "again.png", folder / "blue" / "3.png"),
    ]
    # a set holds each content once, so no split can put one content on both sides
    assert len(set(images.digests)) == len(images)
    for seed in range(5):
        train, val = splits.split(images, 0.5, seed)
        assert not set(train.digests) & set(val.digests)
    lines = datareport.prepare(folder)[2].lines()
    expected = "2 files repeat the content of another file of its class: counted once"
    assert any(line.startswith(expected) for line in lines)


def test_one_content_in_two_classes_is_an_error_naming_both(folder):
    shutil.copy(folder / "blue" / "3.png", folder / "red" / "odd.png")
    with pytest.raises(TlkitError) as caught:
        folders.scan(folder)
    assert str(caught.value).splitlines() == [
        f"1 image is filed under two classes in '{folder}' (same file content, so the label is ambiguous); "
        "keep each in one class, or pass --skip-bad to skip them:",
        f"  '{folder}/blue/3.png' (class 'blue') = '{folder}/red/odd.png' (class 'red')",
    ]


def test_skip_bad_skips_every_copy_of_an_ambiguous_image(folder):
    shutil.copy(folder / "blue" / "3.png", folder / "red" / "odd.png")
    shutil.copy(folder / "blue" / "3.png", folder / "blue" / "copy.png")
    images = folders.scan(folder, skip_bad=True)
    assert images.counts() == [7, 8, 8]
    skipped = dict(images.skipped)
    assert skipped.keys() == {folder / "blue" / "3.png", folder / "blue" / "copy.png", folder / "red" / "odd.png"}
    assert skipped[folder / "red" / "odd.png"] == (
        f"same content as '{folder}/blue/3.png' (class 'blue'), '{folder}/blue/copy.png' (class 'blue'): "
        "ambiguous label"
    )
    lines = DataReport.of(*splits.split(images, 0.25, 0)).lines()
    assert any(line.startswith("3 files with the same content in two classes skipped (--skip-bad)") for line in lines)


def test_training_copies_of_validation_images_are_left_out(folder, tmp_path):
    val = tmp_path / "val"
    for name in ("blue", "green", "red"):
        (val / name).mkdir(parents=True)
        shutil.copy(folder / name / "0.png", val / name / "v0.png")
    shutil.copy(folder / "green" / "5.png", val / "green" / "v5.png")
    train, val_set, report = datareport.prepare(folder, val_data=val)
    assert train.counts() == [7, 6, 7] and val_set.counts() == [1, 2, 1]
    assert not set(train.digests) & set(val_set.digests)
    assert report.overlap == [
        (str(folder / "blue" / "0.png"), str(val / "blue" / "v0.png")),
        (str(folder / "green" / "0.png"), str(val / "green" / "v0.png")),
        (str(folder / "green" / "5.png"), str(val / "green" / "v5.png")),
        (str(folder / "red" / "0.png"), str(val / "red" / "v0.png")),
    ]
    assert "4 training files left out: the same content is in the validation folder" in "\n".join(report.lines())


def test_a_class_whose_every_training_image_is_in_validation_is_an_error(folder, tmp_path):
    val = Path(shutil.copytree(folder, tmp_path / "val"))
    shutil.rmtree(val / "blue")
    shutil.rmtree(val / "green")
    with pytest.raises(TlkitError, match=r"^class 'red' has no training images left: all 8 are also in the valid"):
        datareport.prepare(folder, val_data=val)


def test_report_table_and_counts_of_a_split(folder):
    train, val, report = datareport.prepare(folder, val_split=0.25, seed=3)
    assert (report.classes, report.train, report.val) == (["blue", "green", "red"], [6, 6, 6], [2, 2, 2])
    assert report.lines()[:6] == [
        f"data '{folder}': 18 training and 6 validation images in 3 classes",
        "  class   train     val",
        "  blue        6       2",
        "  green       6       2",
        "  red         6       2",
        "  total      18       6",
    ]
    assert report.train_digests == sorted(checks.file_digests(train.files))
    # 8 images a class: each under 20, none more than 3 times another
    assert report.warnings == [
        "3 classes have fewer than 20 images: 'blue' (8), 'green' (8), 'red' (8); "
        "too few to learn a class well or to measure it"
    ]


def test_imbalance_warning():
    report = DataReport("d", None, ["a", "b", "c"], [70, 20, 25], [10, 4, 5])
    assert report.warnings == [
        "class imbalance: 'a' has 80 images, 'b' 24 (3x); the model will lean towards the larger classes, "
        "and accuracy alone will hide it"
    ]
    assert DataReport("d", None, ["a", "b"], [60, 20], [12, 4]).warnings == []  # exactly 3x: no warning


def test_many_classes_are_summed_up_in_one_line():
    classes = [f"c{i:02d}" for i in range(30)]
    report = DataReport("d", None, classes, [30 + i for i in range(30)], [5] * 30)
    assert report.lines()[1] == (
        "  images per class: fewest 35 ('c00'), median 49, most 64 ('c29'); every class in data_report.json"
    )


def test_report_json_round_trip_and_training_overlap(folder, tmp_path):
    train, val, report = datareport.prepare(folder, val_split=0.25, seed=0)
    run = tmp_path / "run"
    report.save(run / "data_report.json")
    saved = json.loads((run / "data_report.json").read_text())
    assert saved["per_class"]["green"] == {"train": 6, "val": 2} and saved["warnings"] == report.warnings
    assert DataReport.load(run / "data_report.json") == report

    test = tmp_path / "test"
    for name in ("blue", "green", "red"):
        (test / name).mkdir(parents=True)
    shutil.copy(train.files[0], test / "blue" / "seen.png")
    shutil.copy(train.files[-1], test / "red" / "seen too.png")
    shutil.copy(val.files[0], test / "green" / "validation.png")  # validated on, not trained on
    Image.open(folder / "green" / "1.png").rotate(90).save(test / "green" / "new.png")
    evaluated = folders.scan(test, classes=["blue", "green", "red"])
    assert datareport.seen_in_training(run, evaluated) == [test / "blue" / "seen.png", test / "red" / "seen too.png"]
    assert datareport.seen_in_training(run, [test / "red" / "seen too.png"]) == [test / "red" / "seen too.png"]
    assert datareport.seen_in_training(tmp_path / "old_run", evaluated) is None
    assert datareport.training_overlap_warning(run, evaluated) == (
        f"2 of the 4 images in '{test}' were among the training images of '{run}' (same content, "
        f"e.g. '{test}/blue/seen.png'): the accuracy on them is not a fair test"
    )
    unseen = evaluated.subset([i for i, f in enumerate(evaluated.files) if "seen" not in f.name])
    assert len(unseen) >= 1 and datareport.training_overlap_warning(run, unseen) is None


def test_unreadable_report_is_one_line(tmp_path):
    (tmp_path / "data_report.json").write_text("{not json")
    with pytest.raises(TlkitError, match=r"^cannot read the data report '.*data_report.json' \("):
        datareport.seen_in_training(tmp_path, [])
