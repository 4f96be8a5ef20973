"""Exports run in runtimes that have never heard of tlkit, and agree with the Keras model."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import stat
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
from tlkit.errors import TlkitError
from tlkit.evaluation.predict import predict
from tlkit.exporters import FORMATS, check_export, export
from tlkit.exporters.tflite import QUANTIZATIONS
from tlkit.jobs import run_recipe
from tlkit.models.calibration import temperature_of
from tlkit.recipe.schema import Recipe, Stage
from tlkit.rundir.load import load_run


@pytest.fixture(scope="module")
def trained_run(tiny_images, tmp_path_factory):
    """EfficientNet-Lite0 (offline ImageNet weights) with a head: a real model whose answers depend
    on its input (Keras' bases with random weights answer the same for every image at 32x32, so
    a wrong input range would go unseen)."""
    out = tmp_path_factory.mktemp("export") / "run"
    recipe = Recipe(stages=[Stage("head", epochs=3, learning_rate=1e-2)], base="efficientnet_lite0",
                    weights="imagenet", data=str(tiny_images), image_size=32, batch_size=8)
    configure(recipe)
    old = os.umask(0o027)  # a known umask, to check the modes the run's files get
    try:
        run_recipe(recipe, load_base("efficientnet_lite0", "imagenet", (32, 32)), out, verbose=0)
    finally:
        os.umask(old)
    return out


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory):
    """Each format exported once (and checked), under umask 027 to see the modes it gives."""
    out = tmp_path_factory.mktemp("exports")
    old = os.umask(0o027)
    try:
        return {name: export(trained_run, out / name, name) for name in FORMATS}
    finally:
        os.umask(old)


def validation_files(run_dir):
    recipe = load_run(run_dir).recipe
    return split(scan(recipe.data), recipe.val_split, recipe.seed)[1].files


# Runs exports in their own runtimes; must not import tlkit. argv: images.npy out.npy then
# (format, path) pairs; savedmodel is fed the image files' bytes (its serving_default), the
# others the decoded float32 pixels in images.npy. Writes each one's probabilities in label order.
RUNTIMES = textwrap.dedent("""
    import os, sys
    import numpy as np
    images, out, *pairs = sys.argv[1:]
    x = np.load(images)
    results = []
    for kind, path in zip(pairs[::2], pairs[1::2]):
        if kind == "savedmodel":
            import tensorflow as tf
            labels = open(os.path.join(os.path.dirname(path), "labels.txt")).read().splitlines()
            files = open(images + ".files").read().splitlines()
            serve = tf.saved_model.load(path).signatures["serving_default"]
            got = serve(image_bytes=tf.constant([open(f, "rb").read() for f in files]))
            p = np.zeros(got["probabilities"].shape, np.float32)
            for row, (classes, values) in enumerate(zip(got["classes"].numpy(), got["probabilities"].numpy())):
                p[row, [labels.index(c.decode()) for c in classes]] = values
        elif kind == "tflite":
            from ai_edge_litert.interpreter import Interpreter
            runner = Interpreter(model_path=path).get_signature_runner()
            p = np.concatenate([runner(images=image[None])["probabilities"] for image in x])
        elif kind == "openvino":
            import openvino
            core = openvino.Core()
            compiled = core.compile_model(os.path.join(path, "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            p = compiled(x)[compiled.output(0)]
        else:
            import onnxruntime
            p = onnxruntime.InferenceSession(path).run(["probabilities"], {"images": x})[0]
        results.append(p)
    assert "tlkit" not in sys.modules
    np.savez(out, *results)
""")


def run_elsewhere(tmp_path, files, image_size, exports):
    """Probabilities of each (format, path) in `exports` from a process without tlkit."""
    images = tmp_path / "images.npy"
    np.save(images, load_images(files, image_size))
    (tmp_path / "images.npy.files").write_text("".join(f"{f}\n" for f in files))
    args = [a for kind, path in exports for a in (kind, str(path))]
    subprocess.run([sys.executable, "-c", RUNTIMES, str(images), str(tmp_path / "out.npz"), *args],
                   check=True, capture_output=True)
    with np.load(tmp_path / "out.npz") as out:
        return [out[f"arr_{i}"] for i in range(len(exports))]


@pytest.mark.integration
def test_every_format_agrees_with_keras_in_its_own_runtime(trained_run, exports, tmp_path):
    files = validation_files(trained_run)
    run = load_run(trained_run)
    images = load_images(files, run.image_size)
    ours = run.model.predict(images, verbose=0)
    # the answers depend on the image and on its value range, so agreeing to 1e-5 says something
    assert ours.std(axis=0).min() > 0.01 and np.abs(run.model.predict(images / 255, verbose=0) - ours).max() > 0.01
    # and on the temperature inside the model, which every format must carry
    temperature = temperature_of(run.model)
    assert temperature is not None and abs(temperature - 1) > 0.05
    targets = list(exports.items())
    for (kind, _), theirs in zip(targets, run_elsewhere(tmp_path, files, run.image_size, targets)):
        # TFLite's own kernels differ from TensorFlow's by about 1e-5 of a probability (1.05e-5 seen)
        np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=5e-5 if kind == "tflite" else 0, err_msg=kind)


@pytest.mark.integration
def test_savedmodel_serves_raw_bytes_and_sorts_its_answer(trained_run, exports, tiny_images):
    target = exports["savedmodel"]
    assert target.name == "1" and (target / "saved_model.pb").is_file()
    images = sorted(p for p in tiny_images.rglob("*") if p.is_file())[::5]
    served = subprocess.run([sys.executable, "-c", SERVE, str(target), *map(str, images)],
                            capture_output=True, text=True, check=True)
    result = json.loads(served.stdout.strip().splitlines()[-1])
    assert result["signatures"] == ["serve_images", "serving_default"]
    predictions = predict(trained_run, images, top=100)
    for prediction, classes, probabilities in zip(predictions, result["classes"], result["probabilities"]):
        assert classes == [label for label, _ in prediction.top]
        np.testing.assert_allclose(probabilities, [p for _, p in prediction.top], atol=1e-5)
    # the unknown score from the reference features the SavedModel holds, flagged by the run's threshold
    np.testing.assert_allclose(result["unknown_score"], [p.unknown_score for p in predictions], atol=1e-5)
    assert result["unknown"] == [p.unknown for p in predictions]


SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([open(p, "rb").read() for p in sys.argv[2:]]))
    assert "tlkit" not in sys.modules
    print(json.dumps({"classes": [[c.decode() for c in row] for row in out["classes"].numpy()],
                      "probabilities": out["probabilities"].numpy().tolist(),
                      "unknown_score": out["unknown_score"].numpy().tolist(),
                      "unknown": out["unknown"].numpy().tolist(),
                      "signatures": sorted(loaded.signatures.keys())}))
""")


def test_an_existing_version_is_never_overwritten(trained_run, tmp_path):
    (tmp_path / "e" / "1").mkdir(parents=True)
    with pytest.raises(TlkitError, match="exists"):
        export(trained_run, tmp_path / "e")
    assert list((tmp_path / "e" / "1").iterdir()) == []


def test_quantization_is_for_tflite_only(trained_run, tmp_path):
    with pytest.raises(TlkitError, match="--quantize int8 is for tflite exports, not onnx"):
        export(trained_run, tmp_path, "onnx", quantize="int8")
    with pytest.raises(TlkitError, match="unknown quantization 'int4': tflite takes none, dynamic, float16, int8"):
        export(trained_run, tmp_path, "tflite", quantize="int4")
    assert QUANTIZATIONS == FORMATS.get("tflite").quantizations


@pytest.mark.integration
def test_the_check_compares_on_the_validation_images(trained_run, exports):
    for name, target in exports.items():
        check = check_export(trained_run, target, name)
        assert check.images == len(validation_files(trained_run)) == 6
        assert check.agree == 6 and check.max_diff < 1e-4, name
        assert str(check).startswith("top-1 agreement 6/6  max |Δp| ")
    size = {name: sum(p.stat().st_size for p in [target, *target.rglob("*")] if p.is_file())
            for name, target in exports.items()}
    assert size["savedmodel"] < 1.3 * size["tflite"]  # the weights are saved once


@pytest.mark.integration
def test_onnx_names_its_output_batch_and_labels(exports):
    import onnx

    proto = onnx.load(exports["onnx"])
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [32, 32, 3]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["labels"]) == ["blue", "green", "red"] and props["input_range"] == "[0, 255]"
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17


@pytest.mark.integration
def test_openvino_is_checked_at_float32_whatever_the_cpu_defaults_to(trained_run, exports):
    import openvino

    from tlkit.exporters.openvino import FLOAT32, GRAPH

    core = openvino.Core()
    model = core.read_model(exports["openvino"] / GRAPH)
    assert [tuple(i.get_partial_shape().to_string().strip("[]").split(",")) for i in model.inputs] == [
        ("?", "32", "32", "3")]
    assert str(core.compile_model(model, "CPU", FLOAT32).get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    print(f"openvino: {check_export(trained_run, exports['openvino'], 'openvino')}")


@pytest.mark.integration
def test_tflite_carries_metadata_and_labels(exports):
    import zipfile

    from tensorflow.lite.python import schema_py_generated as schema

    path = exports["tflite"]
    data = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    (entry,) = [m for m in model.metadata if m.name == b"TFLITE_METADATA"]
    metadata = bytes(model.buffers[entry.buffer].data)
    assert metadata[4:8] == b"M001" and b"[0, 255]" in metadata and b"labels.txt" in metadata
    with zipfile.ZipFile(path) as archive:
        assert archive.read("labels.txt") == b"blue\ngreen\nred\n"
    assert (path.parent / "labels.txt").read_text() == "blue\ngreen\nred\n"
    signature = model.signatureDefs[0]
    assert [t.name for t in signature.outputs] == [b"probabilities"]
    assert [t.name for t in signature.inputs] == [b"images"]


@pytest.mark.integration
def test_export_files_get_the_modes_of_ordinary_files(exports):
    paths = [p for target in exports.values() for p in [target.parent, *target.parent.rglob("*")]]
    assert len(paths) > 10
    for path in paths:
        want = 0o750 if path.is_dir() else 0o640
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_run_files_get_the_modes_of_ordinary_files(trained_run):
    paths = [trained_run, *trained_run.rglob("*")]
    assert {"model.keras", "labels.txt", "recipe.toml", "metrics.json"} <= {p.name for p in paths}
    for path in paths:  # written under umask 027
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path


# --- the decoder contract -------------------------------------------------------------------


def encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    return image_bytes(Image.fromarray(pixels), fmt, **options)


def image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def bmp4(image: Image.Image) -> bytes:
    """A 4-bit BMP (Pillow writes none) of a palette image of at most 16 colours."""
    import struct

    indices = np.asarray(image)
    height, width = indices.shape
    stride = (width * 4 + 31) // 32 * 4
    rows = b""
    for row in indices[::-1]:  # bottom row first
        padded = np.zeros(stride * 2, np.uint8)
        padded[:width] = row
        rows += bytes((padded[0::2] << 4) | padded[1::2])
    rgb = np.asarray(image.getpalette()[:48], np.uint8).reshape(16, 3)
    palette = b"".join(bytes([b, g, r, 0]) for r, g, b in rgb)
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 4, 0, len(rows), 2835, 2835, 16, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def test_serving_decodes_what_predict_decodes_and_names_what_it_refuses(trained_run, tiny_images, tmp_path):
    import tensorflow as tf

    from tlkit.exporters._decode import decode_batch

    pixels = np.asarray(Image.open(tiny_images / "red" / "0.png").convert("RGB"))
    rgb = Image.fromarray(pixels)
    taken = {"png": encoded(pixels, "PNG"), "jpg": encoded(pixels, "JPEG", quality=95), "bmp": encoded(pixels, "BMP"),
             "gif": encoded(pixels, "GIF"), "webp": encoded(pixels, "WEBP", lossless=True),
             "rgba.bmp": encoded(np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)]), "BMP"),
             "p8.bmp": image_bytes(rgb.quantize(16), "BMP"), "l8.bmp": image_bytes(rgb.convert("L"), "BMP"),
             "p1.bmp": image_bytes(rgb.convert("1"), "BMP"), "p4.bmp": bmp4(rgb.quantize(16))}
    bits = {name: data[28] for name, data in taken.items() if name.endswith("bmp")}
    assert bits == {"bmp": 24, "rgba.bmp": 32, "p8.bmp": 8, "l8.bmp": 8, "p1.bmp": 1, "p4.bmp": 4}
    for name, data in taken.items():
        (tmp_path / f"image.{name}").write_bytes(data)
    files = [tmp_path / f"image.{name}" for name in taken]
    for channels in (3, 1):
        served = decode_batch(tf.constant(list(taken.values())), (24, 24), channels).numpy()
        np.testing.assert_allclose(served, load_images(files, (24, 24), channels), atol=1e-3, err_msg=str(channels))

    palette = taken["p8.bmp"]
    rle = palette[:30] + (1).to_bytes(4, "little") + palette[34:]  # compression: RLE8
    batch = [taken["png"], rle, b"", taken["jpg"], encoded(pixels, "TIFF"), taken["png"][:60]]
    served = tf.function(lambda data: decode_batch(data, (24, 24), 3))  # in a graph, as the server runs it
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"by 0-based index:\] \[1 2 4 5\]"):
        served(tf.constant(batch))


MEDIAPIPE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from PIL import Image
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=sys.argv[1]), max_results=10)
    results = []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in sys.argv[2:]:
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.asarray(Image.open(path).convert("RGB")))
            categories = classifier.classify(image).classifications[0].categories
            results.append({c.category_name: c.score for c in categories})
    assert "tlkit" not in sys.modules
    print(json.dumps(results))
""")


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None, reason="MediaPipe is not installed")
def test_mediapipe_image_classifier_names_the_classes(trained_run, exports, tmp_path):
    """MediaPipe Tasks reads the labels and the input normalisation from the metadata alone."""
    path = tmp_path / "model.tflite"  # without labels.txt beside it: the labels travel inside the file
    path.write_bytes(exports["tflite"].read_bytes())
    files = validation_files(trained_run)
    out = subprocess.run([sys.executable, "-c", MEDIAPIPE, str(path), *map(str, files)],
                         capture_output=True, text=True, check=True)
    run = load_run(trained_run)
    ours = run.model.predict(load_images(files, run.image_size), verbose=0)
    for theirs, mine in zip(json.loads(out.stdout.strip().splitlines()[-1]), ours):
        assert sorted(theirs) == run.labels
        np.testing.assert_allclose([theirs[label] for label in run.labels], mine, atol=1e-4)


@pytest.mark.integration
def test_tflite_export_prints_a_few_lines(trained_run, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tlkit.cli", "export", "--model", str(trained_run), "--format",
                           "tflite", "--out", str(tmp_path), "--checkpoint", "best"],
                          capture_output=True, text=True, check=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) <= 3, lines  # the model used, the scan of the validation images, then the answer
    assert lines[0].startswith(f"model: {trained_run / 'checkpoints' / 'best.keras'} (best: ")
    assert lines[-1].startswith(f"{tmp_path / 'model.tflite'}  ")
    assert " MB  tflite  top-1 agreement 6/6  max |Δp| " in lines[-1]


def test_quiet_hides_what_python_and_c_print_unless_the_block_fails(capfd):
    from tlkit.exporters._export import quiet

    with quiet():
        print("from python")
        print("to stderr", file=sys.stderr)
        os.write(2, b"from C\n")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(ValueError), quiet():
        os.write(1, b"why it failed\n")
        raise ValueError
    assert capfd.readouterr().err == "why it failed\n"
    with quiet(False):
        os.write(1, b"shown\n")
    assert capfd.readouterr().out == "shown\n"
