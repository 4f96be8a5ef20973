"""Manifests: a table of path,label[,split] trains as the folder it lists, and every problem in it
is one line naming the file and the line, found before anything trains."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tlkit
from tlkit.data import manifest
from tlkit.data.report import prepare
from tlkit.errors import TlkitError

PHOTOS = Path(__file__).resolve().parents[2] / "data_samples" / "photos"


def write_csv(path: Path, rows, header=("path", "label")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def photo_rows():
    return [(p.relative_to(PHOTOS).as_posix(), p.parent.name) for p in sorted(PHOTOS.glob("*/*.jpg"))]


@pytest.mark.integration
def test_a_manifest_of_the_sample_photos_trains_to_the_folder_s_metrics(tmp_path):
    # rows reversed: a manifest's order does not change the run
    table = write_csv(tmp_path / "labels.csv", photo_rows()[::-1])
    common = dict(recipe="head_only", weights="none", pooling="flatten", image_size=32, batch_size=16, seed=3,
                  stages={"head": {"epochs": 2}}, verbose=0)
    tlkit.finetune("lenet5", str(PHOTOS), out=tmp_path / "folder", **common)
    tlkit.finetune("lenet5", str(table), image_root=str(PHOTOS), out=tmp_path / "manifest", **common)
    folder, table_run = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("folder", "manifest"))
    assert folder.keys() == table_run.keys()
    for a, b in zip(folder["stages"], table_run["stages"]):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-6), key
            else:
                assert b[key] == value, key
    assert table_run["train_images"] + table_run["val_images"] == 240


def test_the_split_column_decides_train_and_validation_and_evaluate_takes_the_test_rows(tiny_images, tmp_path, cli):
    rows = []
    for label in ("blue", "green", "red"):
        files = sorted((tiny_images / label).glob("*.png"))
        rows += [(f.relative_to(tiny_images).as_posix(), label, split)
                 for f, split in zip(files, ["val", "test"] + ["train"] * (len(files) - 2))]
    table = write_csv(tmp_path / "labels.tsv", rows, ("file", "class", "part"))
    table.write_text(table.read_text().replace(",", "\t"))
    columns = ("--path-column", "file", "--label-column", "class", "--split-column", "part", "--image-root", tiny_images)
    train, val, report = prepare(str(table), image_root=tiny_images, columns=manifest.Columns("file", "class", "part"))
    assert report.train == [6, 6, 6] and report.val == [1, 1, 1] and report.split_column
    assert {f.name for f in val.files} == {"0.png"} and not {f.name for f in train.files} & {"0.png", "1.png"}

    code, _, err = cli("finetune", "--base", "lenet5", "--weights", "none", "--recipe", "head_only", "--pooling",
                       "flatten", "--image-size", 32, "--stage-option", "head:epochs=1", "--data", table, *columns,
                       "--out", tmp_path / "run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val_images"] == 3
    what = (tmp_path / "run" / "REPORT.md").read_text()
    assert "the validation images are the rows the manifest's `part` column names `val`" in what
    assert "seeded" not in what.split("## Data")[0]
    code, out, err = cli("evaluate", "--model", tmp_path / "run", "--data", table, *columns, "--out", tmp_path / "eval")
    assert code == 0, err
    evaluated = [r["path"] for r in csv.DictReader(open(tmp_path / "eval" / "predictions.csv"))]
    assert sorted(Path(p).name for p in evaluated) == ["1.png"] * 3


@pytest.mark.integration
def test_jsonl_and_a_dataframe_like_table_read_alike_and_a_dataframe_trains(tiny_images, tmp_path, monkeypatch):
    rows = [{"path": f"{c}/{i}.png", "label": c} for c in ("red", "blue") for i in range(3)]
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from_jsonl = manifest.read(tmp_path / "labels.jsonl", image_root=tiny_images).images

    class Frame:  # what the reader asks of a pandas DataFrame, and no more
        columns = ["path", "label"]
        index = range(len(rows))

        def to_dict(self, orient):
            assert orient == "records"
            return rows

    from_frame = manifest.read(Frame(), image_root=tiny_images).images
    assert from_jsonl.files == from_frame.files and from_jsonl.labels == from_frame.labels == [0] * 3 + [1] * 3
    assert from_jsonl.classes == ["blue", "red"]

    # paths relative to the working folder; the run's recipe names the table saved in the cache
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tiny_images)
    run = tlkit.finetune("lenet5", Frame(), recipe="head_only", weights="none", pooling="flatten", image_size=32,
                         batch_size=4, stages={"head": {"epochs": 1}}, out=tmp_path / "run", verbose=0)
    assert run.recipe.image_root == str(tiny_images) and Path(run.recipe.data).parent == tmp_path / "cache" / "manifests"
    assert manifest.read(run.recipe.data, image_root=run.recipe.image_root).images.files == from_frame.files


@pytest.fixture
def images(tiny_images, tmp_path) -> Path:
    root = tmp_path / "images"
    shutil.copytree(tiny_images, root)
    return root


def problems(table: Path, **options) -> list[str]:
    with pytest.raises(TlkitError) as error:
        manifest.read(table, **options)
    return str(error.value).splitlines()


@pytest.mark.parametrize("row, expected", [
    (("red/9.png", "red"), "{m}:4: 'red/9.png': no such file"),
    (("red/bad.png", "red"), "{m}:4: 'red/bad.png': not an image"),
    (("red/2.png", ""), "{m}:4: empty label (column 'label') for 'red/2.png'"),
    (("red/2.png", "red", "dev"), "{m}:4: unknown split 'dev' for 'red/2.png'"),
    (("./red/0.png", "red"), "{m}:4: './red/0.png' is listed twice (first at {m}:2)"),
    (("../outside.png", "red"), "{m}:4: '../outside.png' is outside the image root"),
    (("red/copy.png", "blue"), "{m}:4: 'red/copy.png' has the same content as 'red/0.png' "
                               "({m}:2, label 'red') but labelled 'blue'"),
])
def test_each_manifest_problem_is_one_line_naming_the_file_and_line(images, tmp_path, row, expected):
    (images / "red" / "bad.png").write_bytes(b"not a png")
    shutil.copy(images / "red" / "0.png", images / "red" / "copy.png")
    shutil.copy(images / "red" / "0.png", tmp_path / "outside.png")
    table = write_csv(images / "labels.csv", [("red/0.png", "red", ""), ("blue/0.png", "blue", ""), row],
                      ("path", "label", "split"))
    lines = problems(table)
    assert lines[0].startswith("1 problem in manifest") and len(lines) == 2
    assert lines[1].strip().startswith(expected.format(m=table)), lines


def test_every_problem_is_listed_at_once_and_a_missing_column_is_named(images, tmp_path):
    table = write_csv(images / "labels.csv", [("red/0.png", ""), ("red/9.png", "red"), ("blue/0.png", "blue")])
    assert [line.split(":")[1] for line in problems(table)[1:]] == ["2", "3"]
    no_label = write_csv(images / "names.csv", [("red/0.png", "red")], ("path", "class"))
    assert problems(no_label) == ["manifest '{}' has no column 'label' (its columns: path, class); name the label "
                                  "column with --label-column".format(no_label)]


def test_a_bad_manifest_fails_on_the_command_line_before_training(images, cli, tmp_path):
    table = write_csv(images / "labels.csv", [("red/0.png", "red"), ("blue/9.png", "blue")])
    code, out, err = cli("finetune", "--base", "lenet5", "--weights", "none", "--data", str(table),
                         "--out", str(tmp_path / "run"))
    assert code != 0 and "labels.csv:3: " in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_a_multilabel_manifest_splits_every_label_and_reports_combinations(tmp_path):
    # the sample photos with a second label: "round" for the round-ish subjects, none for some
    rows = [(path, {"coffee": "coffee round", "flower": "flower round", "temple": ""}.get(label, label))
            for path, label in photo_rows()]
    table = write_csv(tmp_path / "tags.csv", rows)
    train, val, report = prepare(str(table), image_root=PHOTOS, delimiter=" ", seed=1)
    assert train.classes == ["astronaut", "cat", "coffee", "flower", "rocket", "round"]
    assert report.train == [32, 32, 32, 32, 32, 64] and report.val == [8, 8, 8, 8, 8, 16]
    assert not {f.name for f in train.files} & {f.name for f in val.files}
    assert report.combinations[:3] == [("", 40), ("astronaut", 40), ("cat", 40)]
    assert ("coffee|round", 40) in report.combinations
    assert "6 label combinations, 40 images without a label" in report.lines()[0]
    # the last row counts images (240 = 192 + 48), not the label sum (224 + 56): an image may have two labels
    assert report.table()[-1].split() == ["images", "192", "48"] and not report.split_column


@pytest.mark.integration
def test_a_multilabel_run_beats_the_best_constant_predictor_on_its_test_rows(tmp_path, cli):
    # the photos with a second label that cuts across the classes: "round" for the cat, coffee and
    # flower; one image in 5 of each class held out as test rows
    rows = [(path, label + ("|round" if label in ("cat", "coffee", "flower") else ""), "test" if i % 5 == 0 else "")
            for i, (path, label) in enumerate(photo_rows())]
    table = write_csv(tmp_path / "tags.csv", rows, ("path", "label", "split"))
    run = tlkit.finetune("efficientnet_lite0", str(table), recipe="head_only", task="multilabel", image_root=str(PHOTOS),
                         image_size=64, stages={"head": {"epochs": 8, "learning_rate": 0.01}}, out=tmp_path / "run",
                         verbose=0)
    thresholds = json.loads((tmp_path / "run" / "thresholds.json").read_text())
    assert list(thresholds) == run.labels == ["astronaut", "cat", "coffee", "flower", "rocket", "round", "temple"]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["images"] == 36  # validation, of 192

    code, out, err = cli("evaluate", "--model", tmp_path / "run", "--data", table, "--out", tmp_path / "test")
    assert code == 0, err
    report = json.loads((tmp_path / "test" / "report.json").read_text())
    assert report["images"] == 48 and report["per_label"]["round"]["support"] == 24
    # the best constant predictor of each label: all positive (F1 2p/(1+p)) or all negative (F1 0)
    constant = np.mean([2 * (row["support"] / 48) / (1 + row["support"] / 48) for row in report["per_label"].values()])
    print(out, f"best constant predictor: macro F1 {constant:.4f}")
    assert report["macro_f1"] > constant + 0.3 and f"macro F1 {report['macro_f1']:.4f}" in out
    assert 0 < report["exact_match"] <= 1 and report["micro_f1"] > 0.5

    coffee = PHOTOS / rows[80][0]  # a test row: coffee, round
    code, out, err = cli("predict", "--model", tmp_path / "run", coffee, "--out", tmp_path / "p.csv")
    assert code == 0 and "coffee" in out and "round" in out, out
    with open(tmp_path / "p.csv") as f:
        (row,) = csv.DictReader(f)
    assert set(row["labels"].split("|")) == {"coffee", "round"} and float(row["p_round"]) >= thresholds["round"]


def test_a_folder_tree_is_multilabel_where_one_content_sits_in_several_class_folders(images):
    shutil.copy(images / "red" / "0.png", images / "blue" / "red0.png")  # red and blue
    shutil.copy(images / "red" / "1.png", images / "red" / "copy.png")  # a copy within red: counted once
    train, val, report = prepare(str(images), delimiter="|", val_split=0.25)
    kept = images / "blue" / "red0.png"  # the first copy in scan order stands for both
    both = train if kept in train.files else val
    assert both.label_sets[both.files.index(kept)] == (0, 2)  # blue, red
    assert len(train) + len(val) == 24 and report.duplicates == [(str(images / "red" / "copy.png"),
                                                                  str(images / "red" / "1.png"))]
    assert ("blue|red", 1) in report.combinations
