import json
import math

import keras
import pytest
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tlkit.bases.inspect import format_report, inspect_model
from tlkit.errors import TlkitError


def profiler_flops(graph) -> dict[str, int]:
    """float_ops per TensorFlow op type, as tf.compat.v1.profiler counts them on `graph`."""
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    root = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    counts = {}

    def collect(node):  # the "op" view nests each op type under the previous one
        for child in node.children:
            counts[child.name] = child.float_ops
            collect(child)

    collect(root)
    return counts


def traced_graph(model):
    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)


def relu_flops(model, report) -> int:
    """The FLOPs we count for ReLU / ReLU6 (1 per element) and TensorFlow's registry counts as 0."""
    total = 0
    for row in report.rows[1:]:
        layer = model.get_layer(row.name)
        fused = getattr(getattr(layer, "activation", None), "__name__", "") == "relu"
        if isinstance(layer, keras.layers.ReLU) or fused:
            total += row.activation_bytes // report.dtype_bytes
    return total


@pytest.fixture(scope="module")
def apps():
    return {
        "vgg16": keras.applications.VGG16(weights=None),
        "resnet50": keras.applications.ResNet50(weights=None),
        "mobilenet_v2": keras.applications.MobileNetV2(weights=None),
    }


def lenet5():
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(6, 5, activation="tanh", name="c1")(inputs)
    x = keras.layers.AveragePooling2D(2, name="s2")(x)
    x = keras.layers.Conv2D(16, 5, activation="tanh", name="c3")(x)
    x = keras.layers.AveragePooling2D(2, name="s4")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(120, activation="tanh", name="f5")(x)
    x = keras.layers.Dense(84, activation="tanh", name="f6")(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="output")(x), name="lenet5")


# (name, reference MACs): VGG16 ~15.5 G, ResNet50 ~3.9 G as usually quoted, MobileNetV2 300 M (paper)
@pytest.mark.parametrize(
    "name, macs", [("vgg16", 15_470_264_320), ("resnet50", 3_857_973_248), ("mobilenet_v2", 300_774_272)]
)
def test_flops_match_tensorflow_profiler(apps, name, macs):
    """Matching means two things, at 224x224 with the ImageNet head:

    - the convolutions and dense layers agree exactly: 2 x our MACs equals the profiler's
      Conv2D + DepthwiseConv2dNative + MatMul FLOPs;
    - the totals agree within 0.05% once the ReLUs are taken out of ours (we count 1 FLOP per
      element, TensorFlow's registry has no entry for Relu/Relu6); what is left is TensorFlow also
      counting the per-channel ops that fold BatchNorm's statistics (rsqrt, sub, mul: 3 per channel).
    """
    model = apps[name]
    report = inspect_model(model)
    counts = profiler_flops(traced_graph(model).graph)
    assert report.totals["macs"] == macs
    linear = sum(counts.get(op, 0) for op in ("Conv2D", "DepthwiseConv2dNative", "MatMul"))
    assert 2 * report.totals["macs"] == linear
    assert report.totals["flops"] - relu_flops(model, report) == pytest.approx(sum(counts.values()), rel=5e-4)
    assert report.uncounted == []


def test_profiler_counts_the_same_on_a_frozen_graph(apps):
    """The usual recipe freezes the function first (convert_variables_to_constants_v2) so every
    weight is a constant of known shape; a resource variable read already has its static shape,
    so profiling the traced graph directly (as the test above does) gives the same counts without
    copying VGG16's 138M weights into a GraphDef (~35 s on the 2-core test machine)."""
    concrete = traced_graph(apps["mobilenet_v2"])
    assert profiler_flops(convert_variables_to_constants_v2(concrete).graph) == profiler_flops(concrete.graph)


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "mobilenet_v2"])
def test_parameter_totals_equal_count_params(apps, name):
    model = apps[name]
    report = inspect_model(model)
    assert report.totals["params"] == model.count_params()
    trainable = sum(int(tf.size(w)) for w in model.trainable_weights)
    assert report.totals["trainable_params"] == trainable
    assert report.rows[0].output_shapes == ((224, 224, 3),)


def test_lenet5_rows():
    report = inspect_model(lenet5())
    rows = {row.name: row for row in report.rows}
    assert (rows["c1"].params, rows["c1"].output_shapes) == (156, ((28, 28, 6),))
    assert (rows["c3"].params, rows["c3"].output_shapes) == (2416, ((10, 10, 16),))
    assert rows["s4"].output_shapes == ((5, 5, 16),)
    assert report.totals["params"] == 61_706
    # C1: 28*28 outputs x 6 maps x 5*5*1 taps; C3: 10*10 x 16 x 5*5*6
    assert rows["c1"].macs == 28 * 28 * 6 * 25 and rows["c3"].macs == 10 * 10 * 16 * 150
    # 2 per MAC, 1 bias add and 1 tanh per output
    assert rows["c1"].flops == 2 * 117_600 + 2 * 4704
    assert rows["s2"].flops == 14 * 14 * 6 * 4
    assert rows["c1"].activation_bytes == 28 * 28 * 6 * 4


def layer_cost(layer, input_shape):
    inputs = keras.Input(input_shape)
    row = inspect_model(keras.Model(inputs, layer(inputs))).rows[1]
    return row.macs, row.flops, row.output_shapes[0]


@pytest.mark.parametrize(
    "layer, input_shape, out_shape, macs",
    [
        # H_out*W_out*K*C*F*F/groups: (11-3)/2+1 = 5, 5*5*6*4*3*3/2
        (keras.layers.Conv2D(6, 3, strides=2, groups=2), (11, 11, 4), (5, 5, 6), 5 * 5 * 6 * 4 * 9 // 2),
        # dilation 2 makes the 3x3 kernel span 5: 9-5+1 = 5, and still 9 taps per output
        (keras.layers.Conv2D(4, 3, dilation_rate=2), (9, 9, 2), (5, 5, 4), 5 * 5 * 4 * 2 * 9),
        (keras.layers.Conv2D(4, 3, strides=2, padding="same"), (9, 9, 2), (5, 5, 4), 5 * 5 * 4 * 2 * 9),
        (keras.layers.Conv1D(4, 3, strides=2), (11, 2), (5, 4), 5 * 4 * 2 * 3),
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 3), (6, 6, 6), 6 * 6 * 6 * 9),
        # depthwise 6*6*3*9 + pointwise 6*6*3*5
        (keras.layers.SeparableConv2D(5, 3), (8, 8, 3), (6, 6, 5), 6 * 6 * 3 * 9 + 6 * 6 * 3 * 5),
        # every input value goes through the whole 3x3x4 kernel
        (keras.layers.Conv2DTranspose(4, 3, strides=2), (5, 5, 2), (11, 11, 4), 5 * 5 * 2 * 9 * 4),
        (keras.layers.Dense(7), (5, 6), (5, 7), 5 * 6 * 7),
    ],
)
def test_linear_layer_macs_by_hand(layer, input_shape, out_shape, macs):
    got_macs, flops, shape = layer_cost(layer, input_shape)
    assert shape == out_shape
    assert got_macs == macs
    assert flops == 2 * macs + math.prod(out_shape)  # a bias add per output, linear activation


@pytest.mark.parametrize(
    "layer, input_shape, flops",
    [
        (keras.layers.BatchNormalization(), (4, 4, 3), 2 * 48),
        (keras.layers.LayerNormalization(), (5, 6), 8 * 30),
        (keras.layers.MaxPooling2D(3, strides=2), (9, 9, 2), 4 * 4 * 2 * 9),
        (keras.layers.GlobalAveragePooling2D(), (4, 4, 3), 48),
        (keras.layers.Activation("softmax"), (10,), 50),
        (keras.layers.ZeroPadding2D(1), (4, 4, 3), 0),
    ],
)
def test_elementwise_conventions(layer, input_shape, flops):
    assert layer_cost(layer, input_shape)[:2] == (0, flops)


def test_nested_model_gets_shapes_from_the_outer_graph():
    # a base with an open input size, called inside a model at 64x64
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3), alpha=0.35)
    inputs = keras.Input((64, 64, 3))
    head = keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(name="pool"), keras.layers.Dense(8, name="fc")], name="head"
    )
    model = keras.Model(inputs, head(base(inputs, training=False)))
    report = inspect_model(model)
    rows = {row.name: row for row in report.rows}
    conv1 = rows[f"{base.name}/Conv1"]
    assert conv1.output_shapes == ((32, 32, 16),) and conv1.depth == 1
    assert conv1.macs == 32 * 32 * 16 * 3 * 9
    assert rows[f"{base.name}/out_relu"].output_shapes == ((2, 2, 1280),)
    assert rows["head/fc"].macs == 1280 * 8
    assert report.totals["params"] == model.count_params()
    assert report.totals["macs"] == sum(r.macs for r in inspect_model(base, input_shape=(64, 64, 3)).rows) + 1280 * 8
    text = format_report(report)
    assert f"\n{base.name}/\n  Conv1 " in text and "\nhead/\n  pool " in text


def test_open_input_size_needs_input_shape():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 3)])
    with pytest.raises(TlkitError, match=r"unknown size \(None, None, 3\).*input_shape"):
        inspect_model(model)
    assert inspect_model(model, input_shape=(10, 10, 3)).rows[1].output_shapes == ((8, 8, 2),)


def test_shared_layer_parameters_count_once():
    dense = keras.layers.Dense(4, name="shared")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, dense(dense(inputs)))
    report = inspect_model(model)
    assert [row.params for row in report.rows[1:]] == [20, 0]
    assert [row.macs for row in report.rows[1:]] == [16, 16]
    assert report.totals["params"] == model.count_params() == 20


def test_unknown_layers_are_flagged_not_guessed():
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t * 2, name="double")(inputs))
    report = inspect_model(keras.Model(inputs, outputs))
    double = report.rows[1]
    assert (double.name, double.counted, double.macs, double.flops) == ("double", False, 0, 0)
    assert report.uncounted == ["double"]
    assert "double *" in format_report(report)
    assert format_report(report).endswith("not counted (no rule for the layer class): double")


def test_training_memory_is_linear_in_batch_size():
    model = lenet5()
    report = inspect_model(model, batch_size=1, optimizer_slots=2)
    per_sample = report.totals["activation_bytes"]
    assert per_sample == 4 * (32 * 32 + 28 * 28 * 6 + 14 * 14 * 6 + 10 * 10 * 16 + 5 * 5 * 16 + 400 + 120 + 84 + 10)
    one = report.training_memory(1)
    assert (one.weights, one.gradients, one.optimizer) == (4 * 61_706, 4 * 61_706, 8 * 61_706)
    for batch in (2, 32, 256):
        assert report.training_memory(batch).total == one.total + (batch - 1) * per_sample
    # frozen weights need no gradients or optimizer slots; SGD without momentum has no slots
    model.trainable = False
    frozen = inspect_model(model, batch_size=8, optimizer_slots=0).training_memory()
    assert (frozen.gradients, frozen.optimizer, frozen.activations) == (0, 0, 8 * per_sample)


def test_json_and_table():
    report = inspect_model(lenet5(), batch_size=32)
    data = json.loads(report.to_json())
    assert data["totals"]["params"] == 61_706
    assert data["rows"][1]["name"] == "c1" and data["rows"][1]["output_shapes"] == [[28, 28, 6]]
    assert data["training_memory"]["total"] == report.training_memory(32).total
    lines = format_report(report).splitlines()
    table = lines[2 : 2 + 2 + len(report.rows) + 2]  # header, rule, rows, rule, total
    assert {len(line) for line in table} == {len(lines[1])}
    assert any(line.startswith("c3 ") and " 2,416 " in line and "6.2 KiB" in line for line in lines)
    assert "Total" in lines[len(report.rows) + 5] and "61,706" in lines[len(report.rows) + 5]
    assert "at batch 32" in lines[-1]


def test_inspect_command_reports_the_canon_counts(capsys):
    from tlkit.cli import main

    main(["inspect", "--arch", "vgg16", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["params"] == 138_357_544
    first_conv = next(row for row in report["rows"] if row["class_name"] == "Conv2D")
    assert first_conv["name"] == "block1_conv1" and first_conv["params"] == 1_792
    main(["inspect", "--arch", "lenet5"])
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.startswith(("c1 ", "c3 "))}
    assert rows["c1"][3] == "156" and rows["c3"][3] == "2,416"


def test_the_canon_layers_are_counted():
    from tlkit.models import ZOO

    report = inspect_model(ZOO.get("alexnet").build(include_top=True, input_shape=(227, 227, 3)))
    assert report.uncounted == []
    lrn = next(row for row in report.rows if row.class_name == "LocalResponseNormalization")
    assert lrn.flops == 12 * 55 * 55 * 96  # (2n + 2) per element, n = 5
