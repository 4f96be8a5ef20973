"""Every keras.applications base loads weights files in the formats Keras itself reads: the
legacy HDF5 of its published notop files (what `--weights imagenet` downloads) and the
`.weights.h5` of `save_weights`. Each file is made here from the plain application with random
values, so the test needs no network, and the loaded base must hold the file's values.

Bases with a caffe preprocessing (VGG, ResNet v1) once failed here: the preprocessing is a
weighted layer the files do not have."""
from __future__ import annotations

import shutil

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from tlkit.bases.keras_apps import APPS, load_app
from tlkit.models.preprocessing import NAME as PREPROCESSING
from tlkit.recipe.base_names import load_catalog

# Each base takes 4 to 60 s here (two cores): the default run covers the caffe bases (the ones
# that broke) of both families, a base of each other preprocessing, and Keras' counter-named
# layers (inception_v3); `-m slow` every other base.
DEFAULT = {"vgg16", "vgg19", "resnet50", "inception_v3", "mobilenet_v2", "densenet121", "efficientnetb0"}
# the smallest input each family takes (keras.applications checks it)
MIN_SIZE = {"inception_v3": 75, "inception_resnet_v2": 75, "xception": 71, "nasnetlarge": 32}
BASES = [pytest.param(name, marks=() if name in DEFAULT else pytest.mark.slow) for name in APPS]


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """A fresh Keras home: Keras reads $KERAS_HOME once, on import, into this attribute."""
    (tmp_path / "keras_home").mkdir()
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home" / "models"


def weighted(model: keras.Model) -> list[np.ndarray]:
    return [w for layer in model.layers if layer.name != PREPROCESSING for w in layer.get_weights()]


def random_application(name: str, size: int) -> keras.Model:
    """The plain application as Keras builds it for its weights files, every weight random."""
    app = getattr(keras.applications, APPS[name].constructor)(include_top=False, weights=None,
                                                              input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    for layer in app.layers:
        layer.set_weights([rng.normal(0, 1, w.shape).astype(w.dtype) for w in layer.get_weights()])
    return app


def assert_loaded(base_model: keras.Model, app: keras.Model) -> None:
    loaded, saved = weighted(base_model), weighted(app)
    assert len(loaded) == len(saved)
    for got, want in zip(loaded, saved):
        np.testing.assert_array_equal(got, want)


@pytest.mark.integration
@pytest.mark.parametrize("name", BASES)
def test_every_keras_base_loads_keras_weights_files(name, tmp_path, keras_home, monkeypatch):
    size = MIN_SIZE.get(name, 32)
    app = random_application(name, size)
    legacy = tmp_path / f"{name}_notop.h5"  # as Keras publishes its notop files
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app)
    native = tmp_path / f"{name}.weights.h5"
    app.save_weights(native)

    for file in (legacy, native):
        assert_loaded(load_app(name, weights=str(file), image_size=(size, size)).model, app)

    # --weights imagenet: the legacy file in Keras' cache under the name Keras asks for. Only the
    # network is replaced; the hash check is too, as random values cannot match the published hash.
    keras_home.mkdir()
    shutil.copy(legacy, keras_home / load_catalog()[name].weights.file)
    monkeypatch.setattr(file_utils, "urlretrieve", lambda *a, **k: pytest.fail("downloaded instead of the cache"))
    monkeypatch.setattr(file_utils, "validate_file", lambda *a, **k: True)
    assert_loaded(load_app(name, weights="imagenet", image_size=(size, size)).model, app)


@pytest.mark.integration
def test_the_headline_command_with_a_keras_weights_file(cli, tiny_images, tmp_path):
    """`tlkit finetune --base vgg16 --weights FILE`, FILE a notop file in Keras' legacy format."""
    app = random_application("vgg16", 32)
    file = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(file, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, app)
    out = tmp_path / "run"
    code, _, err = cli("finetune", "--base", "vgg16", "--weights", file, "--data", tiny_images, "--out", out,
                       "--image-size", 32, "--epochs-head", 1, "--epochs-finetune", 1, "--batch-size", 8)
    assert code == 0, err
    model = keras.saving.load_model(out / "model.keras")
    # block1 stays frozen under the default recipe, which unfreezes the top block
    np.testing.assert_array_equal(model.get_layer("base").get_layer("block1_conv1").get_weights()[0],
                                  app.get_layer("block1_conv1").get_weights()[0])
