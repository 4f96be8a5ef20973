"""Buckets: `--data` and `--out` on a file system TensorFlow serves by scheme, with TensorFlow's
in-memory ram:// file system as the bucket (gs:// goes through the same tf.io.gfile calls)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from tlkit._util.urls import Url
from tlkit.data import folders, manifest, scan_cache

# the smallest whole run: lenet5 from random weights, one head stage on the tiny images
RUN = ("--base", "lenet5", "--weights", "none", "--recipe", "head_only", "--pooling", "flatten", "--image-size", "32",
       "--batch-size", "8", "--epochs-head", "2", "--seed", "3")


def upload(local: Path, url: str) -> str:
    """The folder `local` copied to `url` (a fresh ram:// folder)."""
    if tf.io.gfile.exists(url):
        tf.io.gfile.rmtree(url)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            target = f"{url}/{path.relative_to(local).as_posix()}"
            tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
            tf.io.gfile.copy(str(path), target)
    return url


def test_a_url_keeps_its_scheme_through_the_path_operations():
    url = Url("gs://bucket//flowers/./roses/../tulips/")
    assert url == "gs://bucket/flowers/tulips" and (url / "a.JPG").suffix == ".JPG"
    assert (url / "a.jpg").name == "a.jpg" and url.parent == "gs://bucket/flowers"
    assert (url / "x").is_relative_to(url.parent) and not Url("gs://bucket/flowers2").is_relative_to(url.parent)


def test_a_folder_and_a_manifest_on_a_bucket_scan_as_on_disk(tiny_images, tmp_path):
    url = upload(tiny_images, "ram://scan/tiny")
    with tf.io.gfile.GFile(f"{url}/notes.txt", "w") as f:
        f.write("not an image")
    local, remote = folders.scan(tiny_images), folders.scan(url)
    assert remote.root == url and all(isinstance(f, Url) for f in remote.files)
    assert [f[len(url):] for f in remote.files] == [str(f)[len(str(tiny_images)):] for f in local.files]
    assert (remote.classes, remote.labels, remote.digests) == (local.classes, local.labels, local.digests)
    assert [(p, why.split(",")[0]) for p, why in remote.ignored] == [(f"{url}/notes.txt", "beside the class folders")]
    rows = "".join(f"{p.parent.name}/{p.name},{p.parent.name}\n" for p in local.files)
    with tf.io.gfile.GFile(f"{url}/labels.csv", "w") as f:
        f.write("path,label\n" + rows)
    assert manifest.is_manifest(f"{url}/labels.csv")
    table = manifest.read(f"{url}/labels.csv").images
    assert (table.files, table.digests) == (remote.files, local.digests)


def test_a_bucket_file_is_cached_by_size_and_mtime_where_its_file_system_keeps_one(tiny_images):
    url = upload(tiny_images, "ram://key/tiny")
    # ram:// keeps no modification time, so a rewrite of the same size could not be told: never cached
    assert scan_cache.file_key(f"{url}/red/0.png") is None and scan_cache.file_key(url) is None
    assert scan_cache.file_key(f"{url}/red/missing.png") is None


@pytest.mark.parametrize("data, message", [
    ("ram://nowhere/flowers", "data folder 'ram://nowhere/flowers' does not exist: check the bucket and the path"),
    ("s3://bucket/flowers", "'s3://bucket/flowers': TensorFlow here does not serve s3:// (it serves "),
])
def test_a_missing_bucket_folder_or_a_scheme_tensorflow_lacks_is_one_line(cli, data, message, tmp_path):
    code, out, err = cli("finetune", *RUN, "--data", data, "--out", str(tmp_path / "run"))
    assert code != 0 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("train", "--arch", "lenet5", "--data", str(tmp_path), "--out", "s3://bucket/runs/x")
    assert code != 0 and "TensorFlow here does not serve s3://" in err and "Traceback" not in err


def test_a_bucket_out_that_holds_a_run_or_other_files_is_refused(tiny_images, cli, tmp_path):
    url = upload(tiny_images, "ram://refuse/tiny")
    code, _, err = cli("finetune", *RUN, "--data", url, "--out", f"{url}/red")
    assert code != 0 and f"--out {url}/red holds other files (0.png, 1.png, 2.png, ...), not a tlkit run" in err


@pytest.mark.integration
def test_finetune_from_and_to_a_bucket_evaluates_and_predicts_as_from_local_folders(tiny_images, tmp_path, cli,
                                                                                    monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    data = upload(tiny_images, "ram://bucket/tiny")
    out = "ram://bucket/runs/tiny"
    if tf.io.gfile.exists(out):
        tf.io.gfile.rmtree(out)
    assert cli("finetune", *RUN, "--data", data, "--out", out)[0] == 0
    assert cli("finetune", *RUN, "--data", str(tiny_images), "--out", str(tmp_path / "local"))[0] == 0
    names = {name.rstrip("/") for name in tf.io.gfile.listdir(out)}
    assert {"model.keras", "labels.txt", "recipe.toml", "metrics.json", "REPORT.md", "checkpoints"} <= names
    assert not names & {".lock", ".unfinished"}
    with tf.io.gfile.GFile(f"{out}/metrics.json") as f:
        remote = json.loads(f.read())
    local = json.loads((tmp_path / "local" / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss"):
        assert remote["stages"][-1][key] == pytest.approx(local["stages"][-1][key], abs=1e-6)

    reports = []
    for model, images in ((out, data), (str(tmp_path / "local"), str(tiny_images))):
        code, _, err = cli("evaluate", "--model", model, "--data", images, "--out", str(tmp_path / f"eval{len(reports)}"))
        assert code == 0, err
        reports.append(json.loads((tmp_path / f"eval{len(reports)}" / "report.json").read_text()))
    assert reports[0]["images"] == reports[1]["images"] == 24
    assert reports[0]["accuracy"] == pytest.approx(reports[1]["accuracy"], abs=1e-6)
    assert reports[0]["loss"] == pytest.approx(reports[1]["loss"], abs=1e-6)

    printed = []
    for model, images in ((out, f"{data}/red"), (str(tmp_path / "local"), str(tiny_images / "red"))):
        code, text, err = cli("predict", "--model", model, images)
        assert code == 0, err
        printed.append([line.split(":", 2)[-1] for line in text.splitlines()[1:]])
    assert printed[0] == printed[1] and len(printed[0]) == 8
    assert text.splitlines()[1].startswith(f"{tiny_images / 'red' / '0.png'}:")

    # an existing bucket run is refused as a local one is, and --overwrite replaces it
    code, _, err = cli("finetune", *RUN, "--data", data, "--out", out)
    assert code != 0 and f"--out {out} is an existing run" in err
    shutil.rmtree(tmp_path / "cache")  # the staging copy gone: the bucket is all there is
    code, _, err = cli("evaluate", "--model", out, "--data", data, "--out", str(tmp_path / "again"))
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "report.json").read_text())["accuracy"] == reports[0]["accuracy"]


@pytest.mark.integration
def test_a_bucket_run_stopped_after_an_epoch_resumes_from_the_bucket_alone(tiny_images, tmp_path, cli, monkeypatch):
    import tlkit.engine.resume as resume

    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    data, out = upload(tiny_images, "ram://resume/tiny"), "ram://resume/runs/tiny"
    save_state = resume.save_state

    def save_then_stop(ctx, stage, epoch, *args, **kwargs):
        name = save_state(ctx, stage, epoch, *args, **kwargs)
        if (stage, epoch) == (1, 1):
            raise KeyboardInterrupt
        return name

    monkeypatch.setattr(resume, "save_state", save_then_stop)
    code, _, err = cli("finetune", *RUN, "--data", data, "--out", out)
    assert code == 130 and err.strip().splitlines()[-1].endswith(f"go on with: tlkit finetune --resume {out}")
    monkeypatch.setattr(resume, "save_state", save_state)
    assert tf.io.gfile.exists(f"{out}/checkpoints/resume/state.json") and tf.io.gfile.exists(f"{out}/.unfinished")
    assert not tf.io.gfile.exists(f"{out}/model.keras")
    shutil.rmtree(tmp_path / "cache")  # another machine: the bucket is all there is
    code, text, err = cli("finetune", "--resume", out)
    assert code == 0, err
    assert cli("finetune", *RUN, "--data", str(tiny_images), "--out", str(tmp_path / "whole"))[0] == 0
    with tf.io.gfile.GFile(f"{out}/metrics.json") as f:
        resumed = json.loads(f.read())["stages"][-1]
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["stages"][-1]
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-6)
    assert not tf.io.gfile.exists(f"{out}/.unfinished") and not tf.io.gfile.exists(f"{out}/checkpoints/resume")


def test_a_file_mirrored_again_holds_only_its_new_bytes(tmp_path):
    from tlkit._util.buckets import Mirror

    url = "ram://again/run"
    mirror = Mirror(tmp_path, url)
    (tmp_path / "state.json").write_text('{"epoch": 10, "padding": "a longer first version"}')
    mirror.push()
    (tmp_path / "state.json").write_text('{"epoch": 11}')
    mirror.push()
    with tf.io.gfile.GFile(f"{url}/state.json") as f:
        assert json.loads(f.read()) == {"epoch": 11}  # ram:// would append to the first bytes


def test_a_multiworker_run_to_a_bucket_is_refused_before_any_worker_starts(tiny_images):
    from tlkit import jobs
    from tlkit.errors import TlkitError
    from tlkit.recipe.kinds import resolve

    recipe = resolve("head_only", base="lenet5", weights="none", data=str(tiny_images), distribute="multiworker")
    with pytest.raises(TlkitError, match=r"^--out ram://workers/run: a multi-worker run writes its run directory"):
        jobs.run(recipe, "ram://workers/run")
    assert not tf.io.gfile.exists("ram://workers/run")


@pytest.mark.integration
def test_a_pack_on_a_bucket_trains_extract_and_export_read_bucket_data_and_evaluate_reports_beside_the_run(
        tiny_images, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("TLKIT_CACHE", str(tmp_path / "cache"))
    data, pack, out = upload(tiny_images, "ram://packed/tiny"), "ram://packed/shards", "ram://packed/runs/tiny"
    for url in (pack, out):
        if tf.io.gfile.exists(url):
            tf.io.gfile.rmtree(url)
    assert cli("pack", "--data", data, "--out", pack)[0] == 0
    code, _, err = cli("finetune", *RUN, "--data", pack, "--out", out)
    assert code == 0, err
    assert cli("finetune", *RUN, "--data", str(tiny_images), "--out", str(tmp_path / "local"))[0] == 0
    with tf.io.gfile.GFile(f"{out}/metrics.json") as f:
        packed = json.loads(f.read())["stages"][-1]
    local = json.loads((tmp_path / "local" / "metrics.json").read_text())["stages"][-1]
    assert packed["val_loss"] == pytest.approx(local["val_loss"], abs=1e-6)

    # without --out, a bucket run's evaluation goes beside it, in the bucket
    code, text, err = cli("evaluate", "--model", out, "--data", pack)
    assert code == 0, err
    assert text.splitlines()[-1].endswith(f"to {out}/eval-shards")
    with tf.io.gfile.GFile(f"{out}/eval-shards/report.json") as f:
        assert json.loads(f.read())["images"] == 24

    # the export's check reads the run's data from the bucket
    code, _, err = cli("export", "--model", out, "--out", str(tmp_path / "exported"))
    assert code == 0, err
    code, _, err = cli("extract", "--base", "lenet5", "--weights", "none", "--image-size", "32", "--batch-size", "8",
                       "--data", data, "--out", str(tmp_path / "extracted"))
    assert code == 0, err
