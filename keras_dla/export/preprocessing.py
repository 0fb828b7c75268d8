"""What an artefact that takes uint8 pixels computes on them before the model: named preprocessings.

`keras_dla.export` builds the chosen one into a uint8-input SavedModel or TFLite file, and
`keras_dla.export.verify` applies the same one to the pixels it feeds the Keras model, so the two compare alike.
The numbers are those of `keras_dla.export.normalisations`.
"""

import keras

from keras_dla.export.normalisations import NORMALISATIONS
from keras_dla.models.imagenet import preprocess_input


def _unit_scale(x):
    return keras.ops.cast(x, "float32") / 255.0


def _identity(x):
    return keras.ops.cast(x, "float32")


def _fashion_mnist_normalise(x):
    (mean,), (std,) = NORMALISATIONS["fashion_mnist"]
    return (keras.ops.cast(x, "float32") - mean) / std


# What a uint8-input artefact computes on its pixels before the model: by name, or any callable.
PREPROCESSING = {
    "imagenet": preprocess_input,  # the DLA ImageNet weights: (x / 255 - mean) / std
    "fashion_mnist": _fashion_mnist_normalise,  # the demo's Fashion-MNIST models: (x / 255 - 0.286) / 0.353
    "unit": _unit_scale,  # x / 255
    "none": _identity,
}


def resolve_preprocess(preprocess):
    """The preprocessing function for `preprocess`: a callable as it is, or a name in `PREPROCESSING`."""
    if callable(preprocess):
        return preprocess
    if preprocess in PREPROCESSING:
        return PREPROCESSING[preprocess]
    raise ValueError(
        f"`preprocess` should be a callable or one of {sorted(PREPROCESSING)}. Received: preprocess={preprocess!r}"
    )
