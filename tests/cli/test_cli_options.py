"""Options that cannot work are refused before anything is loaded: one line, exit status 2, no
model read and no image predicted."""
from __future__ import annotations

import time

import pytest


@pytest.mark.parametrize("args, named", [
    (["predict", "--model", "RUN", "--top", "0", "a.jpg"], "--top"),
    (["predict", "--model", "RUN", "--top", "-1", "a.jpg"], "--top"),
    (["predict", "--model", "RUN", "--batch-size", "0", "a.jpg"], "--batch-size"),
    (["predict", "--model", "RUN", "--tta", "13", "a.jpg"], "--tta"),
    (["predict", "--model", "RUN", "--out", "preds.txt", "a.jpg"], "preds.txt"),
    (["evaluate", "--model", "RUN", "--data", "DATA", "--top-losses", "-1"], "--top-losses"),
    (["evaluate", "--model", "RUN", "--data", "DATA", "--batch-size", "0"], "--batch-size"),
])
def test_impossible_options_are_refused_before_anything_loads(args, named, cli, tmp_path, monkeypatch):
    (tmp_path / "RUN").mkdir()
    (tmp_path / "DATA").mkdir()
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    code, out, err = cli(*args)
    assert code == 2
    assert named in err and "Traceback" not in err
    assert time.perf_counter() - start < 3  # refused by the option's type, not after a model loaded


@pytest.mark.parametrize("text, message", [
    ('[[stages]]\nkind = "train"\nepochs = "ten"\n', "recipe {path}, stage 1, train stage: epochs = 'ten' is not a whole number"),
    ("", "recipe {path} has no stages"),
    ("dropout = 2.0\n[[stages]]\nkind = \"train\"\n", "recipe {path}: dropout must be"),
    ("x = [\n", "{path} is not valid TOML"),
])
def test_an_error_in_a_recipe_file_names_the_file(text, message, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    (tmp_path / "r.toml").write_text(text)
    code, _, err = cli("train", "--arch", "lenet5", "--recipe", "r.toml", "--data", "digits")
    assert code == 2
    assert err.startswith("error: " + message.format(path="r.toml")), err


def test_the_library_refuses_an_out_file_it_cannot_write_before_loading(tmp_path):
    """No run is there to load: the file name is told first, not after every image was predicted."""
    from tlkit import predict
    from tlkit.errors import TlkitError

    with pytest.raises(TlkitError, match="preds.txt': give a .csv or .json"):
        predict(tmp_path / "no-run", "a.jpg", out=tmp_path / "preds.txt")
