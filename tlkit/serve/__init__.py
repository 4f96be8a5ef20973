"""`tlkit serve RUN`: TF Serving's REST API and a page to try the model, on this machine (see
`tlkit.serve.app`). Needs the `serve` extra (Starlette and uvicorn), imported when it starts."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tlkit.errors import TlkitError

log = logging.getLogger(__name__)
DEFAULT_PORT = 8501  # TF Serving's REST port


def serve(model: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, name: str | None = None,
          savedmodel: str | Path | None = None, max_request_mb: float = 32.0) -> None:
    """Serve the run at `model` until interrupted: its SavedModel (`savedmodel`, or its export made
    now) under the model name `name` (default: the run folder's name), bound to `host`."""
    try:
        import uvicorn

        from tlkit.serve.app import load, make_app
    except ImportError as err:
        raise TlkitError(f"tlkit serve needs {err.name}: pip install 'tlkit[serve]'") from err
    if max_request_mb <= 0:
        raise TlkitError(f"--max-request-mb must be positive, got {max_request_mb}")
    with tempfile.TemporaryDirectory(prefix="tlkit-serve-") as workdir:
        served = load(model, name, savedmodel, Path(workdir))
        app = make_app(served, int(max_request_mb * 1e6))
        shown = f"[{host}]" if ":" in host else host
        log.info("serving %s at http://%s:%d/ (the page), REST: POST http://%s:%d/v1/models/%s:predict; Ctrl-C stops",
                 served.name, shown, port, shown, port, served.name)
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning")
        except SystemExit as err:  # uvicorn exits when it cannot bind
            raise TlkitError(f"cannot listen on {host}:{port} (in use, or not an address here): pass --port or --host"
                             ) from err
