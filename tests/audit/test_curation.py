"""--exclude and --relabel CSVs applied to a scanned folder, and recorded in the data report."""
from __future__ import annotations

import pytest

from tlkit.data.report import prepare
from tlkit.errors import TlkitError


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
