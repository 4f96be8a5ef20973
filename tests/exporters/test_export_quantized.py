"""Quantized TFLite keeps the answers of a real pretrained model (EfficientNet-Lite0, offline
weights), checked in the LiteRT interpreter in a process without tlkit. Slow: four conversions."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tlkit.bases import load_base
from tlkit.data.folders import scan
from tlkit.data.pipeline import load_images
from tlkit.data.splits import split
from tlkit.engine.strategy import configure
from tlkit.exporters import check_export, export
from tlkit.jobs import run_recipe
from tlkit.recipe.schema import Recipe, Stage
from tlkit.rundir.load import load_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    """EfficientNet-Lite0 with a head trained on 48 coloured-pattern images; half are validation."""
    from conftest import TINY_CLASSES, tiny_image

    root = tmp_path_factory.mktemp("quantize_images")
    rng = np.random.default_rng(3)
    for label, name in enumerate(TINY_CLASSES):
        (root / name).mkdir()
        for i in range(16):
            Image.fromarray(tiny_image(label, rng)).save(root / name / f"{i}.png")
    out = tmp_path_factory.mktemp("quantize") / "run"
    recipe = Recipe(stages=[Stage("head", epochs=8, learning_rate=0.05)], base="efficientnet_lite0",
                    weights="imagenet", data=str(root), image_size=32, batch_size=8, val_split=0.5)
    configure(recipe)
    run_recipe(recipe, load_base("efficientnet_lite0", "imagenet", (32, 32)), out, verbose=0)
    return out


LITERT = textwrap.dedent("""
    import sys
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    x = np.load(sys.argv[1])
    out = {}
    for i, path in enumerate(sys.argv[3:]):
        runner = Interpreter(model_path=path).get_signature_runner()
        out[str(i)] = np.concatenate([runner(images=image[None])["probabilities"] for image in x])
    assert "tlkit" not in sys.modules
    np.savez(sys.argv[2], **out)
""")


def test_quantized_tflite_keeps_the_top_class(lite_run, tmp_path):
    run = load_run(lite_run)
    val = split(scan(run.recipe.data), run.recipe.val_split, run.recipe.seed)[1].files
    images = load_images(val, run.image_size)
    ours = run.model.predict(images, verbose=0)
    assert (ours.argmax(1) == np.repeat([0, 1, 2], 8)).mean() >= 0.9  # a model worth quantizing

    done = {q: export(lite_run, tmp_path / q, "tflite", quantize=q, calibration_images=24)
            for q in ("none", "dynamic", "float16", "int8")}
    np.save(tmp_path / "x.npy", images)
    subprocess.run([sys.executable, "-c", LITERT, str(tmp_path / "x.npy"), str(tmp_path / "p.npz"),
                    *map(str, done.values())], check=True, capture_output=True)
    with np.load(tmp_path / "p.npz") as theirs:
        agreement = {q: float((theirs[str(i)].argmax(1) == ours.argmax(1)).mean()) for i, q in enumerate(done)}
        np.testing.assert_allclose(theirs["0"], ours, atol=1e-4)
    assert agreement["dynamic"] >= 0.95 and agreement["float16"] >= 0.95 and agreement["int8"] >= 0.90, agreement
    for q, path in done.items():  # the export's own check sees the same
        check = check_export(lite_run, path, "tflite")
        assert check.images == 24 and check.agree / 24 == pytest.approx(agreement[q])
    size = {q: path.stat().st_size for q, path in done.items()}
    assert size["dynamic"] < 0.35 * size["none"] and size["int8"] < 0.35 * size["none"]
    assert 0.45 * size["none"] < size["float16"] < 0.55 * size["none"]
