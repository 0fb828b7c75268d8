"""Checkpoint readers that need no PyTorch: a state dict as `{key: numpy array}`.

`read_state_dict(path)` dispatches on the file name. Formats:
- `.safetensors`: an 8-byte little-endian header length, a JSON header of
  `{key: {"dtype", "shape", "data_offsets"}}`, then the raw little-endian tensor bytes.
- `.pth` / `.pt` / `.bin`, the two formats of `torch.save`:
  - zip (PyTorch >= 1.6): a zip archive holding `<name>/data.pkl`, the pickled state dict whose tensors
    refer to storages by key, and each storage's raw bytes in `<name>/data/<key>`;
  - legacy (before 1.6, the authors' 2018 files): consecutive pickles in one stream: a magic number, the
    protocol version, system info (byte order), the state dict, the list of storage keys; then each
    storage as an 8-byte little-endian element count followed by its raw bytes.

A pickle can run any code while it loads, so the `.pth` readers use a restricted unpickler: a state dict
pickle references only `collections.OrderedDict`, the tensor rebuild functions of `torch._utils` and the
storage types (`torch.FloatStorage`, ...). Those names resolve to inert stand-ins defined here; any other
global is refused before it is looked up, so a hostile pickle can only fail. No torch import is needed.
"""

import collections
import io
import json
import math
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _bfloat16_to_float32(raw):
    # bfloat16 is the upper half of a float32: widen the bit pattern, then reinterpret.
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value):
    """The JSON name of the type of a parsed JSON value (`object`, `array`, ...)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _safetensors_error(path, what):
    return ValueError(f"Not a valid safetensors file: {what}. Received: path={path!r}")


def _check_safetensors_header(header, body_size, path):
    """`[(key, dtype, shape, begin, end)]` of a parsed safetensors header, every field checked.

    The structure of the format (huggingface/safetensors): a JSON object of tensor names to objects with a
    `dtype` string, a `shape` list of non-negative integers and `data_offsets` `[begin, end]` into the data
    that follows the header, `end - begin` being the tensor's byte size; tensors do not overlap. An optional
    `__metadata__` object maps strings to strings.
    """
    if not isinstance(header, dict):
        raise _safetensors_error(path, f"the header is a JSON {_json_type(header)}, not an object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _safetensors_error(path, "`__metadata__` is not an object of strings")
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _safetensors_error(path, f"the entry of tensor {key!r} is a JSON {_json_type(info)}, not an object")
        missing = [field for field in ("dtype", "shape", "data_offsets") if field not in info]
        if missing:
            raise _safetensors_error(path, f"tensor {key!r} has no {', '.join(missing)}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or (dtype != "BF16" and dtype not in _SAFETENSORS_DTYPES):
            known = ", ".join(sorted([*_SAFETENSORS_DTYPES, "BF16"]))
            raise _safetensors_error(path, f"tensor {key!r} has dtype {dtype!r}, not one of {known}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _safetensors_error(path, f"tensor {key!r} has shape {shape!r}, not a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            raise _safetensors_error(path, f"tensor {key!r} has data_offsets {offsets!r}, not two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= body_size:
            raise _safetensors_error(
                path,
                f"tensor {key!r} has data_offsets {offsets}, outside the {body_size} data bytes (a truncated file?)",
            )
        itemsize = 2 if dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        expected = math.prod(shape) * itemsize  # Python ints: a hostile shape cannot overflow into a match
        if end - begin != expected:
            raise _safetensors_error(
                path,
                f"tensor {key!r} of shape {shape} and dtype {dtype} needs {expected} bytes, its data_offsets give "
                f"{end - begin}",
            )
        entries.append((key, dtype, tuple(shape), begin, end))
    previous = None  # of the tensors with data, sorted by where it starts: the one that ends last so far
    for entry in sorted((e for e in entries if e[4] > e[3]), key=lambda e: e[3]):
        if previous is not None and entry[3] < previous[4]:
            raise _safetensors_error(path, f"the data of tensors {previous[0]!r} and {entry[0]!r} overlap")
        if previous is None or entry[4] > previous[4]:
            previous = entry
    return entries


def read_safetensors(path):
    """Reads every tensor of a `.safetensors` file into numpy arrays; a malformed file is one ValueError."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"Not a safetensors file (too short). Received: path={path!r}")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(
            f"Not a safetensors file, or a truncated one: its header length ({header_len} bytes) runs past the end "
            f"of the file ({len(data)} bytes). Received: path={path!r}"
        )
    if header_len > _MAX_HEADER_BYTES:
        raise ValueError(
            f"Not a safetensors file: its header length ({header_len} bytes) exceeds {_MAX_HEADER_BYTES} bytes. "
            f"Received: path={path!r}"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ValueError(f"Not a safetensors file (unreadable header: {reason}). Received: path={path!r}") from None
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for key, dtype, shape, begin, end in _check_safetensors_header(header, len(body), path):
        raw = body[begin:end]
        if dtype == "BF16":
            array = _bfloat16_to_float32(raw)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<"))
        tensors[key] = array.reshape(shape)
    return tensors


# --- PyTorch .pth ----------------------------------------------------------------------------------------

# Storage class name -> numpy dtype (little-endian; byte order is applied per file). "BFloat16" is widened.
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bf16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _Inert:
    """Base of the unpickler's stand-ins: not callable, and a pickle cannot set their state (BUILD)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"a state dict does not set the state of {type(self).__name__}")


class _StorageType(_Inert):
    """Stands in for `torch.FloatStorage` & co. in a persistent id."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _StorageRef(_Inert):
    """A storage named by a persistent id; its bytes are read after the pickle."""

    __slots__ = ("key", "dtype", "numel", "view")

    def __init__(self, key, dtype, numel, view=None):
        self.key, self.dtype, self.numel, self.view = key, dtype, numel, view


class _TensorRef(_Inert):
    """What `_rebuild_tensor[_v2]` returned: a strided view of a storage, materialised later."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _is_int_tuple(value):
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    # `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])` and the
    # PyTorch 0.3 `_rebuild_tensor(storage, offset, size, stride)`: only the view matters here.
    if not (
        isinstance(storage, _StorageRef)
        and isinstance(storage_offset, int)
        and _is_int_tuple(size)
        and _is_int_tuple(stride)
        and len(size) == len(stride)
    ):
        raise pickle.UnpicklingError("malformed tensor record (expected storage, offset, size, stride)")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("malformed parameter record (expected a tensor)")
    return data


def _size(*args):
    # torch.Size(sequence), as PyTorch 0.3 pickled tensor sizes.
    return tuple(*args)


# Every global a state dict pickle may name, and what it resolves to. Nothing else is ever looked up.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): _size,
}
for _module in ("torch", "torch.cuda"):  # GPU-saved files name torch.cuda.FloatStorage
    for _name in _STORAGE_DTYPES:
        _SAFE_GLOBALS[(_module, _name)] = _StorageType(_name)


class _StateDictUnpickler(pickle.Unpickler):
    """Loads a state dict pickle, refusing every global outside `_SAFE_GLOBALS`."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.storages = {}

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a PyTorch state dict holds only tensors, numbers and "
                "strings, so this checkpoint is not a plain state dict or has been tampered with"
            ) from None

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel) in zip files; legacy files add view_metadata,
        # None or (view_key, offset, view_numel) for storages that were views of a larger one.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not (isinstance(storage_type, _StorageType) and isinstance(key, str) and isinstance(numel, int)):
            raise pickle.UnpicklingError(f"malformed storage record {pid!r:.80}")
        if view is not None and not (isinstance(view, tuple) and len(view) == 3 and _is_int_tuple(view[1:])):
            raise pickle.UnpicklingError(f"malformed storage view {view!r:.80}")
        dtype = _STORAGE_DTYPES[storage_type.name]
        known = self.storages.setdefault(key, _StorageRef(key, dtype, numel))
        if known.dtype != dtype or known.numel != numel:
            raise pickle.UnpicklingError(f"storage {key!r} is declared with two types or sizes")
        if view is None:
            return known
        view_key, offset, view_numel = view
        return _StorageRef(key, dtype, numel, view=(offset, view_numel))


def _unpickle(data, path, storages=None):
    unpickler = _StateDictUnpickler(io.BytesIO(data) if isinstance(data, bytes) else data, path)
    if storages is not None:
        unpickler.storages = storages
    try:
        return unpickler.load(), unpickler.storages
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
        OverflowError,
    ) as e:
        raise ValueError(f"Cannot read the PyTorch checkpoint: {e}. Received: path={path!r}") from None


def _array_from_bytes(raw, dtype, byteorder, count):
    if dtype == "bf16":  # the upper half of a float32, as in `_bfloat16_to_float32`
        bits = np.frombuffer(raw, dtype=np.dtype("u2").newbyteorder(byteorder), count=count)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(byteorder), count=count)


def _itemsize(dtype):
    return 2 if dtype == "bf16" else np.dtype(dtype).itemsize


def _materialise(obj, arrays, path):
    """Replaces every `_TensorRef` in nested dicts/lists by a contiguous numpy array."""
    if isinstance(obj, _TensorRef):
        storage = obj.storage
        flat = arrays[storage.key]
        if storage.view is not None:
            offset, numel = storage.view
            if not 0 <= offset <= offset + numel <= flat.size:
                raise ValueError(
                    f"Corrupt PyTorch checkpoint: a storage view lies outside its storage. Received: path={path!r}"
                )
            flat = flat[offset : offset + numel]
        size, stride = obj.size, obj.stride
        if any(s < 0 for s in size) or any(st < 0 for st in stride) or obj.offset < 0:
            raise ValueError(f"Corrupt PyTorch checkpoint: negative tensor size or stride. Received: path={path!r}")
        count = math.prod(size)  # Python ints: a hostile size cannot overflow into a small count
        last = obj.offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True)) if count else obj.offset - 1
        # A parameter or buffer never holds more values than its storage (no broadcast views in a state
        # dict): this bounds what is materialised by the file's own size.
        if last >= flat.size or count > flat.size:
            raise ValueError(
                f"Corrupt PyTorch checkpoint: a tensor of shape {size} reads past its storage of {flat.size} "
                f"values. Received: path={path!r}"
            )
        base = flat[obj.offset :]
        view = np.lib.stride_tricks.as_strided(base, shape=size, strides=[st * base.itemsize for st in stride])
        return np.array(view, copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, arrays, path)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, arrays, path) for v in obj)
    return obj


def _as_state_dict(obj, path):
    """The `{key: array}` in a loaded checkpoint: the object itself, or its "state_dict" / "model" entry."""

    def is_state_dict(value):
        return isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values())

    if isinstance(obj, dict) and not is_state_dict(obj):
        for wrapper in ("state_dict", "model"):  # training checkpoints: {"epoch": ..., "state_dict": {...}}
            if is_state_dict(obj.get(wrapper)):
                obj = obj[wrapper]
                break
    if not is_state_dict(obj) or not all(isinstance(k, str) for k in obj):
        raise ValueError(
            "The PyTorch checkpoint does not hold a state dict (a dict of tensor names to tensors). "
            f"Received: path={path!r} holding a {type(obj).__name__}"
        )
    if all(k.startswith("module.") for k in obj):  # saved from nn.DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _read_pth_zip(path):
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"Not a PyTorch zip checkpoint (no single data.pkl). Received: path={path!r}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "<"
        if f"{prefix}byteorder" in names:
            recorded = archive.read(f"{prefix}byteorder").decode("ascii", errors="replace").strip()
            byteorder = {"little": "<", "big": ">"}.get(recorded)
            if byteorder is None:
                raise ValueError(f"Unknown byte order in the PyTorch checkpoint. Received: path={path!r}")
        obj, storages = _unpickle(archive.read(pickles[0]), path)
        arrays = {}
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            nbytes = storage.numel * _itemsize(storage.dtype)
            try:
                info = archive.getinfo(name)
            except KeyError:
                raise ValueError(
                    f"Truncated PyTorch checkpoint: storage {key!r} is missing. Received: path={path!r}"
                ) from None
            # torch.save stores storages uncompressed; refusing anything else bounds every read by the
            # file's own size, so a hostile archive cannot inflate into memory.
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"Not a PyTorch checkpoint: storage {key!r} is compressed. Received: path={path!r}")
            if info.file_size < nbytes or nbytes > file_size:
                raise ValueError(
                    f"Truncated PyTorch checkpoint: storage {key!r} holds {info.file_size} bytes, expected "
                    f"{nbytes}. Received: path={path!r}"
                )
            with archive.open(info) as f:
                raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"Truncated PyTorch checkpoint: storage {key!r} is cut short. Received: path={path!r}")
            arrays[key] = _array_from_bytes(raw, storage.dtype, byteorder, storage.numel)
    return _as_state_dict(_materialise(obj, arrays, path), path)


def _read_pth_legacy(path):
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)

    def plain_pickle(what):
        # The header pickles hold only ints and dicts: any global is refused by the same unpickler.
        value, storages = _unpickle(stream, path)
        if storages:
            raise ValueError(f"Corrupt PyTorch checkpoint: unexpected tensors in the {what}. Received: path={path!r}")
        return value

    try:
        magic = plain_pickle("magic number")
    except ValueError:
        magic = None
    if magic != _LEGACY_MAGIC:
        raise ValueError(
            "Not a PyTorch checkpoint: neither a zip archive nor the legacy pickle format "
            f"(bad magic number). Received: path={path!r}"
        )
    if plain_pickle("protocol version") != _LEGACY_PROTOCOL:
        raise ValueError(f"Unsupported legacy PyTorch protocol version. Received: path={path!r}")
    sys_info = plain_pickle("system info")
    byteorder = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
    obj, storages = _unpickle(stream, path)
    keys = plain_pickle("storage key list")
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise ValueError(
            f"Corrupt PyTorch checkpoint: the storage list does not match the tensors. Received: path={path!r}"
        )
    arrays = {}
    offset = stream.tell()
    for key in keys:
        storage = storages[key]
        if offset + 8 > len(data):
            raise ValueError(f"Truncated PyTorch checkpoint: storage {key!r} is missing. Received: path={path!r}")
        (count,) = struct.unpack(f"{byteorder}q", data[offset : offset + 8])
        nbytes = count * _itemsize(storage.dtype)
        if count != storage.numel or offset + 8 + nbytes > len(data):
            raise ValueError(
                f"Truncated or corrupt PyTorch checkpoint: storage {key!r} should hold {storage.numel} values. "
                f"Received: path={path!r}"
            )
        arrays[key] = _array_from_bytes(
            memoryview(data)[offset + 8 : offset + 8 + nbytes], storage.dtype, byteorder, count
        )
        offset += 8 + nbytes
    return _as_state_dict(_materialise(obj, arrays, path), path)


_ZIP_LOCAL_HEADER = b"PK\x03\x04"  # how every zip archive, and so every zip-format torch.save file, starts


def read_pth(path):
    """Reads a PyTorch `torch.save` state dict (zip or legacy format) into numpy arrays, without torch."""
    if zipfile.is_zipfile(path):
        try:
            return _read_pth_zip(path)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, struct.error) as e:
            raise ValueError(
                f"Damaged PyTorch checkpoint: the zip archive cannot be read ({e}); download or copy it again. "
                f"Received: path={path!r}"
            ) from None
    with open(path, "rb") as f:
        starts_as_zip = f.read(len(_ZIP_LOCAL_HEADER)) == _ZIP_LOCAL_HEADER
    if starts_as_zip:
        # A zip archive's directory is at its end: an archive cut short has none, and zipfile does not see a zip.
        raise ValueError(
            "Incomplete PyTorch checkpoint: the file starts as a zip archive but its end (the archive's directory) "
            f"is missing, as in a cut-short download or copy; download or copy it again. Received: path={path!r}"
        )
    return _read_pth_legacy(path)


READERS = {
    ".safetensors": read_safetensors,
    ".pth": read_pth,
    ".pt": read_pth,
    ".bin": read_pth,
}


def read_state_dict(path):
    """Reads a PyTorch-style checkpoint into `{key: numpy array}` without importing torch."""
    path = os.fspath(path)
    for suffix, reader in READERS.items():
        if path.endswith(suffix):
            return reader(path)
    raise ValueError(f"Unsupported checkpoint format; expected one of {sorted(READERS)}. Received: path={path!r}")
