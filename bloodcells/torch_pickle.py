"""Read a PyTorch state dict saved in torch's legacy (non-zip) format, with numpy and the
standard `pickle` module alone: no torch, and no code from the file is run (only the
handful of classes a state dict is made of may be unpickled; anything else is refused).

The legacy layout: four pickles (magic number, protocol version, system info, the state
dict whose tensors point at storages by key), a pickled list of storage keys, then each
storage's bytes in that order, each behind its element count (little-endian int64).
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import numpy as np

from .cli import UserError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
SUPPORTED_PROTOCOL = 1001
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _PendingTensor:
    """A tensor whose storage bytes come after the pickles: materialised once they are read."""

    def __init__(self, storage_key, offset, size, stride):
        self.storage_key, self.offset, self.size, self.stride = storage_key, int(offset), tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _PendingTensor(storage, storage_offset, size, stride)


class _StateDictUnpickler(pickle.Unpickler):
    ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2}

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.storages = {}  # key -> (dtype, element count)

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise UserError(f"{self.path}: pickle: refuses to load {module}.{name}; expected a plain state dict "
                        f"of tensors (torch's legacy format)")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, element count[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UserError(f"{self.path}: pickle: unknown persistent id {str(pid)[:60]}; expected torch storages")
        _, storage_type, key, _location, numel = pid[:5]
        self.storages[key] = (storage_type.dtype, int(numel))
        return key


def read_state_dict(path) -> dict:
    """{name: numpy array} from a torch legacy-format state dict file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _read(fh, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); expected a PyTorch .pth state dict") from None
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a PyTorch legacy state dict ({' '.join(str(exc).split())[:100]}); "
                        f"expected a .pth file saved by torch.save") from None


def _read(fh, path) -> dict:
    if fh.read(2) == b"PK":
        raise UserError(f"{path}: torch zip format; expected torch's legacy (non-zip) format "
                        f"(re-save with torch.save(..., _use_new_zipfile_serialization=False))")
    fh.seek(0)
    if pickle.load(fh) != LEGACY_MAGIC:
        raise UserError(f"{path}: magic number: not torch's; expected a PyTorch .pth state dict")
    if pickle.load(fh) != SUPPORTED_PROTOCOL:
        raise UserError(f"{path}: protocol version: unsupported; expected {SUPPORTED_PROTOCOL}")
    info = pickle.load(fh)
    if not info.get("little_endian", True):
        raise UserError(f"{path}: byte order: big-endian; expected little-endian")
    unpickler = _StateDictUnpickler(fh, path)
    state = unpickler.load()
    if not isinstance(state, dict):
        raise UserError(f"{path}: content: {type(state).__name__}; expected a state dict (name -> tensor)")
    keys = pickle.load(fh)
    buffers = {}
    for key in keys:
        dtype, numel = unpickler.storages[key]
        (count,) = struct.unpack("<q", fh.read(8))
        if count != numel:
            raise UserError(f"{path}: storage {key}: {count} elements; expected {numel}")
        raw = fh.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise UserError(f"{path}: storage {key}: file ends early (truncated download?)")
        buffers[key] = np.frombuffer(raw, dtype=dtype)
    out = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _PendingTensor):
            raise UserError(f"{path}: {name}: {type(tensor).__name__}; expected a tensor")
        flat = buffers[tensor.storage_key]
        itemsize = flat.dtype.itemsize
        needed = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride)) + 1
        if any(n == 0 for n in tensor.size):
            out[name] = np.zeros(tensor.size, flat.dtype)
            continue
        if needed > flat.size:
            raise UserError(f"{path}: {name}: shape {tensor.size} reaches past its storage")
        view = np.lib.stride_tricks.as_strided(flat[tensor.offset:], shape=tensor.size,
                                               strides=[s * itemsize for s in tensor.stride])
        out[name] = np.array(view)  # a copy: contiguous, writable, independent of the buffer
    return out
