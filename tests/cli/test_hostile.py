"""Issue 15's hostile corpus: bad input and faults end in one clear line, and nothing the user had
is lost.

Each case runs the CLI as a user would (in this process, `tlkit.cli.main`) and checks the exit
status, that stderr is one `error:` line naming the thing at fault, with no traceback, and that
the files the user had are byte for byte and mode for mode as they were. Most cases fail before
TensorFlow is needed; the ones that need a run share one tiny trained run (lenet5, 32 px, 1 epoch).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tlkit.cli import main
from tlkit.cli._app import os_error_line, unicode_error_line

ROOT_USER = os.geteuid() == 0  # permissions do not stop root: those cases are simulated instead


# ---------------------------------------------------------------------------------- helpers

def snapshot(*roots: Path) -> dict:
    """Every file and folder under `roots`: bytes and mode of files, mode of folders."""
    seen = {}
    for root in roots:
        if not root.exists():
            seen[str(root)] = None
            continue
        paths = [root, *root.rglob("*")] if root.is_dir() else [root]
        for p in paths:
            st = p.lstat()
            seen[str(p)] = (p.read_bytes() if p.is_file() and not p.is_symlink() else None, st.st_mode)
    return seen


def cli(argv, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(argv, capsys, *names, keep=(), status=2) -> str:
    """Run `argv`, assert it ends with `status` and one `error:` line naming each of `names`, with
    no traceback and the files under `keep` unchanged; returns the line."""
    before = snapshot(*keep)
    code, out, err = cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status, (code, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    assert snapshot(*keep) == before
    return lines[0]


TRAIN = ["-q", "train", "--arch", "lenet5", "--image-size", "32", "--epochs", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def trained(tiny_images, tmp_path_factory) -> Path:
    """The one tiny run the cases that need a run share (copied before any change)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    with pytest.MonkeyPatch.context():
        main([*TRAIN, "--data", str(tiny_images), "--out", str(out)])
    assert (out / "model.keras").is_file() and not (out / ".unfinished").exists() and not (out / ".lock").exists()
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------- 1. every option and recipe value, up front

@pytest.mark.parametrize("option, named", [
    (["--seed", "-1"], "seed"), (["--seed", str(2**32)], "seed"), (["--dropout", "1.5"], "dropout"),
    (["--dropout", "-0.1"], "dropout"), (["--batch-size", "0"], "batch_size"), (["--image-size", "0"], "image_size"),
    (["--image-size", "-32"], "image_size"), (["--image-size", "100000"], "image_size"),
    (["--val-split", "1.5"], "val_split"), (["--early-stopping", "-2"], "early_stopping"),
    (["--stage-option", "bad"], "--stage-option"), (["--stage-option", '1:learning_rate="fast"'], "learning_rate"),
    (["--stage-option", "1:nosuch=3"], "nosuch"), (["--epochs", "-1"], "epochs"), (["--lr", "-1"], "learning_rate"),
])
def test_bad_options_are_one_line_naming_the_option(option, named, tiny_images, tmp_path, capsys):
    refused([*TRAIN, "--data", tiny_images, "--out", tmp_path / "new", *option], capsys, named,
            keep=[tiny_images, tmp_path])
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("text, named", [
    (b'name = "r"\n[[stages]]\nkind = "train"\nepochs = "3"\n', "epochs"),
    (b'name = "r"\n[[stages]]\nkind = 1\n', "kind"),
    (b'name = "r"\nstages = []\n', "stage"),
    (b"\xff\xfe\x00binary\x00\x01", "recipe.toml"),
    (b'name = "r"\nbatch_sise = 8\n[[stages]]\nkind = "train"\n', "batch_sise"),
    (b'name = "r"\n[[stages]\n', "recipe.toml"),
])
def test_bad_recipes_are_one_line_naming_the_key_or_file(text, named, tiny_images, tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_bytes(text)
    refused(["-q", "train", "--arch", "lenet5", "--data", tiny_images, "--recipe", recipe, "--out", tmp_path / "new"],
            capsys, named, keep=[tmp_path])


# ------------------------------------------------------- 2. operating-system errors, one line

def test_os_errors_become_one_line_naming_the_path_and_what_to_do():
    cases = {
        errno.EACCES: "permission", errno.ENOENT: "does not exist", errno.EISDIR: "is a folder",
        errno.ENOTDIR: "is a file", errno.EROFS: "read-only", errno.ENOSPC: "no space", errno.ELOOP: "loop",
    }
    for number, words in cases.items():
        line = os_error_line(OSError(number, os.strerror(number), "/some/where"))
        assert line.startswith("/some/where: ") and words in line, line
    try:
        "caf\udce9".encode("utf-8")
    except UnicodeEncodeError as err:
        assert "caf" in unicode_error_line(err) and "rename" in unicode_error_line(err)


def test_disk_full_half_way_through_a_write_leaves_no_temporary_file_and_the_old_file(tmp_path):
    from tlkit._util.io import write_atomic

    target = tmp_path / "labels.txt"
    target.write_text("old\n")

    def fill_the_disk(tmp: Path):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(OSError):
        write_atomic(target, fill_the_disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt"] and target.read_text() == "old\n"


def test_read_only_file_system_for_predict_out_is_one_line(run, tiny_images, tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "ro" / "predictions.csv"
    line = refused(["-q", "predict", "--model", run, "--out", out, tiny_images / "red" / "0.png"], capsys,
                   tmp_path / "ro", "read-only", keep=[run, tiny_images])
    assert "--out" in line or "writable" in line
    with pytest.raises(OSError):  # --debug shows the traceback
        main(["--debug", "-q", "predict", "--model", str(run), "--out", str(out), str(tiny_images / "red" / "0.png")])


def test_disk_full_mid_run_is_one_line_and_leaves_a_run_marked_unfinished(run, tiny_images, capsys, monkeypatch):
    """--overwrite of a run, and the disk fills during training: the old run is gone, the new one is
    marked unfinished, never the old model.keras beside new files."""
    import tlkit.engine.training as core

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.out / "checkpoints" / "best.keras"))

    monkeypatch.setattr(core.RunContext, "fit", full)
    refused([*TRAIN, "--data", tiny_images, "--out", run, "--overwrite"], capsys, "best.keras", "no space",
            keep=[tiny_images])
    assert (run / ".unfinished").exists() and not (run / ".lock").exists()
    assert not (run / "model.keras").exists() and not (run / "REPORT.md").exists()
    refused(["-q", "predict", "--model", run, tiny_images / "red" / "0.png"], capsys, "model.keras", keep=[run])


@pytest.mark.parametrize("make, named", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"x"), "not an image"),
    (lambda p: p.symlink_to(p), "symbolic link loop"),
    (lambda p: p.symlink_to(p.parent / "nowhere"), "dangling symbolic link"),
])
def test_predict_on_a_missing_file_a_non_image_or_a_link_loop_is_one_line(make, named, run, tmp_path, capsys):
    bad = tmp_path / "input.png"
    make(bad)
    code, out, err = cli(["-q", "predict", "--model", run, bad], capsys)
    # one error line; a list of bad files (the data layer's report) follows it indented, one a line
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and lines[0].startswith("error: "), err
    assert all(line.startswith("  ") for line in lines[1:]), err
    assert "input.png" in err and named in err


@pytest.mark.skipif(ROOT_USER, reason="permissions do not stop root")
def test_unreadable_recipe_and_read_only_out_are_one_line(tiny_images, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[stages]]\nkind = "train"\n')
    recipe.chmod(0)
    refused(["-q", "train", "--arch", "lenet5", "--data", tiny_images, "--recipe", recipe], capsys, recipe)
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    refused([*TRAIN, "--data", tiny_images, "--out", locked / "run"], capsys, locked, keep=[locked])


# ----------------------------------------------------------- 3. run directories: never mixed

def test_out_at_an_existing_run_is_refused_before_anything_loads(run, tiny_images, capsys):
    line = refused([*TRAIN, "--data", tiny_images, "--out", run], capsys, run, "--overwrite", keep=[run])
    assert "--resume" in line
    # an unfinished run is a run too
    (run / "model.keras").unlink()
    refused([*TRAIN, "--data", tiny_images, "--out", run], capsys, run, "--overwrite", keep=[run])


def _a_file(p: Path) -> Path:
    p.write_text("mine")
    return p


def _under_a_file(p: Path) -> Path:
    _a_file(p)
    return p / "run"


def _other_files(p: Path) -> Path:
    p.mkdir()
    (p / "notes.txt").write_text("mine")
    return p


def _dangling(p: Path) -> Path:
    p.symlink_to(p.parent / "nowhere")
    return p


@pytest.mark.parametrize("make, named", [(_a_file, "is a file"), (_under_a_file, "is a file"),
                                         (_other_files, "not a tlkit run"), (_dangling, "dangling")])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_that_is_a_file_a_folder_of_other_files_or_a_dangling_link(make, named, overwrite, tiny_images,
                                                                        tmp_path, capsys):
    out = make(tmp_path / "out")
    refused([*TRAIN, "--data", tiny_images, "--out", out, *overwrite], capsys, named, keep=[tmp_path])


def test_a_live_lock_refuses_a_second_run_and_a_resume(run, tiny_images, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        refused([*TRAIN, "--data", tiny_images, "--out", run, "--overwrite"], capsys, str(holder.pid), run,
                keep=[run])
        refused(["-q", "train", "--resume", run], capsys, str(holder.pid), keep=[run])
        (run / ".lock").write_text(f"{holder.pid} another-host\n")
        refused([*TRAIN, "--data", tiny_images, "--out", run, "--overwrite"], capsys, "another-host", keep=[run])
        (run / ".lock").write_text("garbage")
        refused([*TRAIN, "--data", tiny_images, "--out", run, "--overwrite"], capsys, ".lock", keep=[run])
    finally:
        holder.kill()
        holder.wait()


def test_a_failure_before_the_first_file_leaves_the_old_run_intact(run, tmp_path, capsys):
    refused([*TRAIN, "--data", tmp_path / "nodata", "--out", run, "--overwrite"], capsys, "nodata", keep=[run])
    assert not (run / ".lock").exists()


def test_stale_lock_is_cleared_with_a_message_and_overwrite_replaces_the_whole_run(run, tiny_images, capsys):
    (run / ".lock").write_text(f"{dead_pid()} {socket.gethostname()}\n")
    (run / "eval-old").mkdir()
    (run / "eval-old" / "report.json").write_text("{}")
    old_model = (run / "model.keras").read_bytes()
    code, out, err = cli([*TRAIN, "--data", tiny_images, "--out", run, "--overwrite", "--seed", "7"], capsys)
    assert code == 0, err
    assert "stale lock" in out and "no longer running" in out
    assert not (run / "eval-old").exists() and not (run / ".lock").exists() and not (run / ".unfinished").exists()
    assert (run / "model.keras").read_bytes() != old_model
    assert "seed = 7" in (run / "recipe.toml").read_text()


@pytest.mark.slow  # two processes that each load TensorFlow
def test_two_runs_at_once_with_the_same_out_one_is_refused(tiny_images, tmp_path):
    """Two processes, same --out: the lock lets one write; the other exits 2 with one line."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "tlkit.cli", *TRAIN, "--data", str(tiny_images), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / ".lock").exists() and first.poll() is None:
            pass
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    finally:
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and str(out) in second.stderr
    assert (out / "model.keras").is_file() and not (out / ".lock").exists()


def test_an_unfinished_run_evaluates_with_its_best_checkpoint(run, tiny_images, capsys):
    (run / "model.keras").unlink()
    (run / ".unfinished").write_text("")
    code, out, err = cli(["-q", "predict", "--model", run, tiny_images / "red" / "0.png"], capsys)
    assert code == 0, err
    assert "best.keras" in out and "unfinished" in out


# ------------------------------------------------------------------ 4. caches cost only time

@pytest.fixture(scope="module")
def lenet_base():
    from tlkit.bases import load_base

    return load_base("lenet5", "none", (32, 32))


def test_feature_cache_that_is_a_file_a_garbage_entry_or_the_wrong_entry(lenet_base, tiny_images, tmp_path,
                                                                        caplog):
    from tlkit.engine import frozen as features

    files = sorted(tiny_images.rglob("*.png"))[:6]
    want = features.extract(lenet_base, files, (32, 32), cache=tmp_path / "good")
    # the cache folder is a file
    (tmp_path / "file").write_text("not a folder")
    caplog.clear()
    got = features.extract(lenet_base, files, (32, 32), cache=tmp_path / "file")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert "cannot be written" in caplog.text and (tmp_path / "file").read_text() == "not a folder"
    # an entry that holds other images' features under this key, then one of garbage bytes
    entry = next((tmp_path / "good").glob("*.npz"))
    other = features.extract(lenet_base, files[:3], (32, 32), cache=tmp_path / "other")
    shutil.copy(next((tmp_path / "other").glob("*.npz")), entry)
    for damage in ("wrong", "garbage"):
        if damage == "garbage":
            entry.write_bytes(b"PK\x03\x04 garbage")
        caplog.clear()
        got = features.extract(lenet_base, files, (32, 32), cache=tmp_path / "good")
        np.testing.assert_allclose(got, want, rtol=1e-5)
        assert "ignoring" in caplog.text and str(entry) in caplog.text
    assert len(other) == 3


def test_image_cache_that_is_a_file_or_an_entry_that_does_not_match(tiny_images, tmp_path, caplog):
    from tlkit.data import imagecache

    files = sorted(tiny_images.rglob("*.png"))[:4]
    digests = [f"d{i}" for i in range(4)]

    def decode(files, size, channels):
        return ((i, np.full((*size, channels), i, np.float32)) for i, _ in enumerate(files))

    (tmp_path / "file").write_text("x")
    assert imagecache.decoded(files, digests, (8, 8), 3, "disk", decode, cache=tmp_path / "file") is None
    assert "cannot be used" in caplog.text
    good = imagecache.decoded(files, digests, (8, 8), 3, "disk", decode, cache=tmp_path / "c")
    entry = good.path
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    caplog.clear()
    again = imagecache.decoded(files, digests, (8, 8), 3, "disk", decode, cache=tmp_path / "c")
    assert "does not match its key" in caplog.text and again.read(3)[0, 0, 0] == 3
    entry.with_suffix(".json").write_bytes(b"\xff not json")
    caplog.clear()
    again = imagecache.decoded(files, digests, (8, 8), 3, "disk", decode, cache=tmp_path / "c")
    assert "cannot be read" in caplog.text and again.read(2)[0, 0, 0] == 2


# ------------------------------------------------------------------- 5. files from others

@pytest.mark.parametrize("damage, named", [
    (lambda b: b"this is not a zip file", "as a Keras model"),
    (lambda b: b[: len(b) // 2], "as a Keras model"),
    (lambda b: b"", "as a Keras model"),
])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_garbage_model_keras_is_one_line_in_every_command(damage, named, command, run, tiny_images, tmp_path,
                                                            capsys):
    model = run / "model.keras"
    model.write_bytes(damage(model.read_bytes()))
    argv = {"predict": ["predict", "--model", run, tiny_images / "red" / "0.png"],
            "evaluate": ["evaluate", "--model", run, "--data", tiny_images, "--out", tmp_path / "eval"],
            "export": ["export", "--model", run, "--out", tmp_path / "export"]}[command]
    refused(["-q", *argv], capsys, model, named, keep=[run, tiny_images])


def test_a_model_with_code_is_refused_by_predict_and_as_a_base(run, tiny_images, tmp_path, capsys):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(run / "model.keras")
    refused(["-q", "predict", "--model", run, tiny_images / "red" / "0.png"], capsys, "model.keras", "refused",
            keep=[run])
    refused(["-q", "finetune", "--base", run / "model.keras", "--data", tiny_images, "--out", tmp_path / "new"],
            capsys, "model.keras", "refused", keep=[run])


@pytest.mark.parametrize("content, named", [
    (b"not hdf5 at all", "not an HDF5"),
    (b"", "not an HDF5"),
    (None, "does not fit"),  # HDF5, but not this base's weights
])
@pytest.mark.parametrize("base", ["lenet5", "mobilenet_v2"])
def test_a_weights_file_that_is_not_the_bases_is_one_line(content, named, base, tiny_images, tmp_path, capsys):
    weights = tmp_path / "w.weights.h5"
    if content is None:
        import h5py

        with h5py.File(weights, "w") as f:
            f["layers/nothing/vars/0"] = np.zeros(3)
    else:
        weights.write_bytes(content)
    refused(["-q", "finetune", "--base", base, "--weights", weights, "--image-size", "32", "--data", tiny_images,
             "--out", tmp_path / "new"], capsys, weights, named, keep=[weights])


def test_a_hub_folder_with_a_corrupt_saved_model_is_one_line(tiny_images, tmp_path, capsys):
    hub = tmp_path / "hub"
    (hub / "variables").mkdir(parents=True)
    (hub / "saved_model.pb").write_bytes(b"\x08\x96\x01 corrupt protobuf \xff\xff")
    refused(["-q", "finetune", "--base", f"hub:{hub}", "--data", tiny_images, "--out", tmp_path / "new"], capsys,
            hub, "corrupt", keep=[hub])


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04", b"\x89HDF\r\n\x1a\n broken"])
def test_a_garbage_keras_file_as_a_base_is_one_line(content, tiny_images, tmp_path, capsys):
    base = tmp_path / "base.keras"
    base.write_bytes(content)
    refused(["-q", "finetune", "--base", base, "--data", tiny_images, "--out", tmp_path / "new"], capsys, base,
            keep=[base])




# ------------------------------------------------------------- 7. a model and its labels agree

@pytest.mark.parametrize("labels, named", [
    ("blue\ngreen\nred\nextra\n", "4 class names"),
    ("blue\ngreen\n", "2 class names"),
    ("", "empty"),
    (b"\xff\xfeblue\n", "not UTF-8"),
])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_labels_that_do_not_match_the_model_name_the_file(labels, named, command, run, tiny_images, tmp_path,
                                                          capsys):
    path = run / "labels.txt"
    path.write_bytes(labels if isinstance(labels, bytes) else labels.encode())
    argv = {"predict": ["predict", "--model", run, tiny_images / "red" / "0.png"],
            "evaluate": ["evaluate", "--model", run, "--data", tiny_images, "--out", tmp_path / "eval"],
            "export": ["export", "--model", run, "--out", tmp_path / "export"]}[command]
    refused(["-q", *argv], capsys, path, named, keep=[run, tiny_images])
    assert not (tmp_path / "eval").exists() and not (tmp_path / "export").exists()


@pytest.mark.parametrize("existing, named", [
    ({"1/saved_model.pb": b"old"}, "export/1 exists"),
    ({"model.tflite": b"old", "labels.txt": None}, "model.tflite exists"),
    ({"labels.txt": b"cat\ndog\n"}, "holds other labels"),
])
def test_an_export_never_touches_an_existing_export(existing, named, run, tmp_path, capsys):
    out = tmp_path / "export"
    for name, content in existing.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes((run / "labels.txt").read_bytes() if content is None else content)
    fmt = "tflite" if "model.tflite" in existing else "savedmodel"
    refused(["export", "--model", run, "--out", out, "--format", fmt, "--no-check"], capsys, named, keep=[out])
