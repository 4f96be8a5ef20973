"""The shape of the package: import layers CI enforces, a public API that works every time, and
run models that load with Keras alone."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tlkit
import tlkit.stages  # noqa: F401  (registers the stage kinds this file checks)
from tlkit.data.pipeline import load_images
from tlkit.errors import TlkitError
from tlkit.recipe.kinds import STAGES, resolve
from tlkit.recipe.schema import Recipe, Stage

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          cwd=ROOT, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_layers_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_import_tlkit_and_checking_a_recipe_import_no_tensorflow():
    out = python("""
        import sys
        import tlkit
        from tlkit.cli import cli
        import tlkit.stages
        from tlkit.recipe.kinds import resolve
        resolve("deep", stages={2: {"unfreeze": 2}})
        try:
            resolve("classic", stages={"finetune": {"unfreez": 2}})
        except tlkit.TlkitError as err:
            print(err)
        print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
    """)
    assert out.splitlines() == [
        "recipe classic, stage 2, finetune stage: unknown key 'unfreez': did you mean unfreeze?", "[]"]


def test_stage_kinds_are_the_registered_modules_and_recipes_are_checked_against_them():
    assert set(STAGES) == {"head", "finetune", "train", "extract", "autoencoder"}
    with pytest.raises(TlkitError, match="stage 1, head stage: epochs = '3' is not a whole number"):
        resolve(Recipe(stages=[Stage("head", epochs="3")]))
    with pytest.raises(TlkitError, match="unknown stage kind 'fintune': did you mean finetune"):
        resolve(Recipe(stages=[Stage("fintune")]))
    with pytest.raises(TlkitError, match="recipe deep has 2 finetune stages \\(2 and 3\\): say which one"):
        resolve("deep", stages={"finetune": {"unfreeze": 2}})
    deep = resolve("deep", stages={3: {"learning_rate": 3e-6}})
    assert [s.learning_rate for s in deep.stages] == [1e-3, 1e-4, 3e-6]
    assert [s.unfreeze for s in deep.stages[1:]] == [1, 3]
    with pytest.raises(TlkitError, match="has no stages"):
        resolve(Recipe(stages=[]))


@pytest.mark.integration
def test_every_public_name_works_every_time(tiny_images, tmp_path):
    """Each job twice, then evaluate, predict and export twice, in one process: nothing of the
    package replaces a function by a module of the same name."""
    assert [type(getattr(tlkit, name)).__name__ for name in tlkit.__all__] * 2 == [
        "type" if name in ("Recipe", "Stage", "TlkitError") else "function" for name in tlkit.__all__] * 2
    common = dict(data=str(tiny_images), image_size=32, batch_size=8, verbose=0)
    for attempt in range(2):
        run = tlkit.finetune("lenet5", recipe="head_only", weights="none", pooling="flatten",
                             stages={"head": {"epochs": 1}}, out=tmp_path / f"finetune{attempt}", **common)
        tlkit.extract("lenet5", weights="none", stages={"extract": {"epochs": 1}}, out=tmp_path / f"extract{attempt}",
                      cache=tmp_path / "cache", **common)
        tlkit.train("lenet5", stages={"train": {"epochs": 1}}, out=tmp_path / f"train{attempt}", **common)
        tlkit.pretrain(stages={"autoencoder": {"epochs": 1}}, out=tmp_path / f"pretrain{attempt}", **common)
        assert (tmp_path / f"pretrain{attempt}" / "base.keras").is_file()
    image = next((tiny_images / "red").iterdir())
    for attempt in range(2):
        metrics = tlkit.evaluate(run.path, tiny_images, tmp_path / f"evaluation{attempt}.json")
        assert metrics["images"] == 24
        assert tlkit.predict(run.path, [image])[0].path == image
        assert (tlkit.export(run.path, tmp_path / f"export{attempt}") / "saved_model.pb").is_file()


def test_pretrain_recipe_repeats_from_another_folder(tiny_images, tmp_path):
    tlkit.pretrain(data=str(tiny_images), stages={"autoencoder": {"epochs": 1}}, image_size=32, batch_size=8,
                   out=tmp_path / "ae", verbose=0)
    recipe = Recipe.load(tmp_path / "ae" / "recipe.toml")
    assert recipe.data == str(tiny_images.resolve()) and Path(recipe.data).is_absolute()


BLOCKED = """
    import json, sys
    sys.modules["tlkit"] = None  # a Python without tlkit: any import of it fails
    import keras, numpy as np
    model = keras.saving.load_model(sys.argv[1], safe_mode=True)
    images = np.load(sys.argv[2])
    print(json.dumps(model.predict(images, verbose=0).tolist()))
"""


@pytest.mark.parametrize("base", ["vgg16", "mobilenet_v2", pytest.param("densenet121", marks=pytest.mark.slow),
                                  "efficientnet_lite0"])
@pytest.mark.integration
def test_a_run_model_loads_with_keras_alone(base, tiny_images, tmp_path):
    """caffe (a frozen Dense flip), tf and torch (Rescaling; densenet121, slow) and lite preprocessing: core
    layers."""
    weights = "imagenet" if base == "efficientnet_lite0" else "none"
    run = tlkit.finetune(base, recipe="head_only", weights=weights, stages={"head": {"epochs": 1}},
                         data=str(tiny_images), image_size=32, batch_size=8, out=tmp_path / "run", verbose=0)
    images = load_images(sorted((tiny_images / "green").iterdir())[:4], (32, 32))
    np.save(tmp_path / "images.npy", images)
    expected = run.model.predict(images, verbose=0)
    loaded = np.array(json.loads(python(BLOCKED, str(tmp_path / "run" / "model.keras"), str(tmp_path / "images.npy"))))
    np.testing.assert_allclose(loaded, expected, atol=1e-6)


@pytest.mark.integration
def test_a_model_with_tlkit_layers_loads_once_tlkit_is_imported(tiny_images, tmp_path):
    tlkit.pretrain(data=str(tiny_images), stages={"autoencoder": {"epochs": 1}}, image_size=32, batch_size=8,
                   out=tmp_path / "ae", verbose=0)
    after = python("""
        import sys
        import keras
        import tlkit  # after Keras: registers tlkit's layers at once
        model = keras.saving.load_model(sys.argv[1])
        print(type(model.get_layer("block1_pool")).__name__)
        print(type(tlkit.load_model(sys.argv[1])).__name__)
    """, str(tmp_path / "ae" / "autoencoder.keras"))
    assert after.split() == ["MaxPoolingWithArgmax2D", "Functional"]
    before = python("""
        import sys
        import tlkit  # before Keras: no TensorFlow yet; the layers register when Keras loads
        print("tensorflow" in sys.modules)
        import keras
        print(type(keras.saving.load_model(sys.argv[1]).get_layer("block1_pool")).__name__)
    """, str(tmp_path / "ae" / "autoencoder.keras"))
    assert before.split() == ["False", "MaxPoolingWithArgmax2D"]
