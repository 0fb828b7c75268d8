"""`.weights.h5` files written by keras_dla 0.1, whose models held keras_dla's own layer classes.

Keras stores a model's weights by object structure: `layers/<class name in snake case>[_<n>]/vars/<i>`, numbered
per class in the order of `model.layers` (a nested model is `layers/functional/...`). keras_dla 0.1 built every
batch norm as a `FusedBatchNormalization`, every grouped conv as a `ChunkedGroupConv2D` and DLA-Up's upsampling as
a `DepthwiseConv2DTranspose`; today's models hold Keras' `BatchNormalization`, `Conv2D` and `DepthwiseConv2D`
(with the kernel in the polyphase layout, `resampling.phase_kernel`), in the same order. `load` walks the model as
Keras does, naming each layer as 0.1 did, so such a file loads into today's model with the same numbers.
"""

import h5py
import keras
import numpy as np

from keras_dla import resampling

# keras_dla 0.1's class of each of today's layers, by the rule that chose it.
_FUSED_BATCH_NORM = "fused_batch_normalization"
_CHUNKED_CONV = "chunked_group_conv2d"
_TRANSPOSED_CONV = "depthwise_conv2d_transpose"


class LegacyWeightsError(ValueError):
    """A keras_dla 0.1 weights file that does not hold the model's weights."""


def is_legacy(path):
    """Whether the `.weights.h5` file at `path` was written from a keras_dla 0.1 model."""
    with h5py.File(path, "r") as f:
        found = []
        f.visit(lambda name: found.append(name.rsplit("/", 1)[-1]))
    return any(name.startswith((_FUSED_BATCH_NORM, _CHUNKED_CONV, _TRANSPOSED_CONV)) for name in found)


def _snake_case(layer):
    return keras.src.utils.naming.to_snake_case(type(layer).__name__)


def _legacy_class_name(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        return _FUSED_BATCH_NORM
    if type(layer) is keras.layers.Conv2D and layer.groups > 1:
        return _CHUNKED_CONV
    if type(layer) is keras.layers.DepthwiseConv2D and not layer.use_bias:
        return _TRANSPOSED_CONV
    return _snake_case(layer)


def _assignments(model, group, prefix):
    """`(variable, array)` for every weight of `model`, read from the 0.1 layout under `group`."""
    counts = {}
    pairs = []
    for layer in model.layers:
        name = _legacy_class_name(layer)
        counts[name] = counts.get(name, -1) + 1
        path = f"{prefix}/{name}" + (f"_{counts[name]}" if counts[name] else "")
        if isinstance(layer, keras.Model):
            pairs += _assignments(layer, group, f"{path}/layers")
            continue
        if not layer.weights:
            continue
        if path not in group:
            raise LegacyWeightsError(f"it has no weights at {path!r} for layer {layer.name!r}")
        values = [np.asarray(group[f"{path}/vars/{i}"]) for i in range(len(group[f"{path}/vars"]))]
        if name == _TRANSPOSED_CONV:
            # (2f, 2f, C, 1) as the transposed conv's taps -> the phase kernel today's DepthwiseConv2D holds.
            values = [keras.ops.convert_to_numpy(resampling.phase_kernel(values[0]))]
        if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
            raise LegacyWeightsError(
                f"the weights at {path!r} have shapes {[v.shape for v in values]}, layer {layer.name!r} "
                f"{[tuple(w.shape) for w in layer.weights]}"
            )
        pairs += list(zip(layer.weights, values, strict=True))
    return pairs


def load(model, path):
    """Loads the keras_dla 0.1 `.weights.h5` file at `path` into `model`; every weight must be there.

    Raises:
        LegacyWeightsError: the file does not hold `model`'s weights (another variant or class count).
    """
    with h5py.File(path, "r") as f:
        pairs = _assignments(model, f, "layers")
    for variable, value in pairs:
        variable.assign(value.astype(variable.dtype))
