"""The server of `tlkit serve RUN`: TF Serving's REST API on the run's SavedModel export, and a
page to try the model in a browser.

- `POST /v1/models/NAME:predict`: TF Serving's request and response formats, row (`{"instances":
  [{"b64": ...}, ...]}` -> `{"predictions": [{"classes": [...], "probabilities": [...]}, ...]}`)
  and columnar (`{"inputs": ...}` -> `{"outputs": {...}}`); an entry may also be
  `{"image_bytes": {"b64": ...}}`, the signature's input by name. Every output of the signature is
  passed through (a model with an unknown detector adds `unknown_score` and `unknown`).
  A bad request gets a 400 with `{"error": ...}` naming the entry by its index, as TF Serving
  answers; the server stays up.
- `GET /v1/models/NAME` (and `/versions/1`): the model's status, as TF Serving gives it.
- `GET /`: the page (tlkit/serve/page.html); `POST /tlkit/gradcam` gives it a Grad-CAM overlay.

The SavedModel is the run's export (`tlkit export`), written to a temporary folder when the server
starts, or one given (`savedmodel`): a client written against this server moves to TF Serving
unchanged. Starlette (the framework under FastAPI) and uvicorn serve it.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tlkit.errors import TlkitError

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")
DEFAULT_MAX_MB = 32.0
INPUT = "image_bytes"  # the serving signature's input (tlkit.exporters.savedmodel)


class BadRequest(Exception):
    """A request the server answers with `status` and `{"error": message}`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Model:
    """What the server serves: the SavedModel's signature and, for the page's Grad-CAM, the run."""

    name: str
    signature: object  # the SavedModel's serving_default concrete function
    run: object  # tlkit.rundir.load.Run
    gradcam_layer: str | None
    gradcam_why: str  # why there is no Grad-CAM, when there is none


def load(model: str | Path, name: str | None, savedmodel: str | Path | None, workdir: Path) -> Model:
    """The run at `model` and its SavedModel (`savedmodel`, or its export into `workdir`)."""
    import tensorflow as tf

    from tlkit.evaluation.gradcam import gradcam_layer
    from tlkit.exporters import export
    from tlkit.rundir.files import RunDir
    from tlkit.rundir.load import load_run

    run = load_run(model)
    if savedmodel is None:
        savedmodel = export(model, workdir, "savedmodel", check=False)
    elif not (Path(savedmodel) / "saved_model.pb").is_file():
        raise TlkitError(f"--savedmodel {savedmodel} is not a SavedModel folder (no saved_model.pb): pass the "
                         "version folder `tlkit export` wrote (OUT/1)")
    signatures = tf.saved_model.load(str(savedmodel)).signatures
    if "serving_default" not in signatures:
        raise TlkitError(f"the SavedModel {savedmodel} has no serving_default signature: export the run with tlkit")
    signature = signatures["serving_default"]
    if list(signature.structured_input_signature[1]) != [INPUT]:
        raise TlkitError(f"the SavedModel {savedmodel} takes {list(signature.structured_input_signature[1])}, not "
                         f"{INPUT}: serve a SavedModel `tlkit export` wrote")
    try:
        layer, why = gradcam_layer(run.model, RunDir(run.path).read_blocks()), ""
    except TlkitError as err:
        layer, why = None, str(err)
    return Model(name or Path(model).resolve().name, signature, run, layer, why)


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past `limit` bytes, before it is all read."""
    too_big = BadRequest(f"the request is larger than {limit / 1e6:g} MB: send fewer or smaller images, or start "
                         "the server with a larger --max-request-mb", 413)
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _decoded(entry, where: str) -> bytes:
    """The image bytes of one entry, `{"b64": ...}` or `{"image_bytes": {"b64": ...}}`."""
    if isinstance(entry, dict) and set(entry) == {INPUT}:
        entry = entry[INPUT]
    if not (isinstance(entry, dict) and set(entry) == {"b64"} and isinstance(entry["b64"], str)):
        raise BadRequest(f'{where}: expected {{"b64": BASE64 OF AN IMAGE FILE}}, got {json.dumps(entry)[:80]}')
    try:
        return base64.b64decode(entry["b64"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRequest(f"{where}: not base64 ({err})") from err


def parse(payload) -> tuple[list[bytes], bool]:
    """The image bytes of a predict request, and whether it is columnar ("inputs")."""
    if not isinstance(payload, dict) or len({"instances", "inputs"} & set(payload)) != 1:
        raise BadRequest('the body must be a JSON object with "instances" (a list) or "inputs", as TF Serving takes')
    columnar = "inputs" in payload
    entries = payload["inputs"] if columnar else payload["instances"]
    if columnar and isinstance(entries, dict):
        if set(entries) != {INPUT}:
            raise BadRequest(f'"inputs" names {sorted(entries)}; this model takes "{INPUT}"')
        entries = entries[INPUT]
    key = "inputs" if columnar else "instances"
    if not isinstance(entries, list) or not entries:
        raise BadRequest(f'"{key}" must be a non-empty list of {{"b64": ...}} entries')
    return [_decoded(entry, f"{key}[{i}]") for i, entry in enumerate(entries)], columnar


def _plain(value):
    """A tensor's value as JSON, as TF Serving writes it (strings as text, bytes as b64)."""
    array = value.numpy()
    if array.dtype == object:
        def text(item):
            try:
                return item.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(item).decode()}
        return np.vectorize(text, otypes=[object])(array).tolist()
    return array.tolist()


def _assertion(message: str) -> str:
    """What a failed tf.debugging.Assert in the signature says: the serving decoder names the
    entries it refused by 0-based index (tlkit.exporters._decode), under lines about graph nodes."""
    said = re.search(r"assertion failed: \[(.*?)\] \[(.*?)\]", message)
    if said:
        return f"{said.group(1)} {said.group(2).replace(' ', ', ')}"
    return " ".join(message.split())[:300]


def predict(model: Model, images: list[bytes], columnar: bool) -> dict:
    import tensorflow as tf

    try:
        outputs = model.signature(**{INPUT: tf.constant(images)})
    except tf.errors.InvalidArgumentError as err:
        raise BadRequest(_assertion(err.message)) from err
    plain = {key: _plain(value) for key, value in outputs.items()}
    if columnar:
        return {"outputs": plain}
    if len(plain) == 1:
        return {"predictions": next(iter(plain.values()))}
    return {"predictions": [{key: values[i] for key, values in plain.items()} for i in range(len(images))]}


def gradcam_png(model: Model, image: bytes) -> dict:
    """The Grad-CAM overlay of the predicted class on one image, as a PNG data URL."""
    import tensorflow as tf
    from PIL import Image

    from tlkit.data.decode import decode_image
    from tlkit.evaluation.gradcam import gradcam, overlay

    if model.gradcam_layer is None:
        return {"overlay": None, "why": model.gradcam_why}
    run = model.run
    try:
        pixels = decode_image(tf.constant(image), run.image_size, run.channels).numpy()
    except tf.errors.InvalidArgumentError as err:
        raise BadRequest(f"the image does not decode: {err.message.strip().splitlines()[0]}") from err
    heat, _ = gradcam(run.model, pixels[None], model.gradcam_layer)
    png = io.BytesIO()
    Image.fromarray((overlay(pixels, heat[0]) * 255).round().astype(np.uint8)).save(png, "PNG")
    return {"overlay": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode(), "layer": model.gradcam_layer}


def status() -> dict:
    return {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def make_app(model: Model, max_bytes: int = int(DEFAULT_MAX_MB * 1e6)) -> Starlette:
    not_found = JSONResponse({"error": f"Servable not found for request: Latest({model.name})"}, 404)

    def answered(handler):
        async def endpoint(request: Request):
            try:
                return JSONResponse(await handler(request))
            except BadRequest as err:
                log.info("%s %s: %s", request.method, request.url.path, err)
                return JSONResponse({"error": str(err)}, err.status)
        return endpoint

    async def predict_endpoint(request: Request):
        if request.path_params["name"] != model.name:
            return not_found
        return await answered(_predict)(request)

    async def _predict(request: Request) -> dict:
        try:
            payload = json.loads(await _body(request, max_bytes))
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest(f"the body is not JSON: {err}") from err
        images, columnar = parse(payload)
        return await run_in_threadpool(predict, model, images, columnar)

    async def _gradcam(request: Request) -> dict:
        try:
            payload = json.loads(await _body(request, max_bytes))
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest(f"the body is not JSON: {err}") from err
        return await run_in_threadpool(gradcam_png, model, _decoded(payload, "the image"))

    async def status_endpoint(request: Request):
        return JSONResponse(status()) if request.path_params["name"] == model.name else not_found

    page = PAGE.read_text(encoding="utf-8").replace("{{NAME}}", json.dumps(model.name))

    async def page_endpoint(request: Request):
        return HTMLResponse(page)

    return Starlette(routes=[
        Route("/", page_endpoint),
        Route("/v1/models/{name}:predict", predict_endpoint, methods=["POST"]),
        Route("/v1/models/{name}", status_endpoint),
        Route("/v1/models/{name}/versions/1", status_endpoint),
        Route("/tlkit/gradcam", answered(_gradcam), methods=["POST"]),
    ])
