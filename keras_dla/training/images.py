"""Real images as arrays, for what takes arrays: int8 calibration and export parity (`keras-dla export
--representative`), read from a folder of image files or from Fashion-MNIST's test split.

`keras_dla.export` takes the arrays `load_images` returns; it reads no data set itself.
"""

import os

import keras
import numpy as np

from keras_dla import checks
from keras_dla.training import fashion_mnist
from keras_dla.training.augment import fit_small
from keras_dla.training.datasets import IMAGE_EXTENSIONS


def fit_images(images, size):
    """Grey images fitted to `size` as the classification pipeline does (`augment.fit_small`), as uint8 pixels."""
    return np.clip(np.round(np.asarray(fit_small(images, size))), 0, 255).astype(np.uint8)


def load_images(source, size, channels=3, *, count=256):
    """Real images for calibration and parity checks: uint8 pixels `(N, height, width, channels)`.

    Args:
        source: `"fashion_mnist"` (the test split, read by `fashion_mnist.load_data`; grey images are fitted to
            `size` as training does, then repeated to `channels`), or a folder of image files (read in sorted
            order, walked recursively, resized to `size`).
        size: `(height, width)`.
        channels: 3 (RGB) or 1 (grey).
        count: at most this many images.
    """
    if channels not in (1, 3):
        raise ValueError(f"Images are loaded as grey (1) or RGB (3) channels. Received: channels={channels!r}")
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"`size` should be a pair of positive integers (height, width). Received: size={size!r}")
    size = tuple(checks.positive_int("size", s) for s in size)
    count = checks.positive_int("count", count)
    source = os.fspath(source)
    if source == "fashion_mnist":
        _, (images, _) = fashion_mnist.load_data()
        images = fit_images(images[:count, :, :, None].astype(np.float32), size)
        return np.repeat(images, channels, axis=-1) if channels == 3 else images
    if not os.path.isdir(source):
        raise ValueError(f"Expected 'fashion_mnist' or a folder of images. Received: {source!r}")
    paths = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(source)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )[:count]
    if not paths:
        raise ValueError(f"The folder holds no {'/'.join(IMAGE_EXTENSIONS)} images. Received: {source!r}")
    mode = "rgb" if channels == 3 else "grayscale"
    images = []
    for f in paths:
        try:
            image = keras.utils.load_img(f, color_mode=mode, target_size=size)
        except Exception as e:  # PIL raises several kinds for a file it cannot read
            raise ValueError(f"Cannot read the image {f}: {type(e).__name__}. Received: {source!r}") from e
        images.append(keras.utils.img_to_array(image))
    return np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)
