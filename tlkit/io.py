"""Files written atomically: to a temporary name beside the target, then renamed over it, so an
interrupted run never leaves a half-written file where a whole one is expected."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, write) -> None:
    """Write through `write(tmp_path)` to a temporary name beside `path`, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_model_atomic(model, path: str | Path) -> None:
    """`model.save` (a .keras file) through `write_atomic`."""
    write_atomic(Path(path), lambda tmp: model.save(tmp))
