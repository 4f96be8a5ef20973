"""Imports every module that registers Keras-serializable objects, so `.keras` files reload."""
import tlkit.bases  # noqa: F401
import tlkit.bases.preprocessing  # noqa: F401
import tlkit.layers  # noqa: F401
import tlkit.models  # noqa: F401
