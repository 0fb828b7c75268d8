"""The contract of an exported model, in a JSON sidecar beside it: what to feed it and what it returns.

Every export (SavedModel, TFLite, ONNX, OpenVINO) writes `<file>.json` beside a file (`model.onnx.json`,
`model.tflite.json`, `model.xml.json`) or `<folder>.json` beside a SavedModel folder, holding:

- `input`: tensor name, shape (`null` for a dynamic size), dtype, layout (NHWC), colour order, the pixel range the
  image starts from, the normalisation the caller applies (`"applied_by": "caller"`, `(pixels - mean) / std`
  with mean and std on that range) or that the model applies itself (`"applied_by": "model"`), and the resize
  and crop the model was evaluated with;
- `output`: tensor name, shape and kind (`probabilities`, `logits` or `log-probabilities`, per image or per pixel);
- `classes`: the class names in output order (ImageNet's 1000, the user's, or "0".."N-1");
- `quantization`: how the weights and activations are stored, with the input and output scales and zero
  points of an integer file.

`write_sidecar` writes it (atomically) and `read_sidecar` reads and checks it, for a later `keras-dla predict`.
This module imports neither Keras nor TensorFlow.
"""

import json
import os

from keras_dla import files
from keras_dla.export.normalisations import NORMALISATIONS

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".json"
# Evaluation of classifiers as the authors did: the shorter side resized to size / 0.875, a centred crop of size.
EVAL_CROP_FRACTION = 0.875
OUTPUT_KINDS = {"softmax": "probabilities", "log_softmax": "log-probabilities", None: "logits"}
# The tensor names of every export: the input `images`; the output by its kind (`output_name`). A SavedModel or
# TFLite file holds them in its signature `SERVING_SIGNATURE`.
SERVING_SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAMES = {"probabilities": "probabilities", "logits": "logits", "log-probabilities": "log_probabilities"}


def sidecar_path(path):
    """`model.onnx` -> `model.onnx.json`; a folder `saved_model/` -> `saved_model.json`."""
    return os.fspath(path).rstrip(os.sep) + SIDECAR_SUFFIX


def class_names(classes, labels=None):
    """The names of `classes` outputs: from a `labels` file (one name a line), ImageNet's for 1000, else numbers."""
    if labels is not None:
        with open(labels, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != classes:
            raise ValueError(
                f"The labels file should name each of the model's {classes} classes on its own line; it names "
                f"{len(names)}. Received: --labels {labels}"
            )
        return names
    if classes == 1000:
        from keras_dla.models.imagenet import imagenet_classes

        return [name for _, name in imagenet_classes()]
    return [str(i) for i in range(classes)]


def _normalisation(preprocess, channels, uint8_input):
    if uint8_input:
        return {"applied_by": "model"}
    if not isinstance(preprocess, str):
        return {"applied_by": "caller", "custom": getattr(preprocess, "__name__", type(preprocess).__name__)}
    mean, std = NORMALISATIONS[preprocess]
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    return {
        "applied_by": "caller",
        "name": preprocess,
        "mean": [round(m, 4) for m in mean],
        "std": [round(s, 4) for s in std],
        "formula": "(pixels - mean) / std",
    }


def _resize_and_crop(kind, preprocess, height, width):
    """What turns a photo into the input: the authors' evaluation for ImageNet classifiers, a plain resize else."""
    if kind == "segmentation":
        return None, None  # any size: the model pads to a multiple of 32 and crops its output back
    if preprocess == "imagenet":
        height, width = height or 224, width or 224
        shorter = int(min(height, width) / EVAL_CROP_FRACTION)
        resize = {"shorter_side": shorter, "interpolation": "bilinear", "antialias": True}
        return resize, {"center": [height, width]}
    if height is None or width is None:
        return None, None
    return {"size": [height, width], "interpolation": "bilinear", "antialias": True}, None


def output_activation(model):
    """The name of the activation that ends `model` (`"softmax"`, ...), or None when it returns logits."""
    import keras

    layer = model.layers[-1]
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    name = keras.activations.serialize(activation)
    name = name if isinstance(name, str) else name.get("config", name.get("class_name"))
    return None if name == "linear" else name


def output_name(model):
    """The tensor name of `model`'s output: `probabilities`, `logits`, ... (`pixel_...` for a per-pixel output)."""
    activation = output_activation(model)
    kind = OUTPUT_KINDS.get(activation, activation)
    name = OUTPUT_NAMES.get(kind, kind.replace("-", "_"))
    return f"pixel_{name}" if len(model.outputs[0].shape) == 4 else name


def describe(
    model,
    *,
    format,
    input_name,
    input_shape,
    input_dtype,
    output_name,
    uint8_input=False,
    preprocess="imagenet",
    labels=None,
    quantization=None,
):
    """The contract of an export of `model` (a Keras model with one image input) as a JSON-ready dict.

    Args:
        model: the Keras model that was exported (without the uint8 preprocessing wrapper).
        format: `"saved_model"`, `"tflite"`, `"onnx"` or `"openvino"`.
        input_name, output_name: the artefact's tensor (or signature) names.
        input_shape: `(batch, height, width, channels)` of the artefact's input, `None` for a dynamic size.
        input_dtype: what the artefact takes (`"float32"`, `"uint8"`, `"int8"`).
        uint8_input: the artefact applies `preprocess` itself to uint8 pixels.
        preprocess: a name of `keras_dla.export.preprocessing.PREPROCESSING`, or a callable.
        labels: optional file of class names, one a line.
        quantization: `None` (float32) or a dict (`{"scheme": "int8", ...}`) to record as it is.
    """
    output_shape = tuple(model.outputs[0].shape)
    kind = "segmentation" if len(output_shape) == 4 else "classification"
    activation = output_activation(model)
    output_kind = OUTPUT_KINDS.get(activation, activation)
    batch, height, width, channels = (None if d in (None, -1) else int(d) for d in input_shape)
    resize, crop = _resize_and_crop(kind, preprocess, height, width)
    return {
        "schema_version": SCHEMA_VERSION,
        "format": format,
        "model": model.name,
        "task": kind,
        "input": {
            "name": input_name,
            "shape": [batch, height, width, channels],
            "dtype": str(input_dtype),
            "layout": "NHWC",
            "color_order": "RGB" if channels == 3 else "grey",
            "pixel_range": [0, 255],
            "normalization": _normalisation(preprocess, channels, uint8_input),
            "resize": resize,
            "crop": crop,
        },
        "output": {
            "name": output_name,
            "shape": [batch] + [None if d is None else int(d) for d in output_shape[1:]],  # the artefact's batch
            "kind": output_kind if kind == "classification" else f"per-pixel {output_kind}",
        },
        "classes": class_names(int(output_shape[-1]), labels),
        "quantization": quantization,
    }


def write_sidecar(path, contract):
    """Writes `contract` as `sidecar_path(path)` (atomically); returns the sidecar's path."""
    target = sidecar_path(path)
    files.write_text(target, json.dumps(contract, indent=2) + "\n")
    return target


def read_sidecar(path):
    """The contract `write_sidecar` wrote beside the artefact `path` (or the sidecar's own path)."""
    path = os.fspath(path)
    target = path if path.endswith(SIDECAR_SUFFIX) and os.path.isfile(path) else sidecar_path(path)
    try:
        with open(target, encoding="utf-8") as f:
            contract = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"No sidecar {target} beside the exported model. Received: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"The sidecar {target} is not JSON ({e}). Received: {path}") from None
    if not isinstance(contract, dict) or not all(isinstance(contract.get(k), dict) for k in ("input", "output")):
        raise ValueError(f"The sidecar {target} is not a keras_dla export contract. Received: {path}")
    if contract.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"The sidecar {target} has schema version {contract.get('schema_version')!r}; this keras_dla reads "
            f"version {SCHEMA_VERSION}. Received: {path}"
        )
    return contract


def summary(contract):
    """The contract in a few lines, as `keras-dla export` prints it."""
    given, taken = contract["input"], contract["output"]
    norm = given["normalization"]
    if norm["applied_by"] == "model":
        feed = f"RGB pixels in [0, 255] as {given['dtype']}; the model normalises them itself"
    elif "mean" in norm:
        feed = (
            f"{given['color_order']} pixels in [0, 255], then (x - mean) / std with mean {norm['mean']}, "
            f"std {norm['std']}"
        )
    else:
        feed = f"{given['color_order']} pixels normalised by {norm['custom']}"
    lines = [
        f"input {given['name']!r}: {given['dtype']} {given['shape']} ({given['layout']}): {feed}",
    ]
    if given["resize"]:
        resize = given["resize"]
        size = f"shorter side {resize['shorter_side']}" if "shorter_side" in resize else f"{resize['size']}"
        crop = f", centre crop {given['crop']['center']}" if given["crop"] else ""
        lines.append(f"resize: {size} ({resize['interpolation']}){crop}")
    classes = contract["classes"]
    names = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    lines.append(f"output {taken['name']!r}: {taken['kind']} {taken['shape']} over {len(classes)} classes ({names})")
    if contract.get("quantization"):
        lines.append(f"quantization: {json.dumps(contract['quantization'])}")
    return lines
