"""The preprocessing a pretrained base expects, as a layer inside the base."""
from __future__ import annotations

import keras
from keras import ops

# Per-channel statistics of ImageNet, in RGB order, on the [0, 255] scale.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
MODES = ("caffe", "tf", "torch", "lite", "unit", "none")


@keras.saving.register_keras_serializable(package="tlkit")
class ImagePreprocessing(keras.layers.Layer):
    """Maps [0, 255] RGB images to what a base was trained on.

    Modes, as in `keras.applications.imagenet_utils.preprocess_input`: "caffe" (BGR, ImageNet
    mean subtracted), "tf" ([-1, 1]), "torch" ([0, 1], then ImageNet mean and std), plus
    "lite" ((x - 127) / 128, as TF trained EfficientNet-Lite: "tf" is 0.4% off), "unit" ([0, 1])
    and "none". A layer of our own rather than a Lambda, because Lambda layers only reload with
    safe mode off.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; one of {MODES}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
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
