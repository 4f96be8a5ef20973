"""Pretrained bases from every source, all returned as a `Base`.

A base is a Keras model without its classifier. Its input is a batch of float32 images with values
in [0, 255] (the way tlkit's data pipeline and the export signature decode them), and its
preprocessing is a layer inside it, so a saved classifier needs nothing outside itself.
Its output is either a feature map (B, h, w, c), which the head pools, or a feature vector (B, d).

Sources register a `BaseSpec` under a name in `BASES` (`tlkit.bases._registry`); spec strings
that are not names (`hub:HANDLE`, a `.keras` file, a run directory) are resolved by `load_base`
(`tlkit.bases._factory`). Importing this package imports every source, so that they register.
"""
from tlkit.bases import efficientnet_lite, keras_apps, zoo  # noqa: F401
from tlkit.bases._factory import load_base  # noqa: F401
from tlkit.bases._registry import BASES, Base, BaseSpec  # noqa: F401
