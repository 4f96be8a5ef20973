"""`tlkit serve`: TF Serving's REST API and a page to try a run's model, on this machine."""
from __future__ import annotations

import click

from tlkit.cli._app import cli, import_tensorflow
from tlkit.cli._options import check_model


@cli.command()
@click.argument("run", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; 0.0.0.0 lets other machines (a phone on your network) in.")
@click.option("--port", default=8501, show_default=True, help="The port (8501 is TF Serving's REST port).")
@click.option("--name", help="The model name in /v1/models/NAME  [default: the run folder's name]")
@click.option("--savedmodel", type=click.Path(), help="Serve this SavedModel export of the run (OUT/1 of `tlkit "
              "export`) instead of exporting it afresh.")
@click.option("--max-request-mb", default=32.0, show_default=True, help="Requests larger than this get a 413.")
def serve(run, host, port, name, savedmodel, max_request_mb):
    """Serve a run: POST /v1/models/NAME:predict as TF Serving takes it, and a page at / to try it."""
    check_model(run)
    import_tensorflow()
    from tlkit.serve import serve as start

    start(run, host, port, name=name, savedmodel=savedmodel, max_request_mb=max_request_mb)
