"""Checkpoint readers that need no PyTorch: a state dict as `{key: numpy array}`.

`read_state_dict(path)` dispatches on the file name. Formats:
- `.safetensors`: an 8-byte little-endian header length, a JSON header of
  `{key: {"dtype", "shape", "data_offsets"}}`, then the raw little-endian tensor bytes.
"""

import json
import os
import struct

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


def read_safetensors(path):
    """Reads every tensor of a `.safetensors` file into numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"Not a safetensors file (too short). Received: path={path!r}")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise ValueError(f"Not a safetensors file (bad header length {header_len}). Received: path={path!r}")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Not a safetensors file (unreadable header: {e}). Received: path={path!r}") from None
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if not 0 <= begin <= end <= len(body):
            raise ValueError(f"Truncated safetensors file: tensor {key!r} lies past the end. Received: path={path!r}")
        raw = body[begin:end]
        if dtype == "BF16":
            array = _bfloat16_to_float32(raw)
        elif dtype in _SAFETENSORS_DTYPES:
            array = np.frombuffer(raw, dtype=np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise ValueError(f"Unsupported safetensors dtype {dtype} for tensor {key!r}. Received: path={path!r}")
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(
                f"Corrupt safetensors file: tensor {key!r} has {array.size} values for shape {shape}. "
                f"Received: path={path!r}"
            )
        tensors[key] = array.reshape(shape)
    return tensors


READERS = {
    ".safetensors": read_safetensors,
}


def read_state_dict(path):
    """Reads a PyTorch-style checkpoint into `{key: numpy array}` without importing torch."""
    path = os.fspath(path)
    for suffix, reader in READERS.items():
        if path.endswith(suffix):
            return reader(path)
    raise ValueError(f"Unsupported checkpoint format; expected one of {sorted(READERS)}. Received: path={path!r}")
