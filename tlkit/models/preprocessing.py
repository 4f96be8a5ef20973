"""The preprocessing a base expects, as core Keras layers inside the base.

Every tlkit base takes float32 RGB images in [0, 255]; its first layer, named "preprocessing",
maps them to what the base was trained on. It is built from core Keras layers so that a run's
`model.keras` loads with Keras alone (no tlkit), in safe mode. Modes, as in
`keras.applications.imagenet_utils.preprocess_input`:

- "caffe": BGR order, ImageNet mean subtracted (VGG, ResNet v1): a frozen Dense layer on the
  channel axis whose kernel reverses the channels and whose bias subtracts the mean. Each output
  is one input times 1 plus zeros, then the bias: the same float32 numbers as flip-and-subtract.
- "tf": [-1, 1]; "torch": [0, 1], then ImageNet mean and std per channel (DenseNet);
  "lite": (x - 127) / 128, as TF trained EfficientNet-Lite ("tf" is 0.4% off); "unit": [0, 1]:
  a Rescaling layer each (per-channel scale and offset for "torch").
- "none": the Keras model has its own preprocessing inside: an Identity layer.
"""
from __future__ import annotations

import keras
import numpy as np

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # ImageNet, on the [0, 255] scale
_TORCH_MEAN = np.array((0.485, 0.456, 0.406))
_TORCH_STD = np.array((0.229, 0.224, 0.225))
MODES = ("caffe", "tf", "torch", "lite", "unit", "none")
NAME = "preprocessing"


def preprocessing_layer(mode: str, name: str = NAME) -> keras.layers.Layer:
    if mode == "caffe":
        flip = keras.layers.Dense(3, name=name, trainable=False)
        flip.build((None, 3))
        flip.set_weights([np.eye(3, dtype=np.float32)[::-1], -np.array(_CAFFE_MEAN_BGR, np.float32)])
        return flip
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=name)
    if mode == "torch":
        return keras.layers.Rescaling((1 / (255 * _TORCH_STD)).tolist(), offset=(-_TORCH_MEAN / _TORCH_STD).tolist(),
                                      name=name)
    if mode == "lite":
        return keras.layers.Rescaling(1 / 128, offset=-127 / 128, name=name)
    if mode == "unit":
        return keras.layers.Rescaling(1 / 255, name=name)
    if mode == "none":
        return keras.layers.Identity(name=name)
    raise ValueError(f"unknown preprocessing mode {mode!r}; one of {MODES}")


def is_bgr(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a preprocessing that puts channels in BGR order (caffe mode)."""
    if isinstance(layer, ImagePreprocessing):
        return layer.mode == "caffe"
    return layer.name == NAME and isinstance(layer, keras.layers.Dense)


@keras.saving.register_keras_serializable(package="tlkit")
class ImagePreprocessing(keras.layers.Layer):
    """The preprocessing layer of tlkit 0.1, kept so that runs saved by it still load; new
    bases use `preprocessing_layer`, which needs no tlkit to load."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; one of {MODES}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            return keras.ops.flip(x, axis=-1) - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        if self.mode == "unit":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
