"""`tlkit serve` on 127.0.0.1: TF Serving's REST API gives the SavedModel's answers, bad entries get
a 400 naming them and the server goes on, and the page, driven in a real headless Chromium,
shows the class `tlkit predict` gives."""
from __future__ import annotations

import base64
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tlkit.bases import load_base
from tlkit.engine.strategy import configure
from tlkit.evaluation.predict import predict
from tlkit.jobs import run_recipe
from tlkit.recipe.schema import Recipe, Stage

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from tlkit.serve.app import load, make_app  # noqa: E402  (needs starlette, the serve extra)

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "data_samples" / "photos").rglob("*.jpg"))


pytestmark = pytest.mark.integration  # a real server, a trained run and a browser: whole runs end to end


@pytest.fixture(scope="module")
def trained_run(tiny_images, tmp_path_factory) -> Path:
    """EfficientNet-Lite0 (offline ImageNet weights) with a head: answers that depend on the image."""
    out = tmp_path_factory.mktemp("serve") / "flowers"
    recipe = Recipe(stages=[Stage("head", epochs=2, learning_rate=1e-2)], base="efficientnet_lite0",
                    weights="imagenet", data=str(tiny_images), image_size=32, batch_size=8)
    configure(recipe)
    run_recipe(recipe, load_base("efficientnet_lite0", "imagenet", (32, 32)), out, verbose=0)
    return out


class Server:
    """A uvicorn server in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    model = load(trained_run, None, None, tmp_path_factory.mktemp("export"))
    server = Server(make_app(model, max_bytes=2_000_000))
    yield model, server.url
    server.stop()


def b64(path: Path) -> dict:
    return {"b64": base64.b64encode(path.read_bytes()).decode()}


def test_rest_predict_is_the_savedmodel_in_tf_servings_format(served, tiny_images):
    model, url = served
    assert url.startswith("http://127.0.0.1:")
    files = sorted(tiny_images.rglob("*.png"))[::4]
    response = httpx.post(f"{url}/v1/models/flowers:predict", json={"instances": [b64(f) for f in files]}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    import tensorflow as tf

    expected = model.signature(image_bytes=tf.constant([f.read_bytes() for f in files]))
    # the run's model has its unknown score inside (issue 23): every output of the signature is served
    assert len(predictions) == len(files) and set(predictions[0]) == set(expected) >= {"classes", "probabilities"}
    for row, prediction in enumerate(predictions):
        assert prediction["classes"] == [c.decode() for c in expected["classes"].numpy()[row]]
        np.testing.assert_allclose(prediction["probabilities"], expected["probabilities"].numpy()[row], atol=1e-6)
    columnar = httpx.post(f"{url}/v1/models/flowers:predict", json={"inputs": {"image_bytes": [b64(files[0])]}},
                          timeout=60).json()["outputs"]
    np.testing.assert_allclose(columnar["probabilities"][0], predictions[0]["probabilities"], atol=1e-6)
    assert httpx.get(f"{url}/v1/models/flowers").json()["model_version_status"][0]["state"] == "AVAILABLE"
    assert httpx.get(f"{url}/v1/models/other").status_code == 404


def test_bad_entries_get_a_400_naming_them_and_the_server_goes_on(served, tiny_images):
    _, url = served
    good = b64(sorted(tiny_images.rglob("*.png"))[0])
    predict_url = f"{url}/v1/models/flowers:predict"
    corrupt = {"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()}
    response = httpx.post(predict_url, json={"instances": [good, corrupt, good]}, timeout=60)
    assert response.status_code == 400 and "index: 1" in response.json()["error"], response.text
    response = httpx.post(predict_url, json={"instances": [good, good, {"b64": "%%%"}]}, timeout=60)
    assert response.status_code == 400 and response.json()["error"].startswith("instances[2]: not base64")
    response = httpx.post(predict_url, json={"instances": [good, {"image": 1}]}, timeout=60)
    assert response.status_code == 400 and response.json()["error"].startswith("instances[1]: expected")
    assert httpx.post(predict_url, content=b"{not json", timeout=60).status_code == 400
    response = httpx.post(predict_url, json={"instances": [good] * 3000}, timeout=60)  # over the 2 MB limit
    assert response.status_code == 413 and "--max-request-mb" in response.json()["error"]
    response = httpx.post(predict_url, json={"instances": [good]}, timeout=60)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


def unknown_savedmodel(run_dir: Path, folder: Path) -> Path:
    """A SavedModel whose serving_default adds `unknown_score` and `unknown` (a model with an
    unknown detector): every image is called unknown."""
    import tensorflow as tf

    from tlkit.exporters.savedmodel import serving_archive
    from tlkit.rundir.load import load_run

    plain = folder / "plain"
    serving_archive(load_run(run_dir)).write_out(str(plain), verbose=False)
    loaded = tf.saved_model.load(str(plain))

    class WithUnknown(tf.Module):
        def __init__(self):
            super().__init__()
            self.loaded = loaded  # keeps the variables the signature uses
            self.serving = loaded.signatures["serving_default"]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def __call__(self, image_bytes):
            out = self.serving(image_bytes=image_bytes)
            score = 1.0 - out["probabilities"][:, 0]
            return {**out, "unknown_score": score, "unknown": score >= 0.0}

    module = WithUnknown()
    tf.saved_model.save(module, str(folder / "1"), signatures={"serving_default": module.__call__})
    return folder / "1"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=420,900"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


def upload(browser, url: str, photo: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    browser.find_element(By.ID, "pick").send_keys(str(photo))
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card .top-class, .card .error"))
    card = browser.find_element(By.CSS_SELECTOR, ".card")
    WebDriverWait(browser, 60).until(lambda b: card.find_elements(By.CSS_SELECTOR, ".gradcam, .note"))
    return card


def test_the_page_in_chromium_shows_the_class_predict_gives(served, trained_run, browser, tiny_images, tmp_path):
    from selenium.webdriver.common.by import By

    _, url = served
    photo = sorted(tiny_images.rglob("*.png"))[0]  # a training image: known, so the page shows no unknown flag
    card = upload(browser, url, photo)
    shown = card.find_element(By.CSS_SELECTOR, ".top-class").text
    assert shown == predict(trained_run, [photo], top=1)[0].top[0][0]
    rows = card.find_elements(By.CSS_SELECTOR, ".row")
    assert len(rows) == 3 and rows[0].text.startswith(shown)  # three classes, most probable first
    assert card.find_element(By.CSS_SELECTOR, ".gradcam").get_attribute("src").startswith("data:image/png;base64,")
    assert not card.find_elements(By.CSS_SELECTOR, ".unknown")
    browser.save_screenshot(str(tmp_path / "page.png"))


def test_outputs_an_unknown_detector_adds_pass_through_and_the_page_flags_them(trained_run, browser, tiny_images,
                                                                              tmp_path):
    from selenium.webdriver.common.by import By

    model = load(trained_run, "flagged", unknown_savedmodel(trained_run, tmp_path), tmp_path)
    server = Server(make_app(model))
    try:
        response = httpx.post(f"{server.url}/v1/models/flagged:predict",
                              json={"instances": [b64(sorted(tiny_images.rglob("*.png"))[0])]}, timeout=60)
        prediction = response.json()["predictions"][0]
        assert prediction["unknown"] is True and 0 <= prediction["unknown_score"] <= 1
        card = upload(browser, server.url, PHOTOS[0])
        assert card.find_element(By.CSS_SELECTOR, ".unknown").text == "unknown"
    finally:
        server.stop()
