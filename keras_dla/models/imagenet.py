"""ImageNet input normalisation and label decoding, as the authors trained and evaluated DLA.

The 1000 class names (WordNet ids and their first lemma) ship with the package in
`data/imagenet_classes.json`, in the order of the classifier outputs, so decoding works offline.
"""

import functools
import json
import os

import keras
import numpy as np
from keras import ops

# RGB mean and standard deviation of ImageNet, on [0, 1] pixels (the authors' `dataset.py` and timm).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.json")


def preprocess_input(x, data_format=None):
    """Normalises RGB images in [0, 255] as the DLA ImageNet weights expect: `(x / 255 - mean) / std`.

    Args:
        x: a float or integer numpy array or tensor of RGB images, channels last, values in [0, 255].
        data_format: only `None` or `"channels_last"` (the models are channels-last).

    Returns:
        A float32 array or tensor of the same shape.
    """
    if data_format not in (None, "channels_last"):
        raise ValueError(f"keras_dla models are channels_last. Received: data_format={data_format!r}")
    if isinstance(x, (list, tuple)):  # nested lists of pixels, as keras.applications accepts
        x = np.asarray(x)
    if not hasattr(x, "shape") or len(x.shape) == 0 or x.shape[-1] != 3:
        raise ValueError(
            f"Expected RGB images with 3 channels last. Received: shape={tuple(getattr(x, 'shape', ()) or ())}"
        )
    mean = np.asarray(MEAN, dtype="float32") * 255.0
    std = np.asarray(STD, dtype="float32") * 255.0
    if isinstance(x, np.ndarray):
        return (x.astype("float32") - mean) / std
    return (ops.cast(x, "float32") - mean) / std


def normalization_layer(name="preprocessing"):
    """A Keras `Normalization` layer computing `preprocess_input` inside a model: RGB in [0, 255] in.

    A plain Keras layer with constant mean and variance (no weights), so a model with it loads the same weights
    files as one without and its `.keras` file loads with plain Keras.
    """
    return keras.layers.Normalization(
        mean=[255.0 * m for m in MEAN], variance=[(255.0 * s) ** 2 for s in STD], name=name
    )


def check_preprocessing_channels(include_preprocessing, input_shape):
    if include_preprocessing and input_shape[-1] != 3:
        raise ValueError(
            "`include_preprocessing=True` applies ImageNet's RGB normalisation and needs 3 input channels. "
            f"Received: input_shape={tuple(input_shape)}"
        )


@functools.lru_cache(maxsize=1)
def imagenet_classes():
    """`[(wordnet_id, name)]` of the 1000 ImageNet classes, in output order."""
    with open(_CLASSES_FILE, encoding="utf-8") as f:
        return [tuple(entry) for entry in json.load(f)]


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions into `[(wordnet_id, name, score), ...]` per image, best first.

    Args:
        preds: array of shape `(batch, 1000)` (probabilities or logits).
        top: how many classes to return per image.

    Returns:
        A list (one per image) of lists of `(wordnet_id, name, score)` tuples.
    """
    preds = np.asarray(ops.convert_to_numpy(preds))
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions of shape (samples, 1000). "
            f"Received: shape={preds.shape}"
        )
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"`top` should be an integer in [1, 1000]. Received: top={top!r}")
    classes = imagenet_classes()
    results = []
    for row in preds:
        best = np.argsort(row)[::-1][:top]
        results.append([(*classes[i], float(row[i])) for i in best])
    return results
