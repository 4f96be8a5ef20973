"""The classic CNN zoo: the papers' parameter counts and layer shapes, block maps, training and
saving. Building the whole zoo at the papers' input sizes with the 1000-class head (LeNet-5:
10 classes) takes 13-20 s on 2 cores; this file takes 60-80 s."""
import keras
import numpy as np
import pytest

from tlkit.errors import TlkitError
from tlkit.models import ZOO
from tlkit.models.blocks import build_block_map
from tlkit.models.googlenet import googlenet

# Trainable parameters with the paper's head; for the ResNets count_params() also counts the
# batch norms' moving means and variances, given second.
COUNTS = {
    "lenet5": 61_706,
    "alexnet": 62_378_344,
    "alexnet_grouped": 60_965_224,
    "zfnet": 107_627_624,
    "vgg11": 132_863_336,
    "vgg11_lrn": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16_c": 133_638_952,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "googlenet": 6_998_552,
    "resnet18": (11_689_512, 11_699_112),
    "resnet34": (21_797_672, 21_814_696),
    "resnet50": (25_557_032, 25_610_152),
}

VGG_STAGES = {
    f"block{i}_pool": (side, side, width)
    for i, (side, width) in enumerate(zip((112, 56, 28, 14, 7), (64, 128, 256, 512, 512)), start=1)
}
ALEXNET_SHAPES = {
    "conv1": (55, 55, 96),
    "conv1_pool": (27, 27, 96),
    "conv2": (27, 27, 256),
    "conv2_pool": (13, 13, 256),
    "conv4": (13, 13, 384),
    "conv5_pool": (6, 6, 256),
}
INCEPTION_WIDTHS = {
    "3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832, "5a": 832, "5b": 1024,
}


def resnet_shapes(depths, expansion):
    """conv1, pool1 and the last block of each stage; `expansion` is 4 for bottleneck blocks."""
    shapes = {"conv1_relu": (112, 112, 64), "pool1_pool": (56, 56, 64)}
    for stage, depth, side, width in zip((2, 3, 4, 5), depths, (56, 28, 14, 7), (64, 128, 256, 512)):
        shapes[f"conv{stage}_block{depth}_out"] = (side, side, expansion * width)
    return shapes


# The papers' layer output shapes, (height, width, channels), at the papers' input sizes.
SHAPES = {
    "lenet5": {
        "c1": (28, 28, 6), "s2": (14, 14, 6), "c3": (10, 10, 16), "s4": (5, 5, 16), "f5": (120,), "f6": (84,),
    },
    "alexnet": ALEXNET_SHAPES,
    "alexnet_grouped": ALEXNET_SHAPES,
    "zfnet": {
        "conv1": (110, 110, 96),
        "conv1_pool": (55, 55, 96),
        "conv2": (26, 26, 256),
        "conv2_pool": (13, 13, 256),
        "conv4": (13, 13, 1024),
        "conv5_pool": (6, 6, 512),
    },
    **{name: VGG_STAGES for name in ("vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19")},
    "googlenet": {
        "pool2_3x3_s2": (28, 28, 192),
        **{
            f"inception{module}_output": ({"3": 28, "4": 14, "5": 7}[module[0]],) * 2 + (width,)
            for module, width in INCEPTION_WIDTHS.items()
        },
    },
    "resnet18": resnet_shapes((2, 2, 2, 2), 1),
    "resnet34": resnet_shapes((3, 4, 6, 3), 1),
    "resnet50": resnet_shapes((3, 4, 6, 3), 4),
}

# Inputs that every layer's stride and pooling still fit, for the tiny builds.
TINY_SIDE = {"alexnet": 67, "alexnet_grouped": 67, "zfnet": 53}


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def tiny_input_shape(name):
    side = TINY_SIDE.get(name, 32)
    return (side, side, ZOO.get(name).input_shape[-1])


def test_every_architecture_has_a_count_and_shapes():
    assert set(ZOO) == set(COUNTS) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_paper_parameter_count_and_layer_shapes(name):
    model = ZOO.get(name).build(**({"classes": 10} if name == "lenet5" else {}))
    trainable, total = COUNTS[name] if isinstance(COUNTS[name], tuple) else (COUNTS[name],) * 2
    assert trainable_count(model) == trainable
    assert model.count_params() == total
    assert model.input_shape[1:] == ZOO.get(name).input_shape
    for layer, shape in SHAPES[name].items():
        assert model.get_layer(layer).output.shape[1:] == shape, layer


def test_googlenet_auxiliary_heads():
    model = googlenet(aux_heads=True)
    assert model.output_names == ["predictions", "aux1_predictions", "aux2_predictions"]
    assert model.output_shape == [(None, 1000)] * 3
    # Each head: 1x1 conv to 128 maps, FC 4x4x128 -> 1024, FC 1024 -> 1000.
    heads = (512 + 1) * 128 + (528 + 1) * 128 + 2 * ((2048 + 1) * 1024 + (1024 + 1) * 1000)
    assert model.count_params() == COUNTS["googlenet"] + heads == 13_378_280
    with pytest.raises(ValueError, match="include_top"):
        googlenet(include_top=False, aux_heads=True)


@pytest.mark.parametrize("app, name", [("VGG16", "vgg16"), ("VGG19", "vgg19"), ("ResNet50", "resnet50")])
def test_layer_names_are_keras_applications_names(app, name):
    ours = ZOO.get(name).build(include_top=False, input_shape=(32, 32, 3))
    theirs = getattr(keras.applications, app)(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert [layer.name for layer in ours.layers[1:]] == [layer.name for layer in theirs.layers[1:]]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_block_map_of_the_base(name):
    arch = ZOO.get(name)
    model = arch.build(include_top=False, input_shape=tiny_input_shape(name))
    blocks = build_block_map(model, arch.blocks)
    assert [block.name for block in blocks] == [block for block, _ in arch.blocks]
    in_blocks = {layer for block in blocks for layer in block.layers}
    assert {layer.name for layer in model.layers if layer.weights} <= in_blocks


@pytest.mark.parametrize("pooling, name", [(None, "vgg11"), ("avg", "resnet18"), ("max", "googlenet")])
def test_input_tensor_gives_one_flat_model_on_the_callers_input(pooling, name):
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    model = ZOO.get(name).build(include_top=False, input_tensor=x, pooling=pooling)
    assert model.inputs[0] is inputs
    assert model.layers[1].name == "rescale"
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    expected = {None: (1, 1, 512), "avg": (512,), "max": (1024,)}[pooling]
    assert model.output_shape[1:] == expected


def test_weights_argument_loads_a_weights_file(tmp_path):
    lenet = ZOO.get("lenet5").build
    path = str(tmp_path / "lenet.weights.h5")
    source = lenet()
    source.save_weights(path)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 1)).astype("float32")
    np.testing.assert_array_equal(lenet(weights=path)(x), source(x))
    with pytest.raises(TlkitError, match="does not exist"):
        lenet(weights=str(tmp_path / "missing.weights.h5"))


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_tiny_build_trains_one_step_and_reloads(name, tmp_path):
    shape = tiny_input_shape(name)
    model = ZOO.get(name).build(input_shape=shape, classes=3)
    # Eager: tracing a graph for one step of a ResNet takes longer than the step.
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, *shape)).astype("float32")
    first, last = model.trainable_weights[0], model.get_layer("predictions").kernel
    before = [first.numpy(), last.numpy()]
    model.train_on_batch(x, np.array([0, 2]))
    for weight, old in zip((first, last), before):
        assert not np.array_equal(weight.numpy(), old), weight.path
    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    path.unlink()
    assert reloaded.output_shape == (None, 3)
    np.testing.assert_array_equal(reloaded(x, training=False), model(x, training=False))
