"""TFLite metadata, written straight from its flatbuffer schema.

MediaPipe Tasks (and the TFLite Task Library before it) read a model's input normalisation and
class names from the metadata flatbuffer (schema `metadata_schema.fbs`, file identifier M001)
stored in the model's buffer named TFLITE_METADATA, and the label file from a zip archive
appended to the model. The libraries that write it do not fit beside TensorFlow 2.21:
`tflite-support` pins protobuf 3.20, and MediaPipe's own writer comes with OpenCV, sounddevice
and 110 MB of wheels. The part an image classifier needs is a dozen small tables, built here
with the `flatbuffers` package TensorFlow already depends on; the slot numbers are those of the
schema, and a test reads the result back in MediaPipe's ImageClassifier.
"""
from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
# The oldest metadata parser that reads every field used here (all are from schema 1.0.0).
MIN_PARSER_VERSION = "1.0.0"
# Enum values of metadata_schema.fbs.
_RGB, _GRAYSCALE = 1, 2  # ColorSpaceType
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType


class _Writer:
    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def table(self, slots: int, *fields):
        """fields: (slot, kind, value), kind 'offset', 'int8' or 'uint8'; None values are left out.
        Strings, vectors and child tables must be made before the table that holds them."""
        self.b.StartObject(slots)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "offset":
                self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "int8":
                self.b.PrependInt8Slot(slot, value, 0)
            else:
                self.b.PrependUint8Slot(slot, value, 0)
        return self.b.EndObject()

    def string(self, text: str | None):
        return None if text is None else self.b.CreateString(text)

    def floats(self, values):
        self.b.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.b.PrependFloat32(value)
        return self.b.EndVector()

    def offsets(self, items):
        self.b.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.b.PrependUOffsetTRelative(item)
        return self.b.EndVector()

    def stats(self, low: float, high: float):  # table Stats { max: [float]; min: [float]; }
        high, low = self.floats([high]), self.floats([low])
        return self.table(2, (0, "offset", high), (1, "offset", low))

    def tensor(self, name, description, content, process_units=None, stats=None, files=None):
        # table TensorMetadata { name; description; dimension_names; content; process_units; stats; associated_files; }
        name, description = self.string(name), self.string(description)
        return self.table(7, (0, "offset", name), (1, "offset", description), (3, "offset", content),
                          (4, "offset", process_units), (5, "offset", stats), (6, "offset", files))

    def content(self, kind: int, properties):  # table Content { content_properties (union); range; }
        return self.table(3, (0, "uint8", kind), (1, "offset", properties))


def image_classifier_metadata(*, name: str, description: str, version: str, labels: list[str], channels: int,
                              input_description: str, output_description: str) -> bytes:
    """The metadata of a float32 image classifier: input pixels in [0, 255] (normalisation mean 0,
    std 1, so a uint8 image is fed as it is), output probabilities along the labels."""
    w = _Writer()
    image_properties = w.table(2, (0, "int8", _RGB if channels == 3 else _GRAYSCALE))  # ImageProperties
    normalization = w.table(2, (0, "offset", w.floats([0.0])), (1, "offset", w.floats([1.0])))
    unit = w.table(2, (0, "uint8", _NORMALIZATION_OPTIONS), (1, "offset", normalization))  # ProcessUnit
    image = w.tensor("image", input_description, w.content(_IMAGE_PROPERTIES, image_properties),
                     process_units=w.offsets([unit]), stats=w.stats(0.0, 255.0))

    label_name, label_description = w.string(LABELS_FILE), w.string("Class names, one a line, in output order.")
    label_file = w.table(5, (0, "offset", label_name), (1, "offset", label_description),
                         (2, "int8", _TENSOR_AXIS_LABELS))  # AssociatedFile
    feature = w.table(0)  # FeatureProperties: no fields
    probabilities = w.tensor("probabilities", output_description, w.content(_FEATURE_PROPERTIES, feature),
                             stats=w.stats(0.0, 1.0), files=w.offsets([label_file]))

    inputs, outputs = w.offsets([image]), w.offsets([probabilities])
    subgraph = w.table(10, (2, "offset", inputs), (3, "offset", outputs))  # SubGraphMetadata
    subgraphs = w.offsets([subgraph])
    fields = [w.string(text) for text in (name, description, version, MIN_PARSER_VERSION)]
    root = w.table(8, (0, "offset", fields[0]), (1, "offset", fields[1]), (2, "offset", fields[2]),
                   (3, "offset", subgraphs), (7, "offset", fields[3]))  # ModelMetadata
    w.b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(w.b.Output())


def with_metadata(model: bytes, metadata: bytes, labels: list[str]) -> bytes:
    """`model` with `metadata` in its TFLITE_METADATA buffer and labels.txt appended as a zip."""
    # TensorFlow's generated TFLite schema (object API); the converter itself uses this module.
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata = [*(tree.metadata or []), entry]
    b = flatbuffers.Builder(len(model) + 4096)
    b.Finish(tree.Pack(b), file_identifier=TFLITE_IDENTIFIER)
    out = io.BytesIO(bytes(b.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:  # appended after the flatbuffer, which readers ignore
        archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in labels))
    return out.getvalue()
