"""The canon's layers that Keras lacks, and the lecture formulas for sizes and parameters.

Transposed, dilated, grouped, 1x1 and depthwise-separable convolutions are Keras' own
(`Conv2DTranspose`, `Conv2D(dilation_rate=...)`, `Conv2D(groups=...)`, `SeparableConv2D`); only
Local Response Normalization and max-pooling with switches / max-unpooling are missing there.
Also here: `HubLayer`, Keras' `TFSMLayer` made fit to fine-tune and reload (bases from TF Hub).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import keras
import tensorflow as tf

from tlkit._util.keras_internals import in_safe_mode
from tlkit.errors import TlkitError


def conv_output_size(w: int, f: int, p: int, s: int, dilation: int = 1) -> int:
    """Output side of a convolution or pooling: `(W - F + 2P) / S + 1`.

    A dilated kernel covers `dilation * (F - 1) + 1` inputs. The division floors, as Keras and
    TensorFlow do when the stride does not fit the input evenly.
    """
    span = dilation * (f - 1) + 1
    return (w - span + 2 * p) // s + 1


def conv_params(f: int, c: int, k: int, bias: bool = True, groups: int = 1) -> int:
    """Parameters of a conv layer of `k` FxF kernels over `c` channels: `(F*F*C + 1) * K`.

    With `groups`, each kernel sees only `c / groups` of the input channels.
    """
    return f * f * (c // groups) * k + (k if bias else 0)


def dense_params(n: int, m: int) -> int:
    """Parameters of a dense layer from `n` to `m` units: `(n + 1) * m`."""
    return (n + 1) * m


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


@keras.saving.register_keras_serializable(package="tlkit")
class LocalResponseNormalization(keras.layers.Layer):
    """Local Response Normalization across channels, AlexNet's formula (Krizhevsky 2012, 3.3):

        b[i] = a[i] / (k + alpha * sum_{j=i-n//2}^{i+n//2} a[j]^2) ** beta

    where the sum runs over the `n` channels centred on channel i (clipped at the edges).
    alpha multiplies the plain sum, as in the paper and `tf.nn.local_response_normalization`
    (its `depth_radius` is n // 2); Caffe's LRN divides alpha by n instead, so Caffe's
    `alpha=1e-4, local_size=5` is `alpha=2e-5, n=5` here. Defaults are AlexNet's.
    """

    def __init__(self, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75, **kwargs):
        super().__init__(**kwargs)
        if n < 1 or n % 2 == 0:
            raise ValueError(f"LRN size n must be a positive odd number of channels, got {n}")
        self.n = n
        self.k = k
        self.alpha = alpha
        self.beta = beta

    def call(self, x):
        return tf.nn.local_response_normalization(
            x, depth_radius=self.n // 2, bias=self.k, alpha=self.alpha, beta=self.beta
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "n": self.n, "k": self.k, "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package="tlkit")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """Max-pooling that also returns the "switches": where in its input each maximum was.

    Returns `[pooled, switches]`; `switches` (int64, same shape as `pooled`) holds the flat index
    `(y * width + x) * channels + c` of each maximum within its own example, which is what
    `MaxUnpooling2D` needs to put values back. Keras' MaxPooling2D does not expose the indices.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding: str = "valid", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _pair(pool_size)
        self.strides = _pair(strides or pool_size)
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.padding = padding
        # XLA has no kernel for MaxPoolWithArgmax.
        self.supports_jit = False

    def call(self, x):
        pooled, switches = tf.nn.max_pool_with_argmax(
            x, self.pool_size, self.strides, self.padding.upper(), include_batch_in_index=False
        )
        return [pooled, switches]

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": self.pool_size,
            "strides": self.strides,
            "padding": self.padding,
        }


@keras.saving.register_keras_serializable(package="tlkit")
class MaxUnpooling2D(keras.layers.Layer):
    """Puts each pooled value back where its maximum came from, zeros elsewhere (Zeiler 2013).

    Called on `[pooled, switches]` from `MaxPoolingWithArgmax2D`, it returns a map of
    `size` times the pooled height and width. When the pooled map's sides were not multiples of
    the stride, pass the map that was pooled as a third input, `[pooled, switches, before]`:
    the switches count positions in rows of its width, and the output takes its shape.
    The gradient reaches the pooled values at their switch positions.
    """

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.size = _pair(size)

    def call(self, inputs):
        values, switches = inputs[0], inputs[1]
        shape = tf.shape(values)
        batch, channels = shape[0], shape[3]
        if len(inputs) > 2:
            height, width = tf.shape(inputs[2])[1], tf.shape(inputs[2])[2]
        else:
            height, width = shape[1] * self.size[0], shape[2] * self.size[1]
        per_example = tf.cast(height * width * channels, switches.dtype)
        offsets = tf.reshape(tf.range(tf.cast(batch, switches.dtype)) * per_example, (-1, 1, 1, 1))
        indices = tf.reshape(switches + offsets, (-1, 1))
        flat = tf.zeros(tf.cast(batch, switches.dtype) * per_example, dtype=values.dtype)
        # An update, not a sum: overlapping windows can pick the same maximum twice.
        flat = tf.tensor_scatter_nd_update(flat, indices, tf.reshape(values, (-1,)))
        return tf.reshape(flat, tf.stack([batch, height, width, channels]))

    def compute_output_shape(self, input_shapes):
        values = input_shapes[0]
        if len(input_shapes) > 2:
            return (values[0], *input_shapes[2][1:3], values[3])
        height, width = (None if d is None else d * s for d, s in zip(values[1:3], self.size))
        return (values[0], height, width, values[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


# --- SavedModels as layers -------------------------------------------------------------

TRUST_ENV = "TLKIT_TRUSTED_SAVEDMODELS"

_trusted_savedmodels: set[Path] = set()  # SavedModels the user named as a base in this process


def trust_savedmodel(path: str | Path) -> None:
    """Trust the SavedModel at `path` for the rest of the process (the user named it as a base)."""
    _trusted_savedmodels.add(Path(path).resolve())


def is_trusted(path: str | Path) -> bool:
    path = Path(path).resolve()
    folders = [Path(p).resolve() for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p]
    return path in _trusted_savedmodels or any(path == f or f in path.parents for f in folders)


@keras.saving.register_keras_serializable(package="tlkit")
class HubLayer(keras.layers.TFSMLayer):
    """`keras.layers.TFSMLayer` that can be fine-tuned and reloaded.

    Where TFSMLayer falls short (Keras 3.15):
    - it names its variables after TF's (`conv/kernel:0` -> `conv_kernel:0`); the ':' is not
      valid in a name scope, so the optimizer fails on the first training step;
    - a signature returns a dict even for one output, which no head can take;
    - it never loads in safe mode; this layer does for a SavedModel the user trusts: one named as a
      base in this process, or one inside a folder listed in $TLKIT_TRUSTED_SAVEDMODELS.
    The Keras variables wrap the SavedModel's own, so training them is training the SavedModel.
    """

    def _add_existing_weight(self, weight):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", weight.name.split(":")[0])
        self._track_variable(keras.Variable(weight, trainable=weight.trainable, name=name))

    def call(self, inputs, training=False):
        outputs = super().call(inputs)
        if isinstance(outputs, dict):
            if len(outputs) != 1:
                raise TlkitError(
                    f"the SavedModel {self.filepath} returns {len(outputs)} outputs ({', '.join(outputs)}); "
                    "a base must return one tensor of features"
                )
            (outputs,) = outputs.values()
        return outputs

    @classmethod
    def from_config(cls, config, custom_objects=None, safe_mode=None):
        path = config["filepath"]
        if in_safe_mode() and not is_trusted(path):
            raise TlkitError(
                f"this model runs the TF Hub SavedModel {path}, whose graph is a program from outside the "
                f".keras file: if you trust it, set {TRUST_ENV}={path} and run again"
            )
        if not Path(path, "saved_model.pb").is_file():
            raise TlkitError(
                f"this model runs the TF Hub SavedModel {path}, which is gone: put the SavedModel back there"
            )
        return cls(**config)
