"""Where a base's features are inside a classifier: a tlkit classifier's (its base nested as the
layer `base`, under its head: `head_pool` when the base gives feature maps, dropout, `head_dense`;
tlkit.engine.classifier), or any other model's, up to where its classifier begins."""
from __future__ import annotations

import keras

BASE_LAYER = "base"  # a tlkit classifier's base, a nested model
POOL_LAYER = "head_pool"  # its head's pooling; none under a base that gives vectors


def nested_base(model: keras.Model) -> keras.Model | None:
    """The base nested inside a tlkit classifier, None for any other model."""
    layer = next((layer for layer in model.layers if layer.name == BASE_LAYER), None)
    return layer if isinstance(layer, keras.Model) else None


def features_in(model: keras.Model, pooled: bool = True):
    """The base's features inside the classifier `model`, as a tensor of its graph (the model cut
    there is the base): a nested base's output; in any other model, the output of its last layer
    giving feature maps (what its classifier pools or flattens), else the input of its last Dense
    layer. `pooled`: the vectors the classifier's last layers take, the output of its head's
    pooling when the base gives feature maps; None for a model that pools or flattens them itself
    (a zoo model with its own top). None too for a model without features (no Dense layer, a
    base followed by nothing)."""
    if pooled:
        try:
            return model.get_layer(POOL_LAYER).output
        except ValueError:
            pass
    base = nested_base(model)
    if base is not None:
        after = model.layers.index(base) + 1
        # a nested base's own `output` is a tensor of its inner graph: what it gives this model is
        # the input of the layer after it (the head's first), called once, in this model
        features = model.layers[after].input if after < len(model.layers) else None
    else:
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        maps = [layer for layer in layers if len(layer.output.shape) == 4]
        dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
        features = maps[-1].output if maps else dense[-1].input if dense else None
    if features is None or isinstance(features, (list, tuple)):
        return None
    return features if not pooled or len(features.shape) == 2 else None
