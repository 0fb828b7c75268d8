"""Export and inference: any Keras model (every DLA classifier, DLA-Up, or your own) as a file another runtime serves.

- `export(model, path, format=...)`, one of `FORMATS`: a TensorFlow SavedModel or TFLite (LiteRT) file
  (`tensorflow_formats`; `export_saved_model`, `export_tflite`), an ONNX file or an OpenVINO IR model
  (`onnx_openvino`; `export_onnx`, `export_openvino`). Each traces the model as `signature` prepares it, writes
  atomically (`atomic`) and leaves a JSON sidecar (`sidecar`) saying what to feed the file and what it returns;
  TFLite files also carry TFLite metadata (`tflite_metadata`). int8 exports calibrate on arrays of images
  (`calibration`); `keras_dla.training.images.load_images` reads such arrays from a folder or Fashion-MNIST.
- `verify_export` (`verify`): runs the artefact in its own runtime (`runtime`) next to the Keras model and reports
  the largest difference, top-1 or pixel agreement, file size and single-image latency.
- `inference_model` (`inference`): the model with its batch norms folded and the backend's fastest call.

The names load on first use (PEP 562), so that `keras_dla.export.inference` imports neither TensorFlow nor
the ONNX tools.
"""

import importlib

FORMATS = ("saved_model", "tflite", "onnx", "openvino")

# Each public name and the module of this package that defines it.
_PUBLIC = {
    "export_saved_model": "tensorflow_formats",
    "export_tflite": "tensorflow_formats",
    "QUANTIZATIONS": "tensorflow_formats",
    "PREPROCESSING": "preprocessing",
    "export_onnx": "onnx_openvino",
    "export_openvino": "onnx_openvino",
    "ExportReport": "verify",
    "SERVING_SIGNATURE": "sidecar",
    "verify_export": "verify",
    "inference_model": "inference",
    "fold_batch_norms": "inference",
}

__all__ = ["FORMATS", "export", *_PUBLIC]


def export(model, path, *, format="saved_model", quantization=None, **kwargs):
    """Exports `model` to `path` in `format`, one of `FORMATS`.

    Args:
        model: a Keras model with one image input.
        path: the file (TFLite, ONNX, OpenVINO `.xml`) or folder (SavedModel) to write.
        format: `"saved_model"`, `"tflite"`, `"onnx"` or `"openvino"`.
        quantization: TFLite: `None`, `"float16"`, `"dynamic"` or `"int8"`; ONNX and OpenVINO: `None` or `"int8"`.
        **kwargs: passed on to `export_saved_model`, `export_tflite`, `export_onnx` or `export_openvino`.

    Returns:
        The path written.
    """
    if format not in FORMATS:
        raise ValueError(f"`format` should be one of {FORMATS}. Received: format={format!r}")
    if format in ("onnx", "openvino"):
        from keras_dla.export import onnx_openvino

        writer = onnx_openvino.export_onnx if format == "onnx" else onnx_openvino.export_openvino
        return writer(model, path, quantization=quantization, **kwargs)
    from keras_dla.export import tensorflow_formats

    if format == "saved_model":
        if quantization is not None:
            raise ValueError(
                f"Quantization applies to the TFLite format only. Received: format='saved_model', "
                f"quantization={quantization!r}"
            )
        return tensorflow_formats.export_saved_model(model, path, **kwargs)
    return tensorflow_formats.export_tflite(model, path, quantization=quantization, **kwargs)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
