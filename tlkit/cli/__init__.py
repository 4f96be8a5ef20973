"""The `tlkit` command line, one module per group of commands (ARCHITECTURE.md). Importing this
package registers every command on the `cli` group; `main` is the `tlkit` entry point."""
from tlkit.cli import audit, data, evaluate, experiments, export, info, serve, train  # noqa: F401  (register their commands)
from tlkit.cli._app import cli, main  # noqa: F401
