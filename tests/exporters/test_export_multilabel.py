"""A multi-label run exports like any other: every format agrees with Keras on its sigmoid
probabilities, and the SavedModel says which labels reach their thresholds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

import tlkit
from tlkit.exporters import FORMATS, check_export, export

pytestmark = pytest.mark.integration  # every format converted, each in its runtime: minutes on 2 cores


@pytest.fixture(scope="module")
def multilabel_run(tiny_images, tmp_path_factory):
    """EfficientNet-Lite0 with a sigmoid head on the tiny images, labelled with their colour and,
    for two of the three colours, "warm"."""
    root = tmp_path_factory.mktemp("multilabel")
    rows = [{"path": str(f), "label": f.parent.name + ("|warm" if f.parent.name in ("red", "green") else "")}
            for f in sorted(tiny_images.glob("*/*.png"))]
    (root / "tags.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tlkit.finetune("efficientnet_lite0", str(root / "tags.jsonl"), recipe="head_only", task="multilabel",
                   image_root="/", image_size=32, batch_size=8, stages={"head": {"epochs": 3, "learning_rate": 1e-2}},
                   out=root / "run", verbose=0)
    return root / "run"


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_agrees_with_keras_on_multilabel_probabilities(multilabel_run, tmp_path, name):
    target = export(multilabel_run, tmp_path / name, name, check=False)
    check = check_export(multilabel_run, target, name)
    assert check.images > 0 and check.max_diff <= 1e-5, check


def test_savedmodel_serves_the_labels_above_their_thresholds(multilabel_run, tiny_images, tmp_path):
    target = export(multilabel_run, tmp_path / "sm", "savedmodel", check=False)
    thresholds = json.loads((multilabel_run / "thresholds.json").read_text())
    image = tiny_images / "red" / "0.png"
    got = tf.saved_model.load(str(target)).signatures["serving_default"](image_bytes=tf.constant([image.read_bytes()]))
    classes = [c.decode() for c in got["classes"].numpy()[0]]
    above = got["above_threshold"].numpy()[0]
    probabilities = got["probabilities"].numpy()[0]
    assert list(above) == [p >= thresholds[c] for c, p in zip(classes, probabilities)]
    assert np.all(np.diff(probabilities) <= 0) and len(classes) == 4


def test_onnx_and_tflite_carry_the_thresholds_in_their_metadata(multilabel_run, tmp_path):
    import onnx
    from tensorflow.lite.python import schema_py_generated as schema

    thresholds = json.loads((multilabel_run / "thresholds.json").read_text())
    proto = onnx.load(export(multilabel_run, tmp_path / "onnx", "onnx", check=False))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["thresholds"]) == pytest.approx(thresholds, abs=1e-6)
    assert "sigmoid" in props["output"]

    data = export(multilabel_run, tmp_path / "tflite", "tflite", check=False).read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    (entry,) = [m for m in model.metadata if m.name == b"TFLITE_METADATA"]
    metadata = bytes(model.buffers[entry.buffer].data).decode("utf-8", "replace")
    carried = json.loads(metadata[metadata.index("validation: {") + len("validation: "):].split("}")[0] + "}")
    assert carried == pytest.approx(thresholds, abs=1e-6)
