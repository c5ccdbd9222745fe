"""sresformer_jax.pth: torch-free, safe reading and writing of torch.save zip checkpoints (no torch needed).

Compatibility with real torch (torch.save → load_pth, save_pth → torch.load(weights_only=True)) was checked
by hand against torch 2.13; these tests pin the format with hand-built archives in torch's layout.
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from sresformer_jax.pth import CheckpointArgs, CheckpointFormatError, UnsafeCheckpointError, load_pth, save_pth


# ------------------------------------------------------------------------------------------------ helpers

def _zip(path, pkl: bytes, storages: dict[str, bytes] = {}, archive: str = "archive", byteorder: str | None = "little"):
    """A checkpoint in torch's layout: <archive>/data.pkl, data/<key>, version, byteorder."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", pkl)
        if byteorder is not None:
            zf.writestr(f"{archive}/byteorder", byteorder)
        for key, data in storages.items():
            zf.writestr(f"{archive}/data/{key}", data)
        zf.writestr(f"{archive}/version", "3\n")
    return path


# Protocol-2 pickle opcodes, assembled by hand (what torch.save's pickler emits for a state dict).
def _g(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _s(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(n):
    return b"J" + struct.pack("<i", n)


def _t(*items):
    return b"(" + b"".join(items) + b"t"


_EMPTY_ORDERED_DICT = _g("collections", "OrderedDict") + b")R"


def _tensor(storage_type: bytes, key, numel, offset, size, stride, rebuild="_rebuild_tensor_v2", extra=b""):
    pid = _t(_s("storage"), storage_type, _s(key), _s("cpu"), _i(numel)) + b"Q"  # BINPERSID
    args = _t(pid, _i(offset), _t(*map(_i, size)), _t(*map(_i, stride)), b"\x89", _EMPTY_ORDERED_DICT, extra)
    return _g("torch._utils", rebuild) + args + b"R"


def _dict_pickle(**entries: bytes) -> bytes:
    return b"\x80\x02}(" + b"".join(_s(k) + v for k, v in entries.items()) + b"u."


# ------------------------------------------------------------------------------------------------ round trip

def test_round_trip_dtypes_shapes_and_nesting(tmp_path):
    rng = np.random.default_rng(0)
    sd = collections.OrderedDict([
        ("f32", rng.standard_normal((3, 4)).astype(np.float32)),
        ("f64", rng.standard_normal((2, 3, 4))),
        ("f16", rng.standard_normal(5).astype(np.float16)),
        ("bf16", rng.standard_normal(5).astype(ml_dtypes.bfloat16)),
        ("i64", rng.integers(-10**12, 10**12, 7)),
        ("i32", np.arange(-3, 3, dtype=np.int32)), ("i16", np.arange(4, dtype=np.int16)),
        ("i8", np.arange(-2, 2, dtype=np.int8)), ("u8", np.arange(4, dtype=np.uint8)),
        ("bool", np.array([True, False, True])),
        ("scalar", np.asarray(17, np.int64)),                 # like BN num_batches_tracked
        ("empty", np.zeros((0, 3), np.float32)),
        ("transposed", rng.standard_normal((4, 5)).astype(np.float32).T),   # non-contiguous input
        ("big_endian", np.arange(6, dtype=">f4").reshape(2, 3)),
    ])
    obj = {"model": sd, "epoch": 3, "acc": 79.5, "name": "ti", "flags": [True, None, 2],
           "nested": {"a": (np.ones(2, np.float32), "x"), "b": {}}, "raw": b"\x00\xff"}
    path = tmp_path / "ckpt.pth"
    save_pth(obj, path)
    back = load_pth(path)

    assert type(back["model"]) is collections.OrderedDict and list(back["model"]) == list(sd)
    for k, v in sd.items():
        got = back["model"][k]
        assert isinstance(got, np.ndarray) and got.shape == v.shape, k
        assert got.dtype == v.dtype.newbyteorder("="), (k, got.dtype)
        np.testing.assert_array_equal(got, v, err_msg=k)
        assert got.flags.c_contiguous and got.flags.writeable, k
    assert (back["epoch"], back["acc"], back["name"], back["flags"], back["raw"]) == (3, 79.5, "ti", [True, None, 2],
                                                                                   b"\x00\xff")
    np.testing.assert_array_equal(back["nested"]["a"][0], np.ones(2, np.float32))
    assert back["nested"]["a"][1] == "x" and back["nested"]["b"] == {}


def test_round_trip_jax_arrays_and_numpy_scalars(tmp_path):
    import jax.numpy as jnp
    save_pth({"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "s": np.float64(2.5)}, tmp_path / "j.pth")
    back = load_pth(tmp_path / "j.pth")
    np.testing.assert_array_equal(back["w"], np.arange(6.0, dtype=np.float32).reshape(2, 3))
    assert back["s"].shape == () and back["s"].dtype == np.float64 and back["s"] == 2.5


def test_written_layout_matches_torch(tmp_path):
    """One folder, stored entries, 64-byte aligned data (torch's mmap loading needs it), version 3."""
    path = tmp_path / "layout.pth"
    save_pth({"a": np.ones(3, np.float32), "b": np.zeros((2, 2), np.float64)}, path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {"layout"}
        assert {"layout/data.pkl", "layout/version", "layout/byteorder", "layout/data/0", "layout/data/1"} <= set(names)
        assert zf.read("layout/version") == b"3\n" and zf.read("layout/byteorder") == b"little"
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
        assert zf.read("layout/data.pkl")[:2] == b"\x80\x02"  # protocol 2, like torch
    assert not [p for p in tmp_path.iterdir() if p.name != "layout.pth"]  # no temporary file left


def test_save_refuses_objects_torch_cannot_load_safely(tmp_path):
    with pytest.raises(TypeError, match=r"obj\['x'\].*object"):
        save_pth({"x": object()}, tmp_path / "a.pth")
    with pytest.raises(TypeError, match="Namespace"):
        save_pth({"args": argparse.Namespace(lr=0.1)}, tmp_path / "b.pth")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ hand-built archives

def test_hand_built_non_contiguous_stride_and_offset(tmp_path):
    base = np.arange(12, dtype="<f4")
    pkl = _dict_pickle(w=_tensor(_g("torch", "FloatStorage"), "0", 12, 2, (3, 3), (1, 3)),  # transposed view
                       e=_tensor(_g("torch", "FloatStorage"), "0", 12, 5, (2, 3), (0, 1)))  # stride 0 (expand)
    back = load_pth(_zip(tmp_path / "h.pth", pkl, {"0": base.tobytes()}))
    want = np.lib.stride_tricks.as_strided(base[2:], (3, 3), (4, 12))
    np.testing.assert_array_equal(back["w"], want)
    np.testing.assert_array_equal(back["w"], [[2, 5, 8], [3, 6, 9], [4, 7, 10]])
    np.testing.assert_array_equal(back["e"], [[5, 6, 7], [5, 6, 7]])
    assert back["w"].flags.c_contiguous and back["w"].base is None  # a copy, not a view of the file's bytes


def test_hand_built_dtype_storage_forms_and_byteorder(tmp_path):
    """Legacy classes, a dtype as storage type, UntypedStorage + _rebuild_tensor_v3, _rebuild_parameter, big-endian."""
    pkl = _dict_pickle(
        by_dtype=_tensor(_g("torch", "float64"), "0", 3, 0, (3,), (1,)),
        untyped=_tensor(_g("torch.storage", "UntypedStorage"), "1", 8, 0, (2, 2), (2, 1),
                        rebuild="_rebuild_tensor_v3", extra=_g("torch", "int16")),
        param=_g("torch._utils", "_rebuild_parameter")
        + _t(_tensor(_g("torch", "HalfStorage"), "2", 2, 0, (2,), (1,)), b"\x88", _EMPTY_ORDERED_DICT) + b"R",
        bf16=_tensor(_g("torch", "BFloat16Storage"), "3", 2, 0, (2,), (1,)),
        long=_tensor(_g("torch", "LongStorage"), "4", 1, 0, (), ()),
    )
    bf16 = np.array([1.5, -2.0], ml_dtypes.bfloat16)
    storages = {"0": np.array([1.0, 2.0, 3.0], ">f8").tobytes(), "1": np.array([1, -2, 3, 4], ">i2").tobytes(),
                "2": np.array([0.5, 4.0], ">f2").tobytes(), "3": bf16.view(np.uint16).astype(">u2").tobytes(),
                "4": np.array([7], ">i8").tobytes()}
    back = load_pth(_zip(tmp_path / "big.pth", pkl, storages, byteorder="big"))
    np.testing.assert_array_equal(back["by_dtype"], [1.0, 2.0, 3.0])
    assert back["by_dtype"].dtype == np.float64
    np.testing.assert_array_equal(back["untyped"], [[1, -2], [3, 4]])
    assert back["untyped"].dtype == np.int16
    np.testing.assert_array_equal(back["param"], np.array([0.5, 4.0], np.float16))
    np.testing.assert_array_equal(back["bf16"], bf16)
    assert back["bf16"].dtype == ml_dtypes.bfloat16
    assert back["long"].shape == () and back["long"] == 7 and back["long"].dtype == np.int64


def test_training_checkpoint_with_namespace_args(tmp_path):
    """Official training scripts save {'model': ..., 'optimizer': ..., 'epoch': ..., 'args': Namespace(...)}."""
    ns = _g("argparse", "Namespace") + b")\x81" + b"}(" + _s("lr") + b"G" + struct.pack(">d", 5e-4) \
        + _s("model") + _s("spikingresformer_ti") + b"u" + b"b"  # NEWOBJ + BUILD, as protocol 2 pickles it
    optimizer = b"}(" + _s("state") + b"}(" + _i(0) + b"}(" + _s("momentum_buffer") \
        + _tensor(_g("torch", "FloatStorage"), "1", 2, 0, (2,), (1,)) + b"uu" + _s("param_groups") \
        + b"](}(" + _s("lr") + b"G" + struct.pack(">d", 0.1) + b"ue" + b"u"
    model = _g("collections", "OrderedDict") + b")R(" + _s("w") \
        + _tensor(_g("torch", "FloatStorage"), "0", 2, 0, (2,), (1,)) + b"u"
    pkl = _dict_pickle(model=model, optimizer=optimizer, epoch=_i(299), args=ns)
    back = load_pth(_zip(tmp_path / "train.pth", pkl, {"0": np.array([1, 2], "<f4").tobytes(),
                                                       "1": np.array([3, 4], "<f4").tobytes()}))
    np.testing.assert_array_equal(back["model"]["w"], [1, 2])
    np.testing.assert_array_equal(back["optimizer"]["state"][0]["momentum_buffer"], [3, 4])
    assert back["optimizer"]["param_groups"] == [{"lr": 0.1}] and back["epoch"] == 299
    args = back["args"]
    assert isinstance(args, argparse.Namespace) and isinstance(args, CheckpointArgs)
    assert vars(args) == {"lr": 5e-4, "model": "spikingresformer_ti"}


@pytest.mark.parametrize("offset,size,stride", [(10, (3,), (1,)), (0, (2, 2), (11, 1))])
def test_tensor_reading_past_its_storage_is_refused(tmp_path, offset, size, stride):
    pkl = _dict_pickle(w=_tensor(_g("torch", "FloatStorage"), "0", 12, offset, size, stride))
    with pytest.raises(CheckpointFormatError, match="storage 0, which has 12"):
        load_pth(_zip(tmp_path / "oob.pth", pkl, {"0": np.zeros(12, "<f4").tobytes()}))


# ------------------------------------------------------------------------------------------------ safety

class _Touch:
    """Unpickling this would run ``os.system("touch <path>")``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    pkl = pickle.dumps({"model": {"w": 1}, "x": _Touch(target)}, protocol=2)
    path = _zip(tmp_path / "evil.pth", pkl)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_pth(path)
    assert f"{os.system.__module__}.system" in str(e.value)  # posix.system on Linux
    assert isinstance(e.value, ValueError)
    assert not target.exists()
    # Control: the same payload really would have created the file.
    pickle.loads(pkl)
    assert target.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("__builtin__", "exec"), ("builtins", "getattr"),
                                         ("subprocess", "Popen"), ("torch", "load"), ("numpy", "load"),
                                         ("torch._utils", "_rebuild_device_tensor_from_numpy")])
def test_globals_off_the_allow_list_are_refused(tmp_path, module, name):
    pkl = b"\x80\x02" + _g(module, name) + _t(_s("print(1)")) + b"R."
    with pytest.raises(UnsafeCheckpointError, match=f"'{module.replace('__builtin__', 'builtins')}.{name}'"):
        load_pth(_zip(tmp_path / "g.pth", pkl))


def test_allowed_stand_ins_cannot_be_patched_by_the_pickle(tmp_path):
    # BUILD with a slot-state on the OrderedDict stand-in would setattr on it: refused.
    pkl = b"\x80\x02" + _g("collections", "OrderedDict") + b"N}(" + _s("fn") + _i(1) + b"u\x86b."
    with pytest.raises(UnsafeCheckpointError, match="set attribute 'fn'"):
        load_pth(_zip(tmp_path / "patch.pth", pkl))


def test_non_zip_files_are_refused_with_a_clear_message(tmp_path):
    raw = tmp_path / "legacy.pth"
    raw.write_bytes(pickle.dumps({"model": {"w": [1.0]}}, protocol=2))
    with pytest.raises(CheckpointFormatError, match=r"legacy \(pre-1\.6\) torch\.save format is not supported; "
                                                    r"re-save it with torch\.save\(\.\.\., "
                                                    r"_use_new_zipfile_serialization=True\)"):
        load_pth(raw)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointFormatError, match="not a zip archive"):
        load_pth(text)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pth(tmp_path / "missing.pth")


def test_zip_without_data_pkl_is_refused(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointFormatError, match="not a torch.save archive"):
        load_pth(path)


def test_missing_storage_entry_is_a_format_error(tmp_path):
    pkl = _dict_pickle(w=_tensor(_g("torch", "FloatStorage"), "7", 2, 0, (2,), (1,)))
    with pytest.raises(CheckpointFormatError, match="data/7 is missing"):
        load_pth(_zip(tmp_path / "m.pth", pkl))
