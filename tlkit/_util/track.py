"""Which run tracker is asked for (--track, $TLKIT_TRACK), checked without TensorFlow so the CLI
tells a mistake at once; tlkit.engine.tracking does the tracking."""
from __future__ import annotations

import importlib.util
import os

from tlkit.errors import TlkitError, unknown_name

TRACKERS = ("mlflow",)


def tracker_name(track: str | None) -> str | None:
    """The tracker asked for (`track`, else $TLKIT_TRACK; "none" or unset: None), checked: its
    package installed."""
    track = track if track is not None else os.environ.get("TLKIT_TRACK")
    if not track or track == "none":
        return None
    if track not in TRACKERS:
        raise unknown_name("tracker", track, (*TRACKERS, "none"), hint="use --track mlflow")
    if importlib.util.find_spec("mlflow") is None:
        raise TlkitError("--track mlflow needs MLflow: pip install 'tlkit[track]'")
    return track
