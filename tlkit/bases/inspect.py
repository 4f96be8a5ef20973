"""Per-layer shapes, parameters, MACs / FLOPs and memory of a Keras model (`tlkit inspect`).

Keras' `model.summary()` gives shapes and parameters but no compute or memory, and TensorFlow's
profiler counts FLOPs per op type, not per layer, and only on a traced graph. This module walks
the model's own layer graph instead, descending into nested models, so every row is a layer a
user can name.

Shapes are the real ones: the graph is re-traced symbolically at batch 1 from the model's input
size (or `input_shape`), and a nested model's layers get their shapes from that trace, not from
the nested model's own (possibly unsized) inputs.

Counting convention (per sample; FLOPs follow TensorFlow's profiler registry where it has an
entry, so the totals can be checked against it):
- MACs are the multiply-accumulates of the weighted linear maps only: convolutions of every kind
  and Dense. Conv: H_out*W_out*F*k_h*k_w*C_in/groups (strides, padding and dilation act through
  the output size); depthwise: H_out*W_out*C_out*k_h*k_w; separable: depthwise plus pointwise;
  transposed: H_in*W_in*C_in*k_h*k_w*F (every input value is scattered through the kernel);
  Dense on any rank: (elements of the input)*units.
- FLOPs are 2*MACs, plus 1 per output element for a bias, plus elementwise work: activation
  functions 1 per element (softmax 5, as TensorFlow counts it; TensorFlow itself counts 0 for
  ReLU), BatchNormalization 2 per element (inference form: one scale and one shift),
  LayerNormalization and GroupNormalization 8 per element (mean 1, variance 3, normalise 2,
  scale and shift 2), pooling one per window element per output, global pooling one per input
  element, merges (n-1) per output element (Average n), Rescaling/Normalization 2 per element.
  Reshapes, padding, cropping, concatenation, dropout and nearest upsampling are data movement
  and cost 0.
- Any other layer is not guessed at: it gets 0 MACs and FLOPs and is flagged (`counted=False`,
  `Report.uncounted`). `tlkit.bases.layer_costs.register_cost` teaches it a new layer class.
- Activation memory is every layer's output (and the model inputs), as stored for backprop;
  frameworks that fuse or recompute some of them need less.
- A training step at batch B needs weights + gradients of the trainable weights + optimizer
  slots per trainable weight (Adam: 2) + B x the activations of one sample."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import keras

from tlkit._util.keras_internals import is_functional, run_through_graph
from tlkit.bases import BASES, load_base
from tlkit.bases.keras_apps import APPS
from tlkit.bases.layer_costs import Shape, layer_cost, size_of
from tlkit.errors import TlkitError
from tlkit.models import ZOO


def is_graph_model(op) -> bool:
    return isinstance(op, keras.Sequential) or (isinstance(op, keras.Model) and is_functional(op))


def walk(model: keras.Model, inputs, visit, path: tuple[str, ...] = (), descend=is_graph_model):
    """Run `inputs` through `model` layer by layer, descending into the nested models `descend` accepts.

    `visit(layer, path, args, kwargs)` computes the outputs of every other layer (call it for real
    values, `compute_output_spec` for symbolic ones); `path` names the enclosing nested models.
    Keras has no public per-layer graph runner (see `tlkit._util.keras_internals.run_through_graph`).
    """
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = walk(layer, x, visit, (*path, layer.name), descend) if descend(layer) else visit(layer, path, (x,), {})
        return x

    def operation_fn(op):
        def call(*args, **kwargs):
            if descend(op):
                return walk(op, args[0], visit, (*path, op.name), descend)
            return visit(op, path, args, kwargs)

        return call

    return run_through_graph(model, inputs, operation_fn)


@dataclass(frozen=True)
class LayerRow:
    name: str  # "outer/inner/layer" for layers inside nested models
    class_name: str
    depth: int  # how many nested models enclose the layer
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    params: int  # counted at a shared layer's first call only
    trainable_params: int
    macs: int
    flops: int
    activation_bytes: int  # the outputs of one sample
    counted: bool = True  # False: no rule for this layer, MACs and FLOPs reported as 0


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one training step needs at `batch_size`."""

    batch_size: int
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclass
class Report:
    model: str
    rows: list[LayerRow]
    batch_size: int = 1
    optimizer_slots: int = 2
    dtype_bytes: int = 4
    totals: dict[str, int] = field(init=False)

    def __post_init__(self):
        keys = ("params", "trainable_params", "macs", "flops", "activation_bytes")
        self.totals = {key: sum(getattr(row, key) for row in self.rows) for key in keys}

    @property
    def uncounted(self) -> list[str]:
        return [row.name for row in self.rows if not row.counted]

    def training_memory(self, batch_size: int | None = None) -> TrainingMemory:
        batch = self.batch_size if batch_size is None else batch_size
        trainable = self.totals["trainable_params"] * self.dtype_bytes
        return TrainingMemory(
            batch_size=batch,
            weights=self.totals["params"] * self.dtype_bytes,
            gradients=trainable,
            optimizer=self.optimizer_slots * trainable,
            activations=batch * self.totals["activation_bytes"],
        )

    def to_dict(self) -> dict:
        memory = self.training_memory()
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "optimizer_slots": self.optimizer_slots,
            "dtype_bytes": self.dtype_bytes,
            "rows": [asdict(row) for row in self.rows],
            "totals": dict(self.totals),
            "uncounted": self.uncounted,
            "training_memory": {**asdict(memory), "total": memory.total},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _per_sample(tensors) -> tuple[Shape, ...]:
    return tuple(tuple(t.shape[1:]) for t in keras.tree.flatten(tensors) if isinstance(t, keras.KerasTensor))


def _symbolic_inputs(model: keras.Model, input_shape: Sequence[int] | None) -> list[keras.KerasTensor]:
    if not getattr(model, "inputs", None):
        raise TlkitError(f"model {model.name} has no known inputs: build it on keras.Input(...) before inspecting it")
    if input_shape is not None:
        if len(model.inputs) != 1:
            raise TlkitError(f"model {model.name} has {len(model.inputs)} inputs: input_shape only applies to one")
        shapes = [tuple(input_shape)]
    else:
        shapes = [tuple(x.shape[1:]) for x in model.inputs]
    for shape in shapes:
        if any(d is None for d in shape):
            raise TlkitError(
                f"model {model.name} takes inputs of unknown size {shape}: pass input_shape "
                "(or --image-size) to inspect it at a size"
            )
    return [keras.KerasTensor((1, *shape), dtype=x.dtype) for x, shape in zip(model.inputs, shapes)]


def inspect_model(
    model: keras.Model,
    batch_size: int = 1,
    optimizer_slots: int = 2,
    dtype_bytes: int = 4,
    input_shape: Sequence[int] | None = None,
) -> Report:
    """Shapes, parameters, MACs, FLOPs and activation memory of every layer of `model`.

    `input_shape` (one sample, e.g. (224, 224, 3)) sizes a model whose input size is open.
    `batch_size`, `optimizer_slots` (Adam: 2, SGD with momentum: 1) and `dtype_bytes` set the
    training-step memory of the report; see the module docstring for the conventions.
    """
    inputs = _symbolic_inputs(model, input_shape)
    rows = [
        LayerRow(x.name, "InputLayer", 0, (), _per_sample(s), 0, 0, 0, 0, size_of(s.shape[1:]) * dtype_bytes)
        for x, s in zip(model.inputs, inputs)
    ]
    seen: set[int] = set()

    def visit(layer, path, args, kwargs):
        outputs = layer.compute_output_spec(*args, **kwargs)
        ins, outs = _per_sample((args, kwargs)), _per_sample(outputs)
        first = id(layer) not in seen
        seen.add(id(layer))
        weights = getattr(layer, "weights", []) if first else []
        trainable = getattr(layer, "trainable_weights", []) if first else []
        rule = layer_cost(layer)
        cost = rule(layer, list(ins), list(outs)) if rule else None
        macs, flops = cost or (0, 0)
        rows.append(
            LayerRow(
                name="/".join((*path, layer.name)),
                class_name=type(layer).__name__,
                depth=len(path),
                input_shapes=ins,
                output_shapes=outs,
                params=sum(size_of(w.shape) for w in weights),
                trainable_params=sum(size_of(w.shape) for w in trainable),
                macs=macs,
                flops=flops,
                activation_bytes=sum(size_of(s) for s in outs) * dtype_bytes,
                counted=cost is not None,
            )
        )
        return outputs

    walk(model, inputs if len(inputs) > 1 else inputs[0], visit)
    return Report(model.name, rows, batch_size, optimizer_slots, dtype_bytes)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def human_count(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f}" if not unit else f"{n:.2f} {unit}"
        n /= 1000


def _shape_text(shapes: tuple[Shape, ...]) -> str:
    return ", ".join("x".join(str(d) for d in shape) for shape in shapes)


def format_report(report: Report) -> str:
    """The report as an aligned plain-text table with totals and the training-step memory."""
    header = ("Layer", "Class", "Output shape", "Params", "Trainable", "MACs", "FLOPs", "Activations")
    body = [
        (
            "  " * row.depth + row.name.rsplit("/", 1)[-1] + ("" if row.counted else " *"),
            row.class_name,
            _shape_text(row.output_shapes),
            f"{row.params:,}",
            f"{row.trainable_params:,}",
            f"{row.macs:,}",
            f"{row.flops:,}",
            human_bytes(row.activation_bytes),
        )
        for row in report.rows
    ]
    t = report.totals
    total = ("Total", "", "", f"{t['params']:,}", f"{t['trainable_params']:,}", f"{t['macs']:,}", f"{t['flops']:,}",
             human_bytes(t["activation_bytes"]))
    widths = [max(len(line[i]) for line in (header, *body, total)) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(header))
    table, group = [], ()
    for row, cells in zip(report.rows, body):
        models = tuple(row.name.split("/")[:-1])
        # a nested model has no row of its own (its layers carry its numbers): name it above them
        for depth in range(len(models)):
            if models[: depth + 1] != group[: depth + 1]:
                table.append("  " * depth + models[depth] + "/")
        group = models
        table.append(line(cells))
    memory = report.training_memory()
    lines = [
        f"Model {report.model}: {len(report.rows)} layers, "
        f"activations per sample at {report.dtype_bytes} bytes a value",
        rule, line(header), rule, *table, rule, line(total),
        f"{human_count(t['params'])} parameters, "
        f"{human_count(t['macs'])}MACs, {human_count(t['flops'])}FLOPs per sample",
        f"Training step at batch {memory.batch_size} ({report.optimizer_slots} optimizer slots): "
        f"weights {human_bytes(memory.weights)} + gradients {human_bytes(memory.gradients)} + "
        f"optimizer {human_bytes(memory.optimizer)} + activations {human_bytes(memory.activations)} "
        f"= {human_bytes(memory.total)}",
    ]
    if report.uncounted:
        lines.append("* MACs/FLOPs not counted (no rule for the layer class): " + ", ".join(report.uncounted))
    return "\n".join(lines)


def build_for_inspect(name: str, image_size: int | None = None) -> keras.Model:
    """The whole network called `name` (with its classifier, as the papers count it): a zoo
    architecture, a keras.applications model, or else a base without its top."""
    if name in ZOO:
        arch = ZOO.get(name)
        height, width, channels = arch.input_shape
        size = (image_size, image_size) if image_size else (height, width)
        return arch.build(include_top=True, input_shape=(*size, channels))
    if name in APPS:
        side = image_size or APPS[name].size
        return getattr(keras.applications, APPS[name].constructor)(
            include_top=True, weights=None, input_shape=(side, side, 3))
    BASES.get(name)  # an unknown name fails here, with suggestions
    return load_base(name, "none", (image_size, image_size) if image_size else None).model
