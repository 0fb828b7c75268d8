"""The named normalisations of model inputs, as numbers: `(pixels - mean) / std` on pixels in [0, 255].

`keras_dla.export.preprocessing` computes them and `keras_dla.export.sidecar` states them; neither reads them
from the data or model modules, so that export depends on no data set. The values are those of
`keras_dla.models.imagenet.MEAN` / `STD` and `keras_dla.training.fashion_mnist.MEAN` / `STD`, scaled to [0, 255]
(tests/test_export.py checks that they agree).
"""

# `preprocess` name -> (mean, std) per channel (one value: every channel) on [0, 255] pixels.
NORMALISATIONS = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "fashion_mnist": ((0.2860 * 255,), (0.3530 * 255,)),
    "unit": ((0.0,), (255.0,)),
    "none": ((0.0,), (1.0,)),
}
