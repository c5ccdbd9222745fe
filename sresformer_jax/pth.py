"""Read and write PyTorch checkpoints (``.pth``) without torch, safely.

    sd = load_pth("spikingresformer_ti.pth")["model"]     # {official name: np.ndarray}
    save_pth({"model": sd}, "out.pth")                    # torch.load(..., weights_only=True) reads it

Format (``torch.save`` since PyTorch 1.6): a zip archive (entries stored, not compressed) whose entries
all sit under one folder ``<archive>/``: ``data.pkl`` is a protocol-2 pickle of the object in which every
tensor is a call ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
and every storage a *persistent id* ``("storage", storage_type, key, location, numel)`` whose bytes are the
entry ``data/<key>`` (raw, little-endian unless ``byteorder`` says otherwise). ``version`` holds the format
version.

Reading never runs code from the file: the pickle is read by an unpickler that resolves only an explicit
allow-list of names (containers, the tensor/storage rebuild functions, dtypes, ``argparse.Namespace``, numpy
scalars), each mapped to a private stand-in of this module. Any other global, such as ``posix.system`` or
``builtins.eval``, raises ``UnsafeCheckpointError`` naming it. Tensors come back as numpy arrays.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import re
import struct
import uuid
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import ml_dtypes

__all__ = ["load_pth", "save_pth", "UnsafeCheckpointError", "CheckpointFormatError", "CheckpointArgs"]


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle names a global that is not on the allow-list (it may run code)."""


class CheckpointFormatError(ValueError):
    """The file is not a readable ``torch.save`` zip archive (legacy format, corrupt, unsupported dtype)."""


_LEGACY_MSG = ("legacy (pre-1.6) torch.save format is not supported; re-save it with "
               "torch.save(..., _use_new_zipfile_serialization=True)")

# ---------------------------------------------------------------------------------------------------------
# dtypes a state dict holds (floating weights and buffers, integer counters, masks):
# torch dtype name / storage class ⇄ numpy dtype
# ---------------------------------------------------------------------------------------------------------

_NP_BY_TORCH_DTYPE: dict[str, Any] = {
    "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "int64": np.int64, "long": np.int64,
    "int32": np.int32, "int": np.int32, "int16": np.int16, "short": np.int16, "int8": np.int8,
    "uint8": np.uint8, "bool": np.bool_, "bfloat16": ml_dtypes.bfloat16,
}

# Legacy typed storage classes (``torch.FloatStorage`` …) → torch dtype name.
_STORAGE_DTYPE = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}
_STORAGE_BY_DTYPE = {v: k for k, v in _STORAGE_DTYPE.items()}


def _numpy_dtype(torch_name: str) -> np.dtype:
    np_type = _NP_BY_TORCH_DTYPE.get(torch_name)
    if np_type is None:
        raise CheckpointFormatError(f"tensor dtype torch.{torch_name} is not supported")
    return np.dtype(np_type)


# ---------------------------------------------------------------------------------------------------------
# Private stand-ins the allow-listed names resolve to. They are frozen, so a pickle cannot patch them.
# ---------------------------------------------------------------------------------------------------------

class _Frozen:
    __slots__ = ()

    def __setattr__(self, key, value):
        raise UnsafeCheckpointError(f"checkpoint pickle tried to set attribute {key!r} on {self!r}")

    def __delattr__(self, key):
        raise UnsafeCheckpointError(f"checkpoint pickle tried to delete attribute {key!r} on {self!r}")


class _TorchDType(_Frozen):
    """Stand-in for a ``torch.<dtype>`` global."""
    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    def __repr__(self):
        return f"torch.{self.name}"


class _StorageType(_Frozen):
    """Stand-in for ``torch.<X>Storage`` (``dtype`` set) or ``torch.UntypedStorage`` (``dtype`` None)."""
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str | None):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage(_Frozen):
    """A storage read from ``data/<key>``: raw little-endian bytes plus the element dtype (None: untyped)."""
    __slots__ = ("key", "data", "dtype", "byteorder")

    def __init__(self, key: str, data: bytes, dtype: str | None, byteorder: str):
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "byteorder", byteorder)

    def __repr__(self):
        return f"<storage {self.key}: {len(self.data)} bytes, {self.dtype or 'untyped'}>"


class _Callable(_Frozen):
    """Stand-in for an allow-listed function or class (called by REDUCE)."""
    __slots__ = ("qualname", "fn")

    def __init__(self, qualname: str, fn):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return f"<allowed {self.qualname}>"


class _TensorType(_Frozen):
    """Stand-in for ``torch.Tensor`` / ``torch.nn.Parameter`` passed to ``_rebuild_from_type_v2``."""
    __slots__ = ("qualname",)

    def __init__(self, qualname: str):
        object.__setattr__(self, "qualname", qualname)

    def __repr__(self):
        return self.qualname


class _FrozenMeta(type):
    def __setattr__(cls, key, value):
        raise UnsafeCheckpointError(f"checkpoint pickle tried to set attribute {key!r} on {cls.__name__}")

    def __delattr__(cls, key):
        raise UnsafeCheckpointError(f"checkpoint pickle tried to delete attribute {key!r} on {cls.__name__}")


class CheckpointArgs(argparse.Namespace, metaclass=_FrozenMeta):
    """What a pickled ``argparse.Namespace`` (e.g. a training script's ``args``) loads as: an
    ``argparse.Namespace`` subclass holding the same attributes (``vars(ns)`` gives a dict)."""


class _NumpyDType(_Frozen):
    """Stand-in for ``numpy.dtype(name, align, copy)`` + its pickled state (only the byte order is kept)."""
    __slots__ = ("name", "byteorder")

    def __init__(self, name, *_):
        if not isinstance(name, str):
            raise UnsafeCheckpointError(f"numpy.dtype with a non-string argument {type(name).__name__}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "byteorder", "=")

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            object.__setattr__(self, "byteorder", state[1])

    def resolve(self) -> np.dtype:
        dt = np.dtype(self.name)
        if dt.hasobject or dt.fields is not None:
            raise UnsafeCheckpointError(f"numpy dtype {self.name!r} (objects or records) is not allowed")
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise UnsafeCheckpointError("numpy scalar with an unexpected dtype or payload")
    dt = dtype.resolve()
    if len(data) != dt.itemsize:
        raise CheckpointFormatError(f"numpy scalar of {dt} has {len(data)} bytes")
    return np.frombuffer(data, dt)[0].astype(dt.newbyteorder("="))


def _ordered_dict(items=()):
    return collections.OrderedDict(items)


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol 2 pickles ``bytes`` as _codecs.encode(text, "latin1").
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafeCheckpointError("_codecs.encode is only allowed on text with latin1/utf-8")
    return obj.encode(encoding, errors)


def _safe_set(items=()):
    return set(_hashables(items))


def _safe_frozenset(items=()):
    return frozenset(_hashables(items))


def _hashables(items):
    items = list(items)
    for x in items:
        if not isinstance(x, (str, bytes, int, float, bool, complex, type(None), tuple, frozenset)):
            raise UnsafeCheckpointError(f"set element of type {type(x).__name__} is not allowed")
    return items


def _tensor_from_storage(storage, offset, size, stride, dtype_name: str | None = None) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor storage is {type(storage).__name__}, expected a stored storage")
    dtype_name = dtype_name or storage.dtype or "uint8"
    dt = _numpy_dtype(dtype_name)
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in size + stride + (offset,)):
        raise CheckpointFormatError(f"bad tensor geometry: offset={offset}, size={size}, stride={stride}")
    nbytes = len(storage.data)
    if nbytes % dt.itemsize:
        raise CheckpointFormatError(f"storage {storage.key} has {nbytes} bytes, not a multiple of {dt}")
    numel = nbytes // dt.itemsize
    if all(size):  # non-empty: the last element addressed must lie inside the storage
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise CheckpointFormatError(
                f"tensor of size {list(size)}, stride {list(stride)}, offset {offset} reads element {last} "
                f"of storage {storage.key}, which has {numel} {dtype_name} elements")
        base = np.frombuffer(storage.data, dt.newbyteorder(storage.byteorder), count=numel)
        view = np.lib.stride_tricks.as_strided(base[offset:], shape=size,
                                               strides=tuple(s * dt.itemsize for s in stride),
                                               writeable=False)
        out = np.array(view, dtype=dt, copy=True, order="C")  # native byte order, contiguous, owned
    else:
        out = np.zeros(size, dt)
    return out


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, _TorchDType):
        raise CheckpointFormatError(f"_rebuild_tensor_v3 got dtype {dtype!r}")
    return _tensor_from_storage(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state=None):
    if not isinstance(func, _Callable) or not isinstance(new_type, _TensorType):
        raise UnsafeCheckpointError(f"_rebuild_from_type_v2 with {func!r}, {new_type!r} is not allowed")
    return func(*args)


_DTYPE_MARKERS = {name: _TorchDType(name) for name in _NP_BY_TORCH_DTYPE}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _Callable("collections.OrderedDict", _ordered_dict),
    ("torch._utils", "_rebuild_tensor"): _Callable("torch._utils._rebuild_tensor", _rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Callable("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v3"): _Callable("torch._utils._rebuild_tensor_v3", _rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Callable("torch._utils._rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"):
        _Callable("torch._utils._rebuild_parameter_with_state", _rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"):
        _Callable("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2),
    ("torch", "Tensor"): _TensorType("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _TensorType("torch.nn.parameter.Parameter"),
    ("torch", "UntypedStorage"): _StorageType("UntypedStorage", None),
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", None),
    ("argparse", "Namespace"): CheckpointArgs,
    ("_codecs", "encode"): _Callable("_codecs.encode", _codecs_encode),
    ("builtins", "set"): _Callable("builtins.set", _safe_set),
    ("builtins", "frozenset"): _Callable("builtins.frozenset", _safe_frozenset),
    ("numpy", "dtype"): _Callable("numpy.dtype", _NumpyDType),
    ("numpy.core.multiarray", "scalar"): _Callable("numpy.core.multiarray.scalar", _numpy_scalar),
    ("numpy._core.multiarray", "scalar"): _Callable("numpy._core.multiarray.scalar", _numpy_scalar),
}
_ALLOWED.update({("torch", cls): _StorageType(cls, dt) for cls, dt in _STORAGE_DTYPE.items()})
_ALLOWED.update({("torch", name): marker for name, marker in _DTYPE_MARKERS.items()})
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, storages, source: str):
        super().__init__(file)
        self._storages = storages
        self._source = source

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {self._source}: its pickle references the global '{module}.{name}', which "
                "is not on the allow-list of safe names (tensors, containers, numbers, strings, dtypes, "
                "argparse.Namespace). Loading it could run arbitrary code; if you trust the file, load it "
                "with torch and re-save only its tensors.") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5):
            raise CheckpointFormatError(f"unsupported persistent id {pid!r} in {self._source}")
        kind, storage_type, key, _location, _numel = pid
        if isinstance(kind, bytes):
            kind = kind.decode("ascii")
        if kind != "storage":
            raise CheckpointFormatError(f"unsupported persistent id of kind {kind!r} in {self._source}")
        if isinstance(storage_type, _StorageType):
            dtype = storage_type.dtype
        elif isinstance(storage_type, _TorchDType):
            dtype = storage_type.name
        else:
            raise CheckpointFormatError(f"unsupported storage type {storage_type!r} in {self._source}")
        return self._storages(str(key), dtype)


def _archive_prefix(zf: zipfile.ZipFile, source: str) -> str:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        other = " (this looks like a TorchScript archive: save its state_dict() instead)" \
            if any(n.endswith("/constants.pkl") for n in zf.namelist()) else ""
        raise CheckpointFormatError(f"{source} is a zip file but not a torch.save archive: expected exactly "
                                    f"one '<archive>/data.pkl', found {len(pkls)}{other}")
    return pkls[0][: -len("data.pkl")]


def load_pth(path: str | os.PathLike) -> Any:
    """Reads a ``torch.save`` file (zip format, PyTorch ≥ 1.6) without torch and without running any code
    from it. Returns the saved object with tensors as numpy arrays (native byte order, contiguous),
    ``OrderedDict``s as such and ``argparse.Namespace`` as ``CheckpointArgs``.

    Raises ``UnsafeCheckpointError`` if the pickle names anything but the allow-listed globals, and
    ``CheckpointFormatError`` (both ``ValueError``) for legacy, non-torch or corrupt files.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {source}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        what = "a raw pickle" if head[:1] == b"\x80" else "not a zip archive"
        raise CheckpointFormatError(f"{source} is {what}: {_LEGACY_MSG}")
    with zipfile.ZipFile(path) as zf:
        prefix = _archive_prefix(zf, source)
        byteorder = "<"
        if f"{prefix}byteorder" in zf.namelist():
            order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointFormatError(f"{source}: unknown byteorder record {order!r}")
            byteorder = "<" if order == "little" else ">"
        cache: dict[str, _Storage] = {}

        def storage(key: str, dtype: str | None) -> _Storage:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
                raise CheckpointFormatError(f"{source}: bad storage key {key!r}")
            if key not in cache:
                try:
                    data = zf.read(f"{prefix}data/{key}")
                except KeyError:
                    raise CheckpointFormatError(f"{source}: storage entry {prefix}data/{key} is missing") from None
                cache[key] = _Storage(key, data, dtype, byteorder)
            return cache[key]

        try:
            obj = _SafeUnpickler(io.BytesIO(zf.read(f"{prefix}data.pkl")), storage, source).load()
        except (UnsafeCheckpointError, CheckpointFormatError):
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError, KeyError, AttributeError,
                RecursionError, struct.error) as e:
            raise CheckpointFormatError(f"{source}: corrupt or unsupported pickle: {type(e).__name__}: {e}") \
                from None
    _check_result(obj, source)
    return obj


def _check_result(obj, source: str, depth: int = 0) -> None:
    """A storage or marker left over (not wrapped in a tensor) means a format this reader does not know."""
    if depth > 100:
        return
    if isinstance(obj, (_Storage, _StorageType, _Callable, _TensorType)):
        raise CheckpointFormatError(f"{source}: a bare {obj!r} is not supported (only tensors are)")
    if isinstance(obj, dict):
        for v in obj.values():
            _check_result(v, source, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_result(v, source, depth + 1)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------

class _Global:
    """Pickled as the global ``module.name`` (a torch object we do not import)."""
    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # the pickler requires a reduce function to be callable
        raise TypeError(f"{self.module}.{self.name} is a placeholder for pickling")


class _OutStorage:
    __slots__ = ("key", "array", "type_name", "numel")

    def __init__(self, key: str, array: np.ndarray, type_name: tuple[str, str], numel: int):
        self.key, self.array, self.type_name, self.numel = key, array, type_name, numel


class _OutTensor:
    __slots__ = ("storage", "shape", "dtype_name", "typed")

    def __init__(self, storage: _OutStorage, shape: tuple[int, ...], dtype_name: str, typed: bool):
        self.storage, self.shape, self.dtype_name, self.typed = storage, shape, dtype_name, typed

    def __reduce_ex__(self, protocol):
        stride, acc = [], 1
        for n in reversed(self.shape):
            stride.append(acc)
            acc *= max(n, 1)
        args = (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False, collections.OrderedDict())
        if self.typed:
            return _Global("torch._utils", "_rebuild_tensor_v2"), args
        return _Global("torch._utils", "_rebuild_tensor_v3"), args + (_Global("torch", self.dtype_name),)


_TORCH_NAME_BY_NP = {np.dtype(v): k for k, v in reversed(list(_NP_BY_TORCH_DTYPE.items()))}


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: it lets us emit globals we cannot import
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_torch_global(self, obj: _Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

    dispatch[_Global] = _save_torch_global

    def persistent_id(self, obj):
        if isinstance(obj, _OutStorage):
            return ("storage", _Global(*obj.type_name), obj.key, "cpu", obj.numel)
        return None


def _to_saveable(obj: Any, storages: list[_OutStorage], where: str) -> Any:
    if obj is None or (isinstance(obj, (bool, int, float, str, bytes)) and not isinstance(obj, np.generic)):
        return obj  # (np.float64 subclasses float: numpy scalars become 0-d tensors below)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _to_saveable(v, storages, f"{where}[{k!r}]")) for k, v in obj.items())
    if isinstance(obj, Mapping):
        return {k: _to_saveable(v, storages, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_to_saveable(v, storages, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, argparse.Namespace):
        raise TypeError(f"{where}: argparse.Namespace cannot be read by torch.load(weights_only=True); "
                        "save vars(args) instead")
    if isinstance(obj, (np.ndarray, np.generic)) or hasattr(obj, "__array__"):
        arr = np.asarray(obj)
        name = _TORCH_NAME_BY_NP.get(arr.dtype.newbyteorder("="))
        if name is None:
            raise TypeError(f"{where}: arrays of dtype {arr.dtype} cannot be saved as torch tensors")
        arr = np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C")  # (keeps 0-d, unlike ascontiguousarray)
        storage_cls = _STORAGE_BY_DTYPE.get(name)
        if storage_cls:
            st = _OutStorage(str(len(storages)), arr, ("torch", storage_cls), arr.size)
        else:  # dtypes without a legacy storage class (uint16/32/64, float8): untyped bytes + dtype
            st = _OutStorage(str(len(storages)), arr, ("torch.storage", "UntypedStorage"), arr.nbytes)
        storages.append(st)
        return _OutTensor(st, arr.shape, name, typed=storage_cls is not None)
    raise TypeError(f"{where}: cannot save an object of type {type(obj).__module__}.{type(obj).__qualname__} "
                    "(only dicts, lists, tuples, numbers, strings and arrays)")


_ALIGN = 64


def _write_aligned(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Writes a stored entry whose data starts at a multiple of 64 bytes (as torch does, for mmap)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 0
    start = zf.fp.tell() + 30 + len(name.encode("utf-8")) + 4
    pad = (-start) % _ALIGN
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # extra field id "FB", like torch's
    zf.writestr(info, data)


def save_pth(obj: Any, path: str | os.PathLike) -> None:
    """Writes ``obj`` (nested dicts / lists / tuples of numpy or JAX arrays, numbers and strings) in the
    ``torch.save`` zip format, readable by ``torch.load(path, weights_only=True)`` as tensors.

    The file is written to a temporary name beside ``path`` and renamed into place when complete.
    """
    path = Path(path)
    storages: list[_OutStorage] = []
    tree = _to_saveable(obj, storages, "obj")
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(tree)
    stem = path.name.split(".")[0]
    archive = stem if re.fullmatch(r"[A-Za-z0-9_\-]+", stem or "") else "archive"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_aligned(zf, f"{archive}/data.pkl", buf.getvalue())
            _write_aligned(zf, f"{archive}/.format_version", b"1")
            _write_aligned(zf, f"{archive}/.storage_alignment", str(_ALIGN).encode())
            _write_aligned(zf, f"{archive}/byteorder", b"little")
            for st in storages:
                _write_aligned(zf, f"{archive}/data/{st.key}", st.array.tobytes())
            _write_aligned(zf, f"{archive}/version", b"3\n")
            _write_aligned(zf, f"{archive}/.data/serialization_id",
                           str(uuid.uuid4().int).zfill(40)[:40].encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
