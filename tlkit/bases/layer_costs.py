"""MACs and FLOPs of one layer, by layer class, for `tlkit inspect` (tlkit.bases.inspect, whose
docstring gives the counting convention). `register_cost` teaches it a new layer class.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import keras

from tlkit.models.layers import LocalResponseNormalization, MaxPoolingWithArgmax2D, MaxUnpooling2D
from tlkit.models.preprocessing import ImagePreprocessing, is_bgr

Shape = tuple[int, ...]  # one sample, without the batch axis


CostFn = Callable[[keras.layers.Layer, list[Shape], list[Shape]], tuple[int, int] | None]


_COSTS: dict[type, CostFn] = {}


def register_cost(*classes: type) -> Callable[[CostFn], CostFn]:
    """Register `fn(layer, input_shapes, output_shapes) -> (macs, flops)` for layer classes.

    Shapes are per sample (no batch axis). The most specific registered class of a layer wins;
    a rule may return None for a configuration it cannot count (the layer is then flagged).
    """

    def decorator(fn: CostFn) -> CostFn:
        for cls in classes:
            _COSTS[cls] = fn
        return fn

    return decorator


def layer_cost(layer) -> CostFn | None:
    return next((_COSTS[cls] for cls in type(layer).__mro__ if cls in _COSTS), None)


def size_of(shape: Shape) -> int:
    return math.prod(shape)


def _channels(layer, shape: Shape) -> int:
    return shape[0] if getattr(layer, "data_format", "channels_last") == "channels_first" else shape[-1]


def _activation_flops(activation, elements: int) -> int:
    name = getattr(activation, "__name__", str(activation))
    if name == "linear":
        return 0
    return 5 * elements if name == "softmax" else elements


def _linear(layer, macs: int, out: Shape) -> tuple[int, int]:
    """MACs and FLOPs of a weighted linear map with its bias and fused activation."""
    elements = size_of(out)
    bias = elements if layer.use_bias else 0
    return macs, 2 * macs + bias + _activation_flops(layer.activation, elements)


@register_cost(keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
def _conv(layer, ins, outs):
    return _linear(layer, size_of(outs[0]) * size_of(layer.kernel_size) * _channels(layer, ins[0]) // layer.groups, outs[0])


@register_cost(keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
def _conv_transpose(layer, ins, outs):
    return _linear(layer, size_of(ins[0]) * size_of(layer.kernel_size) * layer.filters, outs[0])


@register_cost(keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
def _depthwise(layer, ins, outs):
    return _linear(layer, size_of(outs[0]) * size_of(layer.kernel_size), outs[0])


@register_cost(keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
def _separable(layer, ins, outs):
    positions = size_of(outs[0]) // layer.filters
    depthwise_channels = _channels(layer, ins[0]) * layer.depth_multiplier
    macs = positions * depthwise_channels * (size_of(layer.kernel_size) + layer.filters)
    return _linear(layer, macs, outs[0])


@register_cost(keras.layers.Dense)
def _dense(layer, ins, outs):
    if is_bgr(layer):  # the caffe preprocessing: a channel flip and a subtraction, not a matrix product
        return 0, size_of(outs[0])
    return _linear(layer, size_of(ins[0]) * layer.units, outs[0])


def _per_element(flops_per_element: int) -> CostFn:
    return lambda layer, ins, outs: (0, flops_per_element * sum(size_of(s) for s in outs))


register_cost(
    keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute, keras.layers.RepeatVector,
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
    keras.layers.AlphaDropout, keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D, keras.layers.Cropping1D, keras.layers.Cropping2D,
    keras.layers.Cropping3D, keras.layers.Concatenate, keras.layers.Identity,
    keras.layers.ActivityRegularization,
)(_per_element(0))


register_cost(keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU)(_per_element(1))


register_cost(keras.layers.Softmax)(_per_element(5))


register_cost(keras.layers.BatchNormalization, keras.layers.Rescaling, keras.layers.Normalization)(
    _per_element(2)
)


register_cost(keras.layers.LayerNormalization, keras.layers.GroupNormalization)(_per_element(8))


@register_cost(keras.layers.Activation)
def _activation(layer, ins, outs):
    return 0, _activation_flops(layer.activation, size_of(outs[0]))


@register_cost(ImagePreprocessing)
def _preprocessing(layer, ins, outs):
    per_element = {"caffe": 1, "tf": 2, "torch": 4, "unit": 1, "none": 0}[layer.mode]
    return 0, per_element * size_of(outs[0])


@register_cost(keras.layers.UpSampling1D, keras.layers.UpSampling2D, keras.layers.UpSampling3D)
def _upsampling(layer, ins, outs):
    if getattr(layer, "interpolation", "nearest") != "nearest":
        return None
    return 0, 0


@register_cost(
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
)
def _pooling(layer, ins, outs):
    return 0, size_of(outs[0]) * size_of(layer.pool_size)


@register_cost(
    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D, keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D,
)
def _global_pooling(layer, ins, outs):
    return 0, size_of(ins[0])


@register_cost(
    keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Maximum, keras.layers.Minimum
)
def _merge(layer, ins, outs):
    return 0, (len(ins) - 1) * size_of(outs[0])


@register_cost(keras.layers.Average)
def _average(layer, ins, outs):
    return 0, len(ins) * size_of(outs[0])


@register_cost(LocalResponseNormalization)
def _lrn(layer, ins, outs):
    # per element: n squares and n - 1 adds over the window, then scale, power and divide
    return 0, (2 * layer.n + 2) * size_of(outs[0])


@register_cost(MaxPoolingWithArgmax2D)
def _pooling_with_argmax(layer, ins, outs):
    return 0, size_of(outs[0]) * size_of(layer.pool_size)


@register_cost(MaxUnpooling2D)
def _unpooling(layer, ins, outs):
    return 0, 0  # a scatter: data movement, no arithmetic
