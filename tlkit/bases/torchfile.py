"""Read the tensors of a PyTorch checkpoint into numpy, without PyTorch and without running its code.

A PyTorch checkpoint is a pickle, and unpickling calls whatever globals the file names, so a
checkpoint from the internet can run any code (`torch.load(weights_only=False)` does). This
reader uses the "restricting globals" recipe of the `pickle` documentation: its unpickler
admits only the handful of globals a tensor checkpoint needs, each mapped to a function of
ours that builds plain data, and refuses anything else before it is called.

Both layouts `torch.save` writes are read:
- the legacy one (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles in a
  row — magic number, protocol version, sys info, the object itself (its storages as persistent
  ids), the list of storage keys — then each storage as an int64 element count and raw bytes,
  always little-endian;
- the zip one: `<archive>/data.pkl` with the same persistent ids, each storage in
  `<archive>/data/<key>`, raw bytes in the order of `<archive>/byteorder` (little if absent).
"""
from __future__ import annotations

import math
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import ml_dtypes
import numpy as np

from tlkit.errors import TlkitError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,  # numpy has no bfloat16; ml_dtypes (a TF dependency) does
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    """What the global `torch.FloatStorage` (etc.) unpickles to: just its element type."""

    dtype: np.dtype


class _Storage:
    """A storage named by the pickle; its bytes come after the pickle (legacy) or beside it (zip)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it, made an array once its storage has been read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements, as PyTorch counts them


def _is_int_tuple(value) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """Stands in for `torch._utils._rebuild_tensor_v2`; gradients and hooks do not matter to weights."""
    if not (
        isinstance(storage, _Storage)
        and isinstance(storage_offset, int)
        and storage_offset >= 0
        and _is_int_tuple(size)
        and _is_int_tuple(stride)
        and len(size) == len(stride)
    ):
        raise ValueError("a tensor with a malformed storage, offset, size or stride")
    return _TensorRef(storage, storage_offset, size, stride)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: Path, storages: dict[str, _Storage]):
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise TlkitError(
                f"refusing to load {self._path}: it asks for the Python global {module}.{name}; "
                "tlkit reads only checkpoints of tensors (state dicts), and loading anything "
                "else could run code from the file"
            ) from None

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel) in zip files; legacy ones add a view
        # (only PyTorch < 0.4 wrote views of storages, as a non-None sixth item).
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and pid[4] >= 0
        ):
            raise ValueError(f"an unknown persistent id {str(pid)[:80]}")
        if len(pid) == 6 and pid[5] is not None:
            raise TlkitError(f"{self._path} holds views of storages (PyTorch < 0.4): re-save it with a newer one")
        _, storage_type, key, _, numel = pid[:5]
        storage = self._storages.setdefault(key, _Storage(storage_type.dtype, numel))
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise ValueError(f"storage {key} is named twice with different types or sizes")
        return storage


def _check_sizes(storages: dict[str, _Storage], limit: int) -> None:
    """Refuse storages that would need more bytes than the file holds, before reading any: a
    crafted pickle can name a storage of any size."""
    total = 0
    for key, storage in storages.items():
        if storage.numel < 0:
            raise ValueError(f"storage {key} has a negative size")
        total += storage.numel * storage.dtype.itemsize
        if total > limit:
            raise ValueError(f"its storages claim {total} bytes or more, but the file holds {limit}: "
                             "it is truncated or crafted")


def _fill(storage: _Storage, raw: bytes, byteorder: str, key: str) -> None:
    dtype = storage.dtype.newbyteorder(byteorder)
    if len(raw) < storage.numel * dtype.itemsize:
        raise ValueError(f"storage {key} is truncated")
    storage.data = np.frombuffer(raw, dtype, count=storage.numel)


def _read_legacy(file: BinaryIO, path: Path, limit: int) -> object:
    storages: dict[str, _Storage] = {}

    def load():
        return _RestrictedUnpickler(file, path, storages).load()

    if load() != _LEGACY_MAGIC:
        raise ValueError("no PyTorch magic number")
    if load() != _LEGACY_PROTOCOL:
        raise ValueError("an unknown legacy protocol version")
    load()  # sys info: the writer's byte order and C type sizes; the storages are little-endian anyway
    obj = load()
    keys = load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise ValueError("the storage keys do not match the storages the object uses")
    _check_sizes(storages, limit)
    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", file.read(8))
        if numel != storage.numel:
            raise ValueError(f"storage {key} holds {numel} elements, the object says {storage.numel}")
        _fill(storage, file.read(numel * storage.dtype.itemsize), "<", key)
    return obj


def _read_zip(archive: zipfile.ZipFile, path: Path, limit: int) -> object:
    pickles = [name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise ValueError("no single <archive>/data.pkl in the zip file")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "<"
    if prefix + "byteorder" in archive.namelist():
        byteorder = {b"little": "<", b"big": ">"}[archive.read(prefix + "byteorder").strip()]
    storages: dict[str, _Storage] = {}
    with archive.open(pickles[0]) as file:
        obj = _RestrictedUnpickler(file, path, storages).load()
    _check_sizes(storages, limit)
    for key, storage in storages.items():
        name = f"{prefix}data/{key}"
        if archive.getinfo(name).file_size > limit:  # compressed far beyond what torch.save writes: a zip bomb
            raise ValueError(f"{name} unpacks to {archive.getinfo(name).file_size} bytes, more than the file holds")
        _fill(storage, archive.read(name), byteorder, key)
    return obj


def _to_array(ref: _TensorRef) -> np.ndarray:
    data = ref.storage.data
    native = data.dtype.newbyteorder("=")
    if math.prod(ref.shape) == 0:
        return np.empty(ref.shape, native)
    # a tensor with more elements than its storage repeats them (stride 0): refused before the
    # copy, which could otherwise ask for any amount of memory
    if math.prod(ref.shape) > data.size:
        raise ValueError(f"a tensor of shape {ref.shape} has more elements than its storage ({data.size})")
    # as_strided trusts its arguments: check the last element is inside the storage, or a
    # crafted file could read memory outside it.
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.strides))
    if last >= data.size:
        raise ValueError(f"a tensor of shape {ref.shape} reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset:], ref.shape, tuple(s * data.itemsize for s in ref.strides), writeable=False
    )
    # A contiguous copy in native byte order, so tensors never alias each other or the file's bytes.
    return np.array(view, dtype=native, order="C")


def _flatten(obj, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(obj, _TensorRef):
        out[prefix] = _to_array(obj)
        return
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return  # numbers and strings beside the weights (an epoch count, a name) are not tensors
    for key, value in items:
        _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)


def load_torch_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of the PyTorch checkpoint at `path`, by their state-dict names.

    Nested dicts and lists are flattened with dots (`{"model": {"fc.weight": t}}` gives
    `model.fc.weight`); values that are not tensors are left out. Each array is a contiguous
    copy with the tensor's shape and dtype. Raises TlkitError if the file cannot be read, is not
    a checkpoint, or asks for any Python global beyond what tensors need.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            limit = os.fstat(file.fileno()).st_size
            if zipfile.is_zipfile(file):
                with zipfile.ZipFile(file) as archive:
                    obj = _read_zip(archive, path, limit)
            else:
                file.seek(0)
                obj = _read_legacy(file, path, limit)
        tensors: dict[str, np.ndarray] = {}
        _flatten(obj, "", tensors)
    except OSError as err:
        raise TlkitError(f"cannot read the PyTorch checkpoint {path}: {err.strerror or err}") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, struct.error,
            zipfile.BadZipFile, AttributeError, RecursionError, OverflowError, MemoryError) as err:
        raise TlkitError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    return tensors
