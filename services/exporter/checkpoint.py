"""Read a PyTorch checkpoint's state dict into numpy arrays without torch and without trusting the file.

A `.pth` file is a pickle, and unpickling runs whatever callables the file names, so a checkpoint is untrusted
input: the unpickler here resolves only an OrderedDict, the tensor rebuild functions and storage-type markers,
and refuses every other global. Both of torch's formats are read: the zip archive (`*/data.pkl` plus raw
storages in `*/data/<key>`, torch ≥ 1.6) and the legacy stream (pickles followed by the raw storages), which
is what the packaged EfficientNet-Lite0 weights use. Stdlib and numpy only.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "<i1",
    "ByteStorage": "<u1",
    "BoolStorage": "?",
}


class CheckpointError(ValueError):
    """A checkpoint that is malformed or names something this reader refuses to load."""


@dataclass(frozen=True)
class _StorageType:
    """What `torch.FloatStorage` & co. unpickle to: a plain marker carrying the element dtype."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None  # 1-D; legacy files provide it only after the main pickle


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it; materialised once every storage has been read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    # Signature of torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, ...).
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise CheckpointError("tensor offset, size and stride must be an int and two tuples")
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)):
        raise CheckpointError(f"bad tensor geometry: offset={offset!r} size={size!r} stride={stride!r}")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data  # torch._utils._rebuild_parameter(data, requires_grad, hooks): a Parameter is its tensor


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, np.dtype(code)) for name, code in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"checkpoint refers to {module}.{name}, which a weights file has no reason to use; refusing "
                "to load it (only OrderedDict, tensor rebuilds and storage types are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # zip: ("storage", type, key, location, numel); legacy adds view_metadata (None unless a view).
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r:.80}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not (isinstance(kind, _StorageType) and isinstance(key, str) and isinstance(numel, int)):
            raise CheckpointError(f"malformed storage reference {pid!r:.80}")
        if len(pid) == 6 and pid[5] is not None:
            raise CheckpointError("storage views (torch < 0.4 checkpoints) are not supported")
        storage = self._storages.setdefault(key, _Storage(key, kind.dtype, numel))
        if (storage.dtype, storage.numel) != (kind.dtype, numel):
            raise CheckpointError(f"storage {key} is referenced with two different types or sizes")
        return storage


def _load_pickle(file: IO[bytes], storages: dict[str, _Storage]) -> Any:
    try:
        return _RestrictedUnpickler(file, storages).load()
    except CheckpointError:
        raise
    except Exception as exc:  # a hostile pickle can raise nearly anything; report it uniformly
        raise CheckpointError(f"corrupt checkpoint pickle: {exc!r:.200}") from None


def _read_zip(path: Path) -> tuple[Any, dict[str, _Storage]]:
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one */data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as fh:
            obj = _load_pickle(fh, storages)
        order = f"{prefix}byteorder"
        big = order in archive.namelist() and archive.read(order).strip() == b"big"
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            nbytes = storage.numel * storage.dtype.itemsize
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise CheckpointError(f"{path}: storage {name} is missing") from None
            if info.file_size != nbytes:  # checked before reading: no zip bomb gets decompressed
                raise CheckpointError(f"{path}: {name} holds {info.file_size} bytes, expected {nbytes}")
            dtype = storage.dtype.newbyteorder(">") if big else storage.dtype
            storage.data = np.frombuffer(archive.read(name), dtype=dtype)
    return obj, storages


def _read_legacy(path: Path) -> tuple[Any, dict[str, _Storage]]:
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as fh:
        if _load_pickle(fh, storages) != _LEGACY_MAGIC:
            raise CheckpointError(f"{path} is neither a zip checkpoint nor a legacy torch checkpoint")
        if _load_pickle(fh, storages) != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy checkpoint protocol")
        sys_info = _load_pickle(fh, storages)
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise CheckpointError(f"{path}: only little-endian checkpoints are supported")
        obj = _load_pickle(fh, storages)
        keys = _load_pickle(fh, storages)
        if not isinstance(keys, list) or sorted(keys) != sorted(storages):
            raise CheckpointError(f"{path}: the storage list does not match the storages the tensors use")
        for key in keys:  # each storage: int64 element count, then the raw little-endian elements
            storage = storages[key]
            count = int.from_bytes(fh.read(8), "little", signed=True)
            if count != storage.numel:
                raise CheckpointError(
                    f"{path}: storage {key} holds {count} elements, expected {storage.numel}"
                )
            raw = fh.read(count * storage.dtype.itemsize)
            if len(raw) != count * storage.dtype.itemsize:
                raise CheckpointError(f"{path}: truncated at storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return obj, storages


def _materialise(name: str, ref: _TensorRef) -> np.ndarray:
    data = ref.storage.data
    assert data is not None
    if 0 in ref.size:
        return np.zeros(ref.size, dtype=data.dtype.newbyteorder("="))
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= data.size:  # as_strided does no bounds checks: an unchecked stride would read foreign memory
        raise CheckpointError(f"tensor {name} reaches element {last} of a {data.size}-element storage")
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :], shape=ref.size, strides=[s * data.itemsize for s in ref.stride], writeable=False
    )
    return np.array(view, dtype=data.dtype.newbyteorder("="), order="C", copy=True)  # owned, native order


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load the tensors of a torch checkpoint (a state dict, or a dict holding one under "state_dict").

    :raise CheckpointError: on a malformed file or any global outside the small allow-list.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    obj, _ = _read_zip(path) if head.startswith(b"PK") else _read_legacy(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    out: dict[str, np.ndarray] = {}
    for name, ref in obj.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise CheckpointError(f"{path}: entry {name!r:.80} is not a named tensor")
        out[name] = _materialise(name, ref)
    return out
