"""--exclude and --relabel CSVs applied to a scanned folder, and recorded in the data report."""
from __future__ import annotations

import json

import pytest

from tlkit.data.report import prepare
from tlkit.errors import TlkitError
from tlkit.recipe.schema import Recipe


def test_exclude_and_relabel(tiny_images, tmp_path, caplog):
    drop = tmp_path / "issues.csv"
    drop.write_text(f"path,kind\n{tiny_images / 'red' / '0.png'}\nblue/1.png,label_issue\nnowhere/x.png,outlier\n")
    moves = tmp_path / "relabel.csv"
    moves.write_text("path,label\ngreen/2.png,red\n")
    train, val, report = prepare(tiny_images, exclude=drop, relabel=moves)
    files = {str(f) for f in train.files + val.files}
    assert len(files) == 22 and str(tiny_images / "red" / "0.png") not in files
    assert len(report.excluded) == 2 and report.relabeled == [(str(tiny_images / "green" / "2.png"), "green", "red")]
    assert "1 of the 3 paths" in caplog.text and "2 images left out (--exclude" in caplog.text
    assert any("2 files left out (--exclude)" in line for line in report.lines())


def test_relabel_to_an_unknown_class(tiny_images, tmp_path):
    moves = tmp_path / "relabel.csv"
    moves.write_text("path,label\ngreen/2.png,redd\n")
    with pytest.raises(TlkitError, match="unknown class 'redd': did you mean red"):
        prepare(tiny_images, relabel=moves)


def test_exclude_without_a_path_column(tiny_images, tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("file\nred/0.png\n")
    with pytest.raises(TlkitError, match="has no 'path' column"):
        prepare(tiny_images, exclude=bad)


def test_train_with_exclude_and_relabel_records_them(cli, tiny_images, tmp_path):
    """`tlkit train --exclude issues.csv --relabel CSV`: trained without those files and with the
    new class, said on the console, recorded in recipe.toml (the run repeats) and the data report."""
    drop = tmp_path / "issues.csv"
    drop.write_text("path,kind\nred/0.png,label_issue\nblue/1.png,outlier\n")
    moves = tmp_path / "relabel.csv"
    moves.write_text("path,label\ngreen/2.png,red\n")
    run = tmp_path / "run"
    code, stdout, err = cli("train", "--arch", "lenet5", "--data", tiny_images, "--image-size", "32", "--epochs", "1",
                            "--batch-size", "8", "--exclude", drop, "--relabel", moves, "--out", run)
    assert code == 0, err
    assert "2 images left out (--exclude" in stdout and "1 image relabelled (--relabel" in stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_images"] + metrics["val_images"] == 22
    recipe = Recipe.load(run / "recipe.toml")
    assert (recipe.exclude, recipe.relabel) == (str(drop), str(moves))
    report = json.loads((run / "data_report.json").read_text())
    assert sorted(report["excluded"]) == [str(tiny_images / "blue" / "1.png"), str(tiny_images / "red" / "0.png")]
    assert report["relabeled"] == [[str(tiny_images / "green" / "2.png"), "green", "red"]]
    assert sum(report["per_class"]["red"].values()) == 8  # 8 - 1 left out + 1 relabelled
