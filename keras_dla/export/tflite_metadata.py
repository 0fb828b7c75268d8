"""TFLite model metadata: what a `.tflite` file takes and returns, written into the file for the apps that read it.

MediaPipe's vision tasks (`ImageClassifier`, `ImageSegmenter`) and the Android Task Library configure themselves
from a model's metadata: the `TFLITE_METADATA` entry of the TFLite model, a `ModelMetadata` flatbuffer of the
public schema `metadata_schema.fbs` (file identifier "M001"), and the files it names, appended to the model as an
uncompressed zip archive. `write_metadata` writes both into a `.tflite` file (`keras_dla.export.export_tflite`
calls it on every file it exports):

- the input: an RGB (or grey) image of the file's size; for a float input, the normalisation `(x - mean) / std`
  that the app applies to pixels in [0, 255]; a uint8 input takes raw pixels and has none;
- the output: class scores (per pixel for a segmentation model), probabilities or logits, their range, and the
  class names (`labels.txt`, one a line, in output order);
- for segmentation, MediaPipe's own `SEGMENTER_METADATA` entry: the activation it applies to the output.

Each tensor is named in the metadata as the file's `serving_default` signature names it (`images`,
`probabilities`, `logits`, ... in keras_dla's exports, as their sidecars say).

`read_metadata` reads that back. The metadata flatbuffers are built and read here from the schema's tables
(`TABLES`), since `tflite-support`, which ships a writer, pins an old protobuf. The TFLite model itself is
rewritten through TensorFlow's generated schema module, imported when called.
"""

import os
import stat
import zipfile

import flatbuffers
import numpy as np

from keras_dla import files

METADATA_NAME = "TFLITE_METADATA"
SEGMENTER_METADATA_NAME = "SEGMENTER_METADATA"
LABELS_FILE = "labels.txt"
# The input's name in the metadata of a file whose signature does not name it (as keras_dla's exports do).
INPUT_NAME = "images"
_MODEL_IDENTIFIER = b"TFL3"
_METADATA_IDENTIFIER = b"M001"
_SEGMENTER_IDENTIFIER = b"V001"
# The schema versions the fields written here need: 1.0.0 for the tables of 2020, 1.5.0 for custom metadata.
_PARSER_VERSION = "1.0.0"
_CUSTOM_METADATA_PARSER_VERSION = "1.5.0"
_BUFFER_ALIGNMENT = 16  # TFLite's schema: `data:[ubyte] (force_align: 16)`, for Buffer and CustomMetadata

# The tables of metadata_schema.fbs (schema 1.5.0) that keras_dla writes or reads, and MediaPipe's
# image_segmenter_metadata_schema.fbs (ImageSegmenterOptions), each with its fields in the schema's order: a field's
# slot in the flatbuffer is its position, a union taking two slots (its member's type, then the member).
# Kinds: "string", "int" (int32), "uint" (uint32), "enum:E" (a byte), "union:U", "[float]", "[ubyte]",
# "[string]", a table name, or a table name in brackets (a vector of tables).
TABLES = {
    "ModelMetadata": (
        ("name", "string"),
        ("description", "string"),
        ("version", "string"),
        ("subgraph_metadata", "[SubGraphMetadata]"),
        ("author", "string"),
        ("license", "string"),
        ("associated_files", "[AssociatedFile]"),
        ("min_parser_version", "string"),
    ),
    "SubGraphMetadata": (
        ("name", "string"),
        ("description", "string"),
        ("input_tensor_metadata", "[TensorMetadata]"),
        ("output_tensor_metadata", "[TensorMetadata]"),
        ("associated_files", "[AssociatedFile]"),
        ("input_process_units", "[ProcessUnit]"),
        ("output_process_units", "[ProcessUnit]"),
        ("input_tensor_groups", "[TensorGroup]"),
        ("output_tensor_groups", "[TensorGroup]"),
        ("custom_metadata", "[CustomMetadata]"),
    ),
    "TensorMetadata": (
        ("name", "string"),
        ("description", "string"),
        ("dimension_names", "[string]"),
        ("content", "Content"),
        ("process_units", "[ProcessUnit]"),
        ("stats", "Stats"),
        ("associated_files", "[AssociatedFile]"),
    ),
    "Content": (("content_properties", "union:ContentProperties"), ("range", "ValueRange")),
    "FeatureProperties": (),
    "ImageProperties": (("color_space", "enum:ColorSpaceType"), ("default_size", "ImageSize")),
    "ImageSize": (("width", "uint"), ("height", "uint")),
    "ValueRange": (("min", "int"), ("max", "int")),
    "ProcessUnit": (("options", "union:ProcessUnitOptions"),),
    "NormalizationOptions": (("mean", "[float]"), ("std", "[float]")),
    "Stats": (("max", "[float]"), ("min", "[float]")),
    "AssociatedFile": (
        ("name", "string"),
        ("description", "string"),
        ("type", "enum:AssociatedFileType"),
        ("locale", "string"),
        ("version", "string"),
    ),
    "TensorGroup": (("name", "string"), ("tensor_names", "[string]")),
    "CustomMetadata": (("name", "string"), ("data", "[ubyte]")),
    "ImageSegmenterOptions": (("activation", "enum:Activation"), ("min_parser_version", "string")),
}
# Union members in the schema's order (type 0 is NONE); the members without an entry in TABLES are read as
# `(name, None)` and not written.
UNIONS = {
    "ContentProperties": ("FeatureProperties", "ImageProperties", "BoundingBoxProperties", "AudioProperties"),
    "ProcessUnitOptions": (
        "NormalizationOptions",
        "ScoreCalibrationOptions",
        "ScoreThresholdingOptions",
        "BertTokenizerOptions",
        "SentencePieceTokenizerOptions",
        "RegexTokenizerOptions",
    ),
}
ENUMS = {
    "AssociatedFileType": (
        "UNKNOWN",
        "DESCRIPTIONS",
        "TENSOR_AXIS_LABELS",
        "TENSOR_VALUE_LABELS",
        "TENSOR_AXIS_SCORE_CALIBRATION",
        "VOCABULARY",
        "SCANN_INDEX_FILE",
    ),
    "ColorSpaceType": ("UNKNOWN", "RGB", "GRAYSCALE"),
    "Activation": ("NONE", "SIGMOID", "SOFTMAX"),
}
_SCALARS = {
    "int": (flatbuffers.number_types.Int32Flags, "PrependInt32Slot"),
    "uint": (flatbuffers.number_types.Uint32Flags, "PrependUint32Slot"),
}


def _slots(fields):
    return sum(2 if kind.startswith("union:") else 1 for _, kind in fields)


def _pack_child(builder, kind, value):
    """Writes what a table field points at (written before the table itself, as flatbuffers need)."""
    if kind == "string":
        return builder.CreateString(value)
    if kind == "[float]":
        return builder.CreateNumpyVector(np.asarray(value, dtype="<f4").reshape(-1))
    if kind == "[ubyte]":
        builder.Prep(_BUFFER_ALIGNMENT, len(value))  # the bytes start 16-aligned (`force_align: 16`)
        return builder.CreateByteVector(bytes(value))
    if kind.startswith("union:"):
        member, fields = value
        return _pack_table(builder, member, fields)
    if kind.startswith("["):
        element = kind[1:-1]
        offsets = [builder.CreateString(v) if element == "string" else _pack_table(builder, element, v) for v in value]
        builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()
    return _pack_table(builder, kind, value)


def _pack_table(builder, table, value):
    if table not in TABLES:
        raise ValueError(f"keras_dla writes no {table} table. Received: a value for {table}")
    fields = TABLES[table]
    unknown = sorted(set(value) - {name for name, _ in fields})
    if unknown:
        raise ValueError(f"The {table} table has no field(s) {unknown}. Received: {sorted(value)}")
    children = {
        name: _pack_child(builder, kind, value[name])
        for name, kind in fields
        if value.get(name) is not None and kind not in _SCALARS and not kind.startswith("enum:")
    }
    builder.StartObject(_slots(fields))
    slot = 0
    for name, kind in fields:
        field = value.get(name)
        if field is not None:
            if kind.startswith("union:"):
                builder.PrependUint8Slot(slot, UNIONS[kind[6:]].index(field[0]) + 1, 0)
                builder.PrependUOffsetTRelativeSlot(slot + 1, children[name], 0)
            elif kind.startswith("enum:"):
                builder.PrependInt8Slot(slot, ENUMS[kind[5:]].index(field), 0)
            elif kind in _SCALARS:
                getattr(builder, _SCALARS[kind][1])(slot, int(field), 0)
            else:
                builder.PrependUOffsetTRelativeSlot(slot, children[name], 0)
        slot += 2 if kind.startswith("union:") else 1
    return builder.EndObject()


def pack(table, value, file_identifier):
    """The flatbuffer of `value` (a dict of fields, as `unpack` returns) as the root `table` of a buffer."""
    builder = flatbuffers.Builder(1024)
    builder.ForceDefaults(True)  # every field given is written, an enum's first value (0) included
    builder.Finish(_pack_table(builder, table, value), file_identifier=file_identifier)
    return bytes(builder.Output())


def _unpack_table(buf, pos, table):
    tab = flatbuffers.table.Table(buf, pos)
    value = {}
    slot = 0
    for name, kind in TABLES[table]:
        field = tab.Offset(4 + 2 * slot)
        if kind.startswith("union:"):
            member_field = tab.Offset(4 + 2 * (slot + 1))
            slot += 2
            if field and member_field:
                index = tab.Get(flatbuffers.number_types.Uint8Flags, tab.Pos + field)
                members = UNIONS[kind[6:]]
                if 1 <= index <= len(members):
                    member = members[index - 1]
                    inner = flatbuffers.table.Table(buf, 0)
                    tab.Union(inner, member_field)
                    value[name] = (member, _unpack_table(buf, inner.Pos, member) if member in TABLES else None)
            continue
        slot += 1
        if not field:
            continue
        at = tab.Pos + field
        if kind.startswith("enum:"):
            names = ENUMS[kind[5:]]
            index = tab.Get(flatbuffers.number_types.Int8Flags, at)
            value[name] = names[index] if 0 <= index < len(names) else index
        elif kind in _SCALARS:
            value[name] = tab.Get(_SCALARS[kind][0], at)
        elif kind == "string":
            value[name] = tab.String(at).decode("utf-8")
        elif kind.startswith("["):
            start, length, element = tab.Vector(field), tab.VectorLen(field), kind[1:-1]
            if element == "float":
                value[name] = np.frombuffer(buf, dtype="<f4", count=length, offset=start).tolist()
            elif element == "ubyte":
                value[name] = bytes(buf[start : start + length])
            elif element == "string":
                value[name] = [tab.String(start + 4 * i).decode("utf-8") for i in range(length)]
            else:
                value[name] = [_unpack_table(buf, tab.Indirect(start + 4 * i), element) for i in range(length)]
        else:
            value[name] = _unpack_table(buf, tab.Indirect(at), kind)
    return value


def unpack(table, buf, file_identifier=None):
    """The fields of the root `table` of the flatbuffer `buf`, as nested dicts; unions as `(member, fields)`."""
    buf = bytes(buf)
    if len(buf) < 8 or (file_identifier is not None and buf[4:8] != file_identifier):
        raise ValueError(f"Not a {table} flatbuffer (file identifier {file_identifier!r}). Received: {buf[:8]!r}")
    return _unpack_table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0), table)


def _normalization(preprocess, channels):
    """`(mean, std)` per channel with `preprocess(x) == (x - mean) / std` on pixels in [0, 255], or None.

    `preprocess` (a name in `keras_dla.export.preprocessing.PREPROCESSING` or a callable) is evaluated on three probe
    pixels; None when it is not such a per-channel affine map, or does not take `channels` channels.
    """
    import keras

    from keras_dla.export.preprocessing import resolve_preprocess

    probe = np.repeat(np.array([0.0, 255.0, 100.0], dtype="float32")[:, None], channels, axis=1)[None, None]
    try:
        out = np.asarray(keras.ops.convert_to_numpy(resolve_preprocess(preprocess)(probe)), dtype="float64")
    except Exception:  # a function for other images (e.g. ImageNet's on one channel): nothing to describe
        return None
    if out.shape != probe.shape or not np.all(np.isfinite(out)):
        return None
    low, high, middle = out[0, 0]
    if not np.all(high > low):
        return None
    std = 255.0 / (high - low)
    mean = -low * std
    if not np.allclose(middle, (100.0 - mean) / std, rtol=1e-4, atol=1e-5):
        return None
    return mean.tolist(), std.tolist()


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _read_model(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[4:8] != _MODEL_IDENTIFIER:
        raise ValueError(f"Not a TFLite file (it has no {_MODEL_IDENTIFIER.decode()} identifier). Received: {path}")
    return data, _schema().ModelT.InitFromPackedBuf(data, 0)


def _text(name):
    return name.decode("utf-8") if isinstance(name, bytes) else name


def _output_activation(model, subgraph, index):
    """The output activation, "softmax", "sigmoid" or None: the op computing output `index`, seen through
    (de)quantisations and reshapes."""
    schema = _schema()
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    passing = {"QUANTIZE", "DEQUANTIZE", "RESHAPE"}
    for _ in range(len(subgraph.operators or ())):
        op = next((op for op in subgraph.operators if index in op.outputs), None)
        if op is None:
            return None
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if name not in passing:
            return {"SOFTMAX": "softmax", "LOGISTIC": "sigmoid"}.get(name)
        index = op.inputs[0]
    return None


def _read_labels(path):
    """The class names in the text file `path`, one a line (blank lines and surrounding spaces ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"Cannot read the labels file ({type(e).__name__}: {e}). Received: labels={path!r}") from None


def _check_labels(labels, classes):
    if isinstance(labels, (str, os.PathLike)):
        labels = _read_labels(os.fspath(labels))
    elif not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        raise ValueError(
            f"`labels` should be a list of class names or the path of a file of them. Received: labels={labels!r:.200}"
        )
    labels = list(labels)
    if len(labels) != classes:
        raise ValueError(f"`labels` should name each of the model's {classes} classes. Received: {len(labels)} labels")
    for label in labels:
        if not label.strip() or "\n" in label or "\r" in label:
            raise ValueError(
                "Each label should be a non-empty name on one line (the label file holds one a line). "
                f"Received: label {label!r}"
            )
    return labels


def _tensor_shape(tensor):
    return tuple(int(d) for d in tensor.shape)


def _signature_names(model, subgraph_index=0):
    """`{tensor index: name}` of the inputs and outputs of the file's signature of subgraph `subgraph_index`.

    The names a signature runner takes and returns (`images`, `probabilities`, ... in keras_dla's exports); `{}`
    for a file without a signature.
    """
    names = {}
    for signature in model.signatureDefs or ():
        if signature.subgraphIndex == subgraph_index:
            for mapping in (*(signature.inputs or ()), *(signature.outputs or ())):
                names.setdefault(int(mapping.tensorIndex), _text(mapping.name))
    return names


def _input_metadata(tensor, preprocess, name=None):
    shape = _tensor_shape(tensor)
    schema = _schema()
    channels = shape[-1] if len(shape) == 4 else None
    color = {3: "RGB", 1: "GRAYSCALE"}.get(channels, "UNKNOWN")
    metadata = {"name": name or INPUT_NAME}
    if len(shape) == 4:
        metadata["content"] = {
            "content_properties": (
                "ImageProperties",
                {"color_space": color, "default_size": {"width": shape[2], "height": shape[1]}},
            )
        }
    dtype = {schema.TensorType.UINT8: "uint8", schema.TensorType.FLOAT32: "float32"}.get(tensor.type)
    image = f"{'an RGB' if color == 'RGB' else 'a grey' if color == 'GRAYSCALE' else 'an'} image {shape}"
    if tensor.type == schema.TensorType.UINT8:
        metadata["description"] = (
            f"{image}, uint8: raw pixel values in [0, 255]; the model applies its preprocessing itself."
        )
        metadata["stats"] = {"min": [0.0], "max": [255.0]}
        return metadata
    normalization = _normalization(preprocess, channels) if channels and preprocess is not None else None
    kind = dtype or "quantized"
    if normalization is None:
        metadata["description"] = (
            f"{image}, {kind}: values as the Keras model takes them, normalised in a way this metadata does not "
            "describe (not given, or not (x - mean) / std per channel)."
        )
        return metadata
    mean, std = normalization
    metadata["description"] = (
        f"{image}, {kind}: pixel values x in [0, 255], normalised as (x - mean) / std per channel with "
        f"mean {tuple(round(m, 4) for m in mean)} and std {tuple(round(s, 4) for s in std)}."
    )
    metadata["process_units"] = [{"options": ("NormalizationOptions", {"mean": mean, "std": std})}]
    metadata["stats"] = {
        "min": [(0.0 - m) / s for m, s in zip(mean, std, strict=True)],
        "max": [(255.0 - m) / s for m, s in zip(mean, std, strict=True)],
    }
    return metadata


def _output_metadata(shape, activation, labels, name=None):
    classes = shape[-1]
    scores = {"softmax": "probabilities (softmax)", "sigmoid": "probabilities (sigmoid)"}.get(activation)
    scores = scores or "scores (logits: no softmax applied)"
    order = f", in the order of {LABELS_FILE}" if labels else ""
    if len(shape) == 4 and shape[1] * shape[2] > 1:
        metadata = {
            "name": name or "segmentation_masks",
            "description": f"Per-pixel class {scores} of the {classes} classes at {shape[1]}x{shape[2]}{order}.",
            # The mask image spans axes 1 and 2; each of its pixels holds the scores of the classes.
            "content": {
                "content_properties": ("ImageProperties", {"color_space": "GRAYSCALE"}),
                "range": {"min": 1, "max": 2},
            },
        }
    else:
        metadata = {
            "name": name or ("probabilities" if activation else "logits"),
            "description": f"Class {scores} of the {classes} classes{order}.",
            "content": {"content_properties": ("FeatureProperties", {})},
        }
    if activation:
        metadata["stats"] = {"min": [0.0], "max": [1.0]}
    if labels:
        metadata["associated_files"] = [
            {
                "name": LABELS_FILE,
                "description": "The class names, one a line, in the order of the output's last axis.",
                "type": "TENSOR_AXIS_LABELS",
            }
        ]
    return metadata


def _set_entry(model, name, data):
    """Sets the model's metadata entry `name` to `data`, in a new buffer or the one it already had."""
    schema = _schema()
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    for entry in model.metadata or ():
        if _text(entry.name) == name:
            model.buffers[entry.buffer] = buffer
            return
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [*(model.metadata or ()), entry]


class _AlignedBuffer:
    """A model buffer packed with its data 16-aligned, as TFLite's schema asks (`force_align: 16`) and the
    converter writes it: the generated object API alone aligns a byte vector to 4 bytes."""

    def __init__(self, buffer):
        self.buffer = buffer

    def Pack(self, builder):  # noqa: N802 (the generated object API's method name)
        if self.buffer.data is not None and len(self.buffer.data):
            builder.Prep(_BUFFER_ALIGNMENT, len(self.buffer.data))
        return self.buffer.Pack(builder)


def _pack_model(model, size_hint):
    buffers = model.buffers
    model.buffers = [_AlignedBuffer(b) for b in buffers]
    try:
        builder = flatbuffers.Builder(size_hint)
        builder.Finish(model.Pack(builder), file_identifier=_MODEL_IDENTIFIER)
        return bytes(builder.Output())
    finally:
        model.buffers = buffers


def write_metadata(path, *, preprocess=None, labels=None, name=None, description=None):
    """Writes TFLite metadata (and the label file) into the `.tflite` file `path`, replacing any it had.

    The input's and output's shapes and types, and whether the output is probabilities (a final softmax or
    sigmoid), are read from the file; the rest is given. The file is replaced whole or not at all.

    Args:
        path: a `.tflite` file of an image model (input `(1, height, width, channels)`): a classifier (output
            `(1, classes)`), a segmentation model (`(1, height, width, classes)`), or any other (several outputs
            are described by their shapes only).
        preprocess: for a float input, what turns pixels in [0, 255] into the values it takes: a name in
            `keras_dla.export.preprocessing.PREPROCESSING` or a callable. When it is `(x - mean) / std` per channel
            (all the named ones are), the metadata gives that normalisation to the app; otherwise, or when
            None, it gives none (an app then cannot feed a float file raw pixels). Unused for a uint8 input.
        labels: the class names, one per output class, in output order: a list, or the path of a text file of
            them, one a line; `None`: the 1000 ImageNet class names for a classifier with 1000 classes, no label
            file otherwise.
        name: the model's name in the metadata (default: the file's name).
        description: what the model does, for people (default: a sentence naming its task).

    Returns:
        The absolute path of the file.
    """
    path = os.path.abspath(os.fspath(path))
    data, model = _read_model(path)
    if not model.subgraphs:
        raise ValueError(f"The TFLite file holds no subgraph. Received: {path}")
    subgraph = model.subgraphs[0]  # the main one, as the metadata's first SubGraphMetadata
    if any(b.offset > 1 for b in model.buffers or ()):
        raise ValueError(
            f"The model keeps its weights after the flatbuffer (over 2 GB); it is not rewritten. Received: {path}"
        )
    outputs = [int(i) for i in subgraph.outputs]
    out_shape = _tensor_shape(subgraph.tensors[outputs[0]])
    single = len(outputs) == 1
    segmentation = single and len(out_shape) == 4 and out_shape[1] * out_shape[2] > 1
    if labels is not None and not single:
        raise ValueError(f"`labels` name the classes of a model with one output. Received: {len(outputs)} outputs")
    if labels is None and single and not segmentation and out_shape[-1] == 1000:
        from keras_dla.models.imagenet import imagenet_classes

        labels = [class_name for _, class_name in imagenet_classes()]
    if labels is not None:
        labels = _check_labels(labels, out_shape[-1])

    activation = _output_activation(model, subgraph, outputs[0]) if single else None
    names = _signature_names(model)  # the tensors are described by the names the signature gives them
    if single:
        output_metadata = [_output_metadata(out_shape, activation, labels, names.get(outputs[0]))]
    else:  # e.g. a backbone's feature maps: named and shaped, nothing more to say
        output_metadata = [
            {
                "name": names.get(i) or _text(subgraph.tensors[i].name),
                "description": f"Output {n}, {_tensor_shape(subgraph.tensors[i])}.",
                "content": {"content_properties": ("FeatureProperties", {})},
            }
            for n, i in enumerate(outputs)
        ]
    subgraph_metadata = {
        "name": "main",
        "input_tensor_metadata": [
            _input_metadata(subgraph.tensors[int(i)], preprocess, names.get(int(i))) for i in subgraph.inputs
        ],
        "output_tensor_metadata": output_metadata,
    }
    parser_version = _PARSER_VERSION
    if segmentation:
        # MediaPipe applies this activation to the output: none to probabilities, a softmax to logits.
        options = {"activation": "NONE" if activation else "SOFTMAX", "min_parser_version": _PARSER_VERSION}
        segmenter = pack("ImageSegmenterOptions", options, _SEGMENTER_IDENTIFIER)
        subgraph_metadata["custom_metadata"] = [{"name": SEGMENTER_METADATA_NAME, "data": segmenter}]
        parser_version = _CUSTOM_METADATA_PARSER_VERSION
    task = "A semantic segmentation" if segmentation else "An image classification" if single else "A"
    metadata = {
        "name": name or os.path.splitext(os.path.basename(path))[0],
        "description": description or f"{task} model exported by keras_dla.",
        "subgraph_metadata": [subgraph_metadata],
        "min_parser_version": parser_version,
    }
    metadata_bytes = pack("ModelMetadata", metadata, _METADATA_IDENTIFIER)
    _set_entry(model, METADATA_NAME, metadata_bytes)
    packed = _pack_model(model, len(data) + len(metadata_bytes) + 4096)

    mode = stat.S_IMODE(os.stat(path).st_mode)

    def write(temporary):
        os.chmod(temporary, mode)  # the file keeps its permissions (a temporary file is created owner-only)
        with open(temporary, "wb") as f:
            f.write(packed)
            if labels is not None:
                # A zip after the flatbuffer, its offsets counted from the start of the file, stored uncompressed:
                # the readers hand out the files where they lie in the model's bytes.
                with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
                    archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in labels))

    files.write_atomically(path, write)
    return path


def read_metadata(path):
    """The TFLite metadata of the `.tflite` file `path` and the files packed with it.

    Returns:
        A dict: `"metadata"`, the `ModelMetadata` table as nested dicts (field names as in the schema, unions
        as `(member, fields)`, a `SEGMENTER_METADATA` entry's data decoded as its `ImageSegmenterOptions`), and
        `"files"`, `{name: bytes}` of the associated files. Raises ValueError when the file has no metadata.
    """
    path = os.fspath(path)
    _, model = _read_model(path)
    entry = next((m for m in model.metadata or () if _text(m.name) == METADATA_NAME), None)
    if entry is None:
        raise ValueError(f"The TFLite file has no {METADATA_NAME} metadata. Received: {path}")
    metadata = unpack("ModelMetadata", model.buffers[entry.buffer].data.tobytes(), _METADATA_IDENTIFIER)
    for subgraph in metadata.get("subgraph_metadata", ()):
        for custom in subgraph.get("custom_metadata", ()):
            if custom.get("name") == SEGMENTER_METADATA_NAME:
                custom["data"] = unpack("ImageSegmenterOptions", custom["data"], _SEGMENTER_IDENTIFIER)
    packed = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            packed = {info.filename: archive.read(info) for info in archive.infolist()}
    return {"metadata": metadata, "files": packed}
