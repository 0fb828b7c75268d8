"""keras_dla: Deep Layer Aggregation (Yu, Wang, Shelhamer, Darrell, CVPR 2018) for Keras 3.

The public names load on first use (PEP 562): `import keras_dla` imports neither Keras nor its backend, so the
`keras-dla` command starts without TensorFlow. `keras_dla.DLA34` (or `from keras_dla import DLA34`) imports the
module that defines it. Keras registers keras_dla's serializable classes (`DepthwiseConv2DTranspose`, the
segmentation loss and metric) when their module is imported: use one of them, or import `keras_dla.layers` /
`keras_dla.segmentation`, before loading a `.keras` file that holds them.
"""

import importlib

from keras_dla.version import __version__

# Each public name and the module that defines it (as `name` or, for an alias, `(module, attribute)`).
_PUBLIC = {
    "DLA": "dla",
    "DLA34": "dla",
    "DLA46C": "dla",
    "DLA46XC": "dla",
    "DLA60XC": "dla",
    "DLA60": "dla",
    "DLA60X": "dla",
    "DLA102": "dla",
    "DLA102X": "dla",
    "DLA102X2": "dla",
    "DLA169": "dla",
    "DLA60Res2Net": "dla",
    "DLA60Res2NeXt": "dla",
    "MODEL_CONFIGS": "model_configs",
    "DLAUp": "dla_up",
    "DLA34Up": "dla_up",
    "DLA60Up": "dla_up",
    "DLA102Up": "dla_up",
    "DLA169Up": "dla_up",
    "DepthwiseConv2DTranspose": "layers",
    "inference_model": "inference",
    "fold_batch_norms": "inference",
    "attach_fast_paths": ("fast_paths", "attach"),
    "keras_name": "names",
    "module_path": "names",
    "SegmentationCrossEntropy": "segmentation",
    "SegmentationMeanIoU": "segmentation",
    "predict_multiscale": "segmentation",
    "save_overlay": "segmentation",
    "CITYSCAPES_PALETTE": "segmentation",
    "decode_predictions": "imagenet",
    "preprocess_input": "imagenet",
    "register_weights": "weights",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):
    where = _PUBLIC.get(name)
    if where is None:
        if name.startswith("__"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        try:  # a submodule: `keras_dla.export` after a plain `import keras_dla`
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module, attribute = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
