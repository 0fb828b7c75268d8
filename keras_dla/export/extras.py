"""The optional packages of the ONNX and OpenVINO exports, and the sentence that names them when one is missing."""

import importlib

# What to install for each runtime; named in the error when one is missing.
EXTRAS = {
    "onnx": ("tf2onnx", "onnx", "onnxruntime"),
    "openvino": ("openvino", "nncf", "tf2onnx", "onnx"),
}


def require(extra, *modules):
    """Imports `modules` (of the `extra` set of packages), or raises one sentence naming the pip install to run."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        raise ModuleNotFoundError(
            f"{extra} export needs the packages {', '.join(EXTRAS[extra])}; install them with "
            f"`pip install keras_dla[{extra}]` (or `pip install {' '.join(EXTRAS[extra])}`). Received: "
            f"no module {e.name!r}"
        ) from None
