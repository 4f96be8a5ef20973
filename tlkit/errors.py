"""Errors a user can cause, and how they are worded."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class TlkitError(Exception):
    """A mistake the user can fix: the CLI prints its one-line message and exits non-zero."""


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> TlkitError:
    """An error for a name that is not one of `choices`, suggesting the close matches."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name.lower(), choices, n=4, cutoff=0.5)
    if close:
        tail = "did you mean " + ", ".join(close) + "?"
    else:
        tail = hint or "choose one of: " + ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return TlkitError(f"unknown {kind} '{name}': {tail}")
