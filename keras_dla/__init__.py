"""keras_dla: Deep Layer Aggregation (Yu, Wang, Shelhamer, Darrell, CVPR 2018) for Keras 3.

The public names load on first use (PEP 562): `import keras_dla` imports neither Keras nor its backend, so the
`keras-dla` command starts without TensorFlow. `keras_dla.DLA34` (or `from keras_dla import DLA34`) imports the
module that defines it. Keras registers keras_dla's serializable classes (`DepthwiseConv2DTranspose`, the
segmentation loss and metric) when their module is imported: use one of them, or import `keras_dla.models.layers` /
`keras_dla.training.segmentation`, before loading a `.keras` file that holds them.
"""

import importlib

from keras_dla.models.configs import VARIANTS
from keras_dla.version import __version__

# Each public name and the module that defines it (as `name` or, for an alias, `(module, attribute)`).
_PUBLIC = {
    "DLA": "models.dla",
    "MODEL_CONFIGS": "models.configs",
    "DLAUp": "models.dla_up",
    "DepthwiseConv2DTranspose": "models.layers",
    "inference_model": "export.inference",
    "fold_batch_norms": "export.inference",
    "attach_fast_paths": ("models.fast_paths", "attach"),
    "keras_name": "weights.names",
    "module_path": "weights.names",
    "SegmentationCrossEntropy": "training.segmentation",
    "SegmentationMeanIoU": "training.segmentation",
    "predict_multiscale": "training.segmentation",
    "save_overlay": "training.segmentation",
    "CITYSCAPES_PALETTE": "training.segmentation",
    "decode_predictions": "models.imagenet",
    "preprocess_input": "models.imagenet",
    "register_weights": "weights.sources",
}

# The builder of every row of the variants table: `DLA34` (models.dla), and `DLA34Up` (models.dla_up) where the
# authors' dla_up.py has one.
_PUBLIC.update({row.function: "models.dla" for row in VARIANTS})
_PUBLIC.update({row.segmentation_function: "models.dla_up" for row in VARIANTS if row.segmentation})

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
