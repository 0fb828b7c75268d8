"""Checkpoint readers without torch: `torch.save` files (zip and legacy) and safetensors, hostile files refused."""

import collections
import io
import json
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest
import torch

from keras_dla.weights import readers
from tests.reference import save_safetensors


def _sample_state_dict():
    """Tensors of every dtype a checkpoint may carry, a strided view and two views of one storage."""
    torch.manual_seed(0)
    shared = torch.randn(10)
    state = collections.OrderedDict(
        conv=torch.randn(4, 3, 3, 3),
        transposed=torch.randn(3, 5).t(),  # non-contiguous: strides (1, 5)
        half=torch.randn(7).half(),
        bf16=torch.randn(6).to(torch.bfloat16),
        double=torch.randn(2, 2, dtype=torch.float64),
        steps=torch.tensor(17),  # num_batches_tracked: an int64 scalar
        ints=torch.arange(5, dtype=torch.int32),
        flags=torch.tensor([True, False, True]),
        whole=shared,
        window=shared[3:8],  # a view at an offset into the same storage
    )
    state._metadata = {"": {"version": 1}}  # what nn.Module.state_dict() attaches
    return state


def _as_numpy(tensor):
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def _assert_same(read, state):
    assert list(read) == list(state)
    for key, tensor in state.items():
        expected = _as_numpy(tensor)
        assert read[key].dtype == expected.dtype, key
        assert read[key].shape == expected.shape, key
        np.testing.assert_array_equal(read[key], expected, err_msg=key)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pth_round_trip(tmp_path, zip_format):
    state = _sample_state_dict()
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    _assert_same(readers.read_state_dict(path), state)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pth_training_checkpoint_and_data_parallel_prefix(tmp_path, zip_format):
    state = collections.OrderedDict(("module." + k, v) for k, v in _sample_state_dict().items())
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 90, "arch": "dla34", "best_prec1": 74.6, "state_dict": state}, path,
               _use_new_zipfile_serialization=zip_format)  # fmt: skip
    read = readers.read_state_dict(path)
    _assert_same(read, collections.OrderedDict((k[len("module.") :], v) for k, v in state.items()))


def test_pth_parameters_are_tensors(tmp_path):
    state = {"w": torch.nn.Parameter(torch.randn(3, 2))}
    torch.save(state, tmp_path / "p.pth")
    np.testing.assert_array_equal(readers.read_state_dict(tmp_path / "p.pth")["w"], state["w"].detach().numpy())


def test_safetensors_matches_pth(tmp_path):
    state = {k: v for k, v in _sample_state_dict().items() if k not in ("window", "whole")}  # no shared storage
    torch.save(state, tmp_path / "a.pth")
    save_safetensors({k: _as_numpy(v) for k, v in state.items()}, tmp_path / "a.safetensors")
    a, b = readers.read_state_dict(tmp_path / "a.pth"), readers.read_state_dict(tmp_path / "a.safetensors")
    for key in state:
        np.testing.assert_array_equal(a[key], b[key])


# --- hostile and broken files -------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this object calls `open(marker, "w")`: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _legacy_file(path, payload_pickle):
    # The legacy layout: magic, protocol, sys info, the object pickle, the (empty) storage key list.
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(payload_pickle)
        pickle.dump([], f, protocol=2)


def _zip_file(path, payload_pickle):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload_pickle)
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("where", ["top", "inside-state-dict"])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, layout, where):
    marker = tmp_path / "code-ran"
    evil = _RunsCode(marker)
    payload = pickle.dumps(evil if where == "top" else {"conv.weight": evil}, protocol=2)
    # The pickle really would run code: a plain unpickler creates the marker.
    loaded = pickle.loads(payload)
    (loaded if where == "top" else loaded["conv.weight"]).close()
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.pth"
    (_zip_file if layout == "zip" else _legacy_file)(path, payload)
    with pytest.raises(ValueError, match=r"refusing to load (io|builtins)\.open.*Received: path="):
        readers.read_state_dict(path)
    assert not marker.exists()


def test_numpy_pickles_are_refused(tmp_path):
    # torch.save of numpy arrays pickles numpy's reconstructor: not a PyTorch state dict, and not trusted.
    torch.save({"w": np.ones(3, "float32")}, tmp_path / "numpy.pth")
    with pytest.raises(ValueError, match="refusing to load numpy"):
        readers.read_state_dict(tmp_path / "numpy.pth")


def test_build_on_a_stand_in_is_refused(tmp_path):
    # GLOBAL torch FloatStorage, then BUILD with a state: a pickle must not set attributes of the stand-ins.
    payload = b"\x80\x02ctorch\nFloatStorage\n}X\x04\x00\x00\x00nameX\x03\x00\x00\x00bads\x86b."
    _zip_file(tmp_path / "build.pth", payload)
    with pytest.raises(ValueError, match="Received: path="):
        readers.read_state_dict(tmp_path / "build.pth")


def test_tensor_reading_past_its_storage_is_refused(tmp_path):
    state = {"w": torch.zeros(4)}
    torch.save(state, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src:
        entries = {name: src.read(name) for name in src.namelist()}
    pkl_name = next(n for n in entries if n.endswith("/data.pkl"))
    # Claim a shape of (400,) over a storage of 4 values: as_strided would read foreign memory.
    original = entries[pkl_name]
    entries[pkl_name] = original.replace(b"K\x04\x85", b"M\x90\x01\x85")  # size (4,) -> (400,)
    assert entries[pkl_name] != original
    with zipfile.ZipFile(tmp_path / "bad.pth", "w") as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    with pytest.raises(ValueError, match="reads past its storage"):
        readers.read_state_dict(tmp_path / "bad.pth")


def test_truncated_legacy_file(tmp_path):
    torch.save({"w": torch.randn(100)}, tmp_path / "full.pth", _use_new_zipfile_serialization=False)
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 50])
    with pytest.raises(ValueError, match="Truncated"):
        readers.read_state_dict(tmp_path / "cut.pth")


def test_legacy_storage_count_mismatch(tmp_path):
    torch.save({"w": torch.randn(10)}, tmp_path / "full.pth", _use_new_zipfile_serialization=False)
    data = bytearray((tmp_path / "full.pth").read_bytes())
    count_at = len(data) - 10 * 4 - 8
    assert struct.unpack("<q", data[count_at : count_at + 8]) == (10,)
    data[count_at : count_at + 8] = struct.pack("<q", 11)
    (tmp_path / "bad.pth").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="should hold 10 values"):
        readers.read_state_dict(tmp_path / "bad.pth")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", pickle.dumps([1, 2, 3])])
def test_not_a_checkpoint(tmp_path, content):
    (tmp_path / "junk.pth").write_bytes(content)
    with pytest.raises(ValueError, match="Received: path="):
        readers.read_state_dict(tmp_path / "junk.pth")


def test_pickle_of_something_else_than_a_state_dict(tmp_path):
    buffer = io.BytesIO()
    torch.save([torch.zeros(2)], buffer)
    (tmp_path / "list.pth").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="does not hold a state dict"):
        readers.read_state_dict(tmp_path / "list.pth")


def test_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"Unsupported checkpoint format.*Received: path="):
        readers.read_state_dict(tmp_path / "weights.onnx")


class _OldStorage:
    """A storage as a PyTorch 0.3/0.4 file names it: by persistent id, saved from the GPU."""

    def __init__(self, key, values, view=None):
        self.key, self.values, self.view = key, values, view


class _OldTensor:
    """Pickles as PyTorch 0.3 did: `torch._utils._rebuild_tensor(storage, offset, torch.Size, stride)`."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, torch.Size(size), stride)

    def __reduce__(self):
        return (torch._utils._rebuild_tensor, self.args)


class _OldPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _OldStorage):
            # ('storage', type, root key, location, root numel, view metadata) of the legacy format.
            return ("storage", torch.cuda.FloatStorage, obj.key, "cuda:0", obj.values.size, obj.view)
        return None


def test_legacy_file_from_pytorch_0_3_saved_on_gpu(tmp_path):
    # Written by hand, byte for byte in the layout of torch/serialization.py's legacy save: the authors'
    # 2018 checkpoints predate `_rebuild_tensor_v2` and were saved from CUDA storages.
    root = np.arange(12, dtype="<f4")
    whole = _OldStorage("140", root)
    view = _OldStorage("140", root, view=("141", 4, 6))  # a storage view: values 4..9 of the root
    state = collections.OrderedDict(
        [("conv.weight", _OldTensor(whole, 0, (3, 4), (4, 1))), ("bn.bias", _OldTensor(view, 1, (2,), (2,)))]
    )
    buffer = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    _OldPickler(buffer, protocol=2).dump(state)
    pickle.dump(["140"], buffer, protocol=2)
    buffer.write(struct.pack("<q", root.size) + root.tobytes())
    (tmp_path / "old.pth").write_bytes(buffer.getvalue())

    read = readers.read_state_dict(tmp_path / "old.pth")
    np.testing.assert_array_equal(read["conv.weight"], root.reshape(3, 4))
    np.testing.assert_array_equal(read["bn.bias"], [5.0, 7.0])  # view offset 4, tensor offset 1, stride 2


def test_compressed_storage_is_refused(tmp_path):
    # torch.save never compresses; a deflated storage could inflate far past the file's size.
    torch.save({"w": torch.zeros(1000)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(tmp_path / "bomb.pth", "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match="is compressed"):
        readers.read_state_dict(tmp_path / "bomb.pth")


def test_tensor_size_that_overflows_int64_is_refused(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src:
        entries = {name: src.read(name) for name in src.namelist()}
    pkl_name = next(n for n in entries if n.endswith("/data.pkl"))
    original = entries[pkl_name]
    # size (4,) stride (1,) -> size (2**32, 2**32) stride (0, 0): 2**64 values, which int64 wraps to 0.
    huge = b"\x8a\x05\x00\x00\x00\x00\x01"  # LONG1: 2**32
    entries[pkl_name] = original.replace(b"K\x04\x85", huge + huge + b"\x86").replace(b"K\x01\x85", b"K\x00K\x00\x86")
    assert entries[pkl_name] != original
    with zipfile.ZipFile(tmp_path / "bad.pth", "w") as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    with pytest.raises(ValueError, match="reads past its storage"):
        readers.read_state_dict(tmp_path / "bad.pth")


# --- safetensors headers of the wrong structure, damaged zip archives ---------------------------------------------


def _safetensors_bytes(header, body=b"", header_len=None):
    """A safetensors file with `header` (an object, or JSON text as it is) and `body` after it."""
    text = header if isinstance(header, (str, bytes)) else json.dumps(header)
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + body


_F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header, body, message",
    [
        ("[1, 2]", b"", "the header is a JSON array, not an object"),
        ('"weights"', b"", "the header is a JSON string, not an object"),
        ("null", b"", "the header is a JSON null, not an object"),
        ("3", b"", "the header is a JSON number, not an object"),
        ({"w": [1, 2]}, b"", "the entry of tensor 'w' is a JSON array, not an object"),
        ({"w": "F32"}, b"", "the entry of tensor 'w' is a JSON string, not an object"),
        ({"w": None}, b"", "the entry of tensor 'w' is a JSON null, not an object"),
        ({"w": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "tensor 'w' has no dtype"),
        ({"w": {"dtype": "F32"}}, b"\0" * 8, "tensor 'w' has no shape, data_offsets"),
        ({"w": {**_F32, "dtype": 5}}, b"\0" * 8, "tensor 'w' has dtype 5, not one of"),
        ({"w": {**_F32, "dtype": ["F32"]}}, b"\0" * 8, "tensor 'w' has dtype ['F32'], not one of"),
        ({"w": {**_F32, "dtype": "F128"}}, b"\0" * 8, "tensor 'w' has dtype 'F128', not one of BF16, BOOL, F16"),
        ({"w": {**_F32, "shape": "2"}}, b"\0" * 8, "tensor 'w' has shape '2', not a list of non-negative"),
        ({"w": {**_F32, "shape": [-2]}}, b"\0" * 8, "tensor 'w' has shape [-2], not a list of non-negative"),
        ({"w": {**_F32, "shape": [2.0]}}, b"\0" * 8, "tensor 'w' has shape [2.0], not a list"),
        ({"w": {**_F32, "shape": [True, 2]}}, b"\0" * 8, "tensor 'w' has shape [True, 2], not a list"),
        ({"w": {**_F32, "shape": {"0": 2}}}, b"\0" * 8, "has shape {'0': 2}, not a list"),
        ({"w": {**_F32, "data_offsets": [0]}}, b"\0" * 8, "has data_offsets [0], not two integers"),
        ({"w": {**_F32, "data_offsets": [0, 4, 8]}}, b"\0" * 8, "has data_offsets [0, 4, 8], not two integers"),
        ({"w": {**_F32, "data_offsets": "0-8"}}, b"\0" * 8, "has data_offsets '0-8', not two integers"),
        ({"w": {**_F32, "data_offsets": [0, 8.0]}}, b"\0" * 8, "has data_offsets [0, 8.0], not two integers"),
        ({"w": {**_F32, "data_offsets": [0, None]}}, b"\0" * 8, "has data_offsets [0, None], not two integers"),
        ({"w": {**_F32, "data_offsets": [0, 16]}}, b"\0" * 8, "outside the 8 data bytes (a truncated file?)"),
        ({"w": {**_F32, "data_offsets": [-8, 0]}}, b"\0" * 8, "has data_offsets [-8, 0], outside the 8 data"),
        ({"w": {**_F32, "data_offsets": [8, 0]}}, b"\0" * 8, "has data_offsets [8, 0], outside"),
        ({"w": {**_F32, "data_offsets": [0, 4]}}, b"\0" * 8, "of shape [2] and dtype F32 needs 8 bytes, its"),
        ({"w": {**_F32, "shape": [2, 2]}}, b"\0" * 8, "of shape [2, 2] and dtype F32 needs 16 bytes"),
        ({"w": {**_F32, "dtype": "BF16"}}, b"\0" * 8, "and dtype BF16 needs 4 bytes, its data_offsets give 8"),
        ({"w": {**_F32, "shape": [2**40, 2**40]}}, b"\0" * 8, "needs 4835703278458516698824704 bytes"),
        ({"a": _F32, "b": {**_F32, "data_offsets": [4, 12]}}, b"\0" * 12, "tensors 'a' and 'b' overlap"),
        ({"a": _F32, "b": _F32}, b"\0" * 8, "tensors 'a' and 'b' overlap"),
        (
            {"a": {**_F32, "shape": [4], "data_offsets": [0, 16]}, "b": {**_F32, "data_offsets": [4, 12]}},
            b"\0" * 16,
            "tensors 'a' and 'b' overlap",
        ),
        ({"__metadata__": "pt", "w": _F32}, b"\0" * 8, "`__metadata__` is not an object of strings"),
        ({"__metadata__": {"format": 1}, "w": _F32}, b"\0" * 8, "`__metadata__` is not an object of strings"),
    ],
)
def test_safetensors_header_of_the_wrong_structure(tmp_path, header, body, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors_bytes(header, body))
    with pytest.raises(ValueError, match=f"^Not a valid safetensors file: .*{re.escape(message)}.*Received: path="):
        readers.read_state_dict(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "too short"),
        (b"\x05\x00", "too short"),
        (_safetensors_bytes({"w": _F32}, b"\0" * 8, header_len=10**6), "runs past the end of the file"),
        (_safetensors_bytes({"w": _F32}, b"\0" * 8, header_len=2**64 - 1), "runs past the end of the file"),
        (_safetensors_bytes("{not json", b""), "unreadable header"),
        (_safetensors_bytes(b"\xff\xfe{}", b""), "unreadable header"),
        (_safetensors_bytes("[" * 100000 + "]" * 100000, b""), "unreadable header: nested too deeply"),
    ],
)
def test_safetensors_that_is_not_one(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{re.escape(message)}.*Received: path="):
        readers.read_state_dict(path)


def test_safetensors_of_good_structure_still_reads(tmp_path):
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]},
        "b": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},
    }
    body = np.array([1.5, -2.0], "<f4").tobytes() + np.array(7, "<i8").tobytes()
    (tmp_path / "ok.safetensors").write_bytes(_safetensors_bytes(header, body))
    read = readers.read_state_dict(tmp_path / "ok.safetensors")
    np.testing.assert_array_equal(read["a"], [1.5, -2.0])
    assert read["empty"].shape == (0, 3) and read["b"] == 7 and read["b"].shape == ()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_zip_pth_says_it_is_incomplete(tmp_path, fraction):
    torch.save({"w": torch.randn(1000), "b": torch.randn(10)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: max(4, int(len(data) * fraction))])
    with pytest.raises(ValueError, match=r"^Incomplete PyTorch checkpoint: .*cut-short download.*Received: path="):
        readers.read_state_dict(tmp_path / "cut.pth")


def test_zip_pth_with_damaged_bytes_is_one_sentence(tmp_path):
    torch.save({"w": torch.randn(1000)}, tmp_path / "full.pth")
    data = bytearray((tmp_path / "full.pth").read_bytes())
    with zipfile.ZipFile(tmp_path / "full.pth") as archive:
        pkl = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    name_length, extra_length = struct.unpack("<HH", data[pkl.header_offset + 26 : pkl.header_offset + 30])
    start = pkl.header_offset + 30 + name_length + extra_length  # where data.pkl's bytes begin
    data[start + 2] ^= 0xFF  # a byte of data.pkl: its CRC no longer matches
    (tmp_path / "flipped.pth").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"^Damaged PyTorch checkpoint: the zip archive cannot be read \(Bad CRC"):
        readers.read_state_dict(tmp_path / "flipped.pth")


@pytest.mark.parametrize(
    "payload, message",
    [
        (pickle.dumps([1, 2, 3], protocol=2), "holding a list"),
        (pickle.dumps(None, protocol=2), "holding a NoneType"),
        (pickle.dumps("state", protocol=2), "holding a str"),
        (pickle.dumps({}, protocol=2), "holding a dict"),
        (pickle.dumps({"w": 1.0, "b": 2}, protocol=2), "holding a dict"),
        (pickle.dumps({1: "w"}, protocol=2), "holding a dict"),
        (pickle.dumps({"state_dict": {"w": [1.0]}}, protocol=2), "holding a dict"),
        (b"not a pickle at all", "Cannot read the PyTorch checkpoint"),
        (b"\x80\x02}q\x00", "Cannot read the PyTorch checkpoint"),  # cut short
    ],
)
def test_zip_pth_whose_pickle_is_not_a_dict_of_tensors(tmp_path, payload, message):
    _zip_file(tmp_path / "odd.pth", payload)
    with pytest.raises(ValueError, match="Received: path=") as caught:
        readers.read_state_dict(tmp_path / "odd.pth")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_zip_pth_with_tensors_and_other_values_or_a_bad_byte_order(tmp_path):
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2), "epoch": 3}, buffer)
    (tmp_path / "mixed.pth").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="does not hold a state dict"):
        readers.read_state_dict(tmp_path / "mixed.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pth")
    with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(tmp_path / "order.pth", "w") as dst:
        names = src.namelist()
        prefix = next(n for n in names if n.endswith("/data.pkl"))[: -len("data.pkl")]
        for name in names:
            if name != f"{prefix}byteorder":
                dst.writestr(name, src.read(name))
        dst.writestr(f"{prefix}byteorder", b"\xff\xfe middle")
    with pytest.raises(ValueError, match="Unknown byte order in the PyTorch checkpoint. Received: path="):
        readers.read_state_dict(tmp_path / "order.pth")
