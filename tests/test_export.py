"""A SavedModel export serves raw image bytes in a process that has never heard of tlkit."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tlkit.bases import load_base
from tlkit.core.run import configure
from tlkit.jobs import run_recipe
from tlkit.errors import TlkitError
from tlkit.exporters import export
from tlkit.inference import predict
from tlkit.recipe import Recipe, Stage


@pytest.fixture(scope="module")
def trained_run(tiny_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    recipe = Recipe(stages=[Stage("head", epochs=2, learning_rate=1e-2)], base="mobilenet_v2", weights="none",
                    data=str(tiny_images), image_size=32, batch_size=8)
    configure(recipe)
    run_recipe(recipe, load_base("mobilenet_v2", "none", (32, 32)), out, verbose=0)
    return out


SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    assert "tlkit" not in sys.modules
    loaded = tf.saved_model.load(sys.argv[1])
    serve = loaded.signatures["serving_default"]
    images = [open(p, "rb").read() for p in sys.argv[2:]]
    out = serve(image_bytes=tf.constant(images))
    print(json.dumps({"classes": [[c.decode() for c in row] for row in out["classes"].numpy()],
                      "probabilities": out["probabilities"].numpy().tolist(),
                      "signatures": sorted(loaded.signatures.keys()),
                      "tlkit_imported": "tlkit" in sys.modules}))
""")


def test_savedmodel_serves_raw_bytes_without_tlkit(trained_run, tiny_images, tmp_path):
    target = export(trained_run, tmp_path / "exported")
    assert target == tmp_path / "exported" / "1" and (target / "saved_model.pb").is_file()
    images = sorted(p for p in tiny_images.rglob("*") if p.is_file())[::5]
    served = subprocess.run([sys.executable, "-c", SERVE, str(target), *map(str, images)],
                            capture_output=True, text=True, check=True)
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert not result["tlkit_imported"]
    assert result["signatures"] == ["serve_images", "serving_default"]
    ours = predict(trained_run, images, top=100)
    for prediction, classes, probabilities in zip(ours, result["classes"], result["probabilities"]):
        assert classes[0] == prediction.top[0][0]
        assert classes == [label for label, _ in prediction.top]
        np.testing.assert_allclose(probabilities, [p for _, p in prediction.top], atol=1e-5)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_an_existing_version_is_never_overwritten(trained_run, tmp_path):
    (tmp_path / "e" / "1").mkdir(parents=True)
    with pytest.raises(TlkitError, match="exists"):
        export(trained_run, tmp_path / "e")
    assert list((tmp_path / "e" / "1").iterdir()) == []


def test_tflite_export_matches_the_keras_model(trained_run, tmp_path):
    import tensorflow as tf

    from tlkit.rundir import load_run

    target = export(trained_run, tmp_path / "lite", format="tflite")
    interpreter = tf.lite.Interpreter(model_path=str(target))
    interpreter.allocate_tensors()
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(lite, load_run(trained_run).model.predict(x, verbose=0), atol=1e-5)
