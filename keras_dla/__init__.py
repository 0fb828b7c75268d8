"""keras_dla: Deep Layer Aggregation (Yu, Wang, Shelhamer, Darrell, CVPR 2018) for Keras 3."""

from keras_dla.dla import (
    DLA,
    DLA34,
    DLA46C,
    DLA46XC,
    DLA60,
    DLA60X,
    DLA60XC,
    DLA102,
    DLA102X,
    DLA102X2,
    DLA169,
    MODEL_CONFIGS,
    DLA60Res2Net,
    DLA60Res2NeXt,
)
from keras_dla.dla_up import DLA34Up, DLA60Up, DLA102Up, DLA169Up, DLAUp
from keras_dla.fast_paths import attach as attach_fast_paths
from keras_dla.imagenet import decode_predictions, preprocess_input
from keras_dla.inference import fold_batch_norms, inference_model
from keras_dla.layers import DepthwiseConv2DTranspose
from keras_dla.names import keras_name, module_path
from keras_dla.segmentation import (
    CITYSCAPES_PALETTE,
    SegmentationCrossEntropy,
    SegmentationMeanIoU,
    predict_multiscale,
    save_overlay,
)
from keras_dla.version import __version__
from keras_dla.weights import register_weights

__all__ = [
    "DLA",
    "DLA34",
    "DLA46C",
    "DLA46XC",
    "DLA60XC",
    "DLA60",
    "DLA60X",
    "DLA102",
    "DLA102X",
    "DLA102X2",
    "DLA169",
    "DLA60Res2Net",
    "DLA60Res2NeXt",
    "MODEL_CONFIGS",
    "DLAUp",
    "DLA34Up",
    "DLA60Up",
    "DLA102Up",
    "DLA169Up",
    "DepthwiseConv2DTranspose",
    "inference_model",
    "fold_batch_norms",
    "attach_fast_paths",
    "keras_name",
    "module_path",
    "SegmentationCrossEntropy",
    "SegmentationMeanIoU",
    "predict_multiscale",
    "save_overlay",
    "CITYSCAPES_PALETTE",
    "decode_predictions",
    "preprocess_input",
    "register_weights",
    "__version__",
]
