"""Segmentation tools for DLA-Up: the loss and metric that ignore label 255, multi-scale inference, overlays.

They follow the authors' `segment.py`: training minimises the per-pixel negative log-likelihood over
labelled pixels (`NLLLoss(ignore_index=255)`), evaluation reports the mean over classes of the
intersection over union with 255 left out, and the multi-scale test sums the log-probabilities of the
image resized by 0.5, 0.75, 1, 1.25 and 1.5 (bicubic), each resized back to the image (bilinear).
"""

import numbers
import os
import struct
import zlib

import keras
import numpy as np
from keras import ops

from keras_dla import checks
from keras_dla.training.choices import IGNORE_LABEL

AUTHORS_TEST_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)

# The 19 Cityscapes training classes (road, sidewalk, building, wall, fence, pole, traffic light, traffic
# sign, vegetation, terrain, sky, person, rider, car, truck, bus, train, motorcycle, bicycle): the
# dataset's official colours.
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)


@keras.saving.register_keras_serializable(package="keras_dla")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Per-pixel sparse cross-entropy averaged over the labelled pixels; `ignore_label` pixels count for nothing.

    Equal to PyTorch's `NLLLoss(ignore_index=255)` on log-probabilities, the authors' training loss (the
    mean runs over the labelled pixels of the whole batch). A batch without labelled pixels gives 0.
    Written with `keras.ops` alone (a log-softmax and a gather), so that it trains on every backend: Keras'
    own sparse cross-entropy goes through PyTorch's fused `nll_loss` there, whose backward pass refuses the
    (batch, height, width, classes) layout.

    Args:
        from_logits: whether `y_pred` are logits (a model built with `activation=None`) rather than
            probabilities (`activation="softmax"`). Logits are the numerically safer choice for training.
        ignore_label: the label of pixels to leave out (255: "void" in Cityscapes and CamVid).
        reduction: as for `keras.losses.Loss`; `"sum_over_batch_size"` and `"mean"` divide by the number of
            labelled pixels, `"sum"` and `"none"` give ignored pixels a loss of 0.
        name, dtype: as for `keras.losses.Loss`.
    """

    def __init__(
        self,
        from_logits=False,
        ignore_label=IGNORE_LABEL,
        reduction="sum_over_batch_size",
        name="segmentation_crossentropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.ignore_label = ignore_label

    def call(self, y_true, y_pred):
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        labelled = ops.not_equal(y_true, ops.cast(self.ignore_label, y_true.dtype))
        labels = ops.cast(ops.where(labelled, y_true, ops.zeros_like(y_true)), "int32")
        if self.from_logits:
            log_probabilities = ops.log_softmax(y_pred, axis=-1)
        else:
            # As Keras' cross-entropy on probabilities: renormalised, clipped away from 0 and 1, then the log.
            probabilities = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
            epsilon = keras.backend.epsilon()
            log_probabilities = ops.log(ops.clip(probabilities, epsilon, 1.0 - epsilon))
        picked = ops.squeeze(ops.take_along_axis(log_probabilities, ops.expand_dims(labels, -1), axis=-1), -1)
        losses = ops.where(labelled, -picked, ops.zeros_like(picked))
        if self.reduction in ("sum_over_batch_size", "mean"):
            # The reduction divides by every pixel; weighting the labelled ones by all / labelled makes it
            # the mean over the labelled pixels (as Keras weights a masked loss).
            weight = ops.cast(labelled, losses.dtype)
            losses = losses * ops.divide_no_nan(ops.cast(ops.size(weight), losses.dtype), ops.sum(weight))
        return losses

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits, "ignore_label": self.ignore_label}


@keras.saving.register_keras_serializable(package="keras_dla")
class SegmentationMeanIoU(keras.metrics.MeanIoU):
    """Mean over classes of the intersection over union, from per-pixel scores, `ignore_label` left out.

    Accumulates a confusion matrix over every batch, as the authors' evaluation does; classes that occur
    neither in the labels nor in the predictions are left out of the mean (the authors' `nanmean`).

    Args:
        num_classes: the number of classes.
        ignore_label: the label of pixels to leave out.
        name, dtype: as for `keras.metrics.Metric`.
    """

    def __init__(self, num_classes, ignore_label=IGNORE_LABEL, name="mean_iou", dtype=None):
        super().__init__(
            checks.positive_int("num_classes", num_classes),
            name=name,
            dtype=dtype,
            ignore_class=ignore_label,
            sparse_y_true=True,
            sparse_y_pred=False,
        )
        self.ignore_label = ignore_label

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "name": self.name,
            "dtype": self.dtype,
        }


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` should be a batch (batch, height, width, channels). Received: shape={images.shape}")
    return images


def predict_multiscale(model, images, *, scales=AUTHORS_TEST_SCALES, from_logits=False, batch_size=None):
    """The authors' multi-scale test: summed log-probabilities over resized copies of the images.

    Each scale s resizes the images to `(int(h s), int(w s))` (bicubic, as the authors' PIL resize), runs
    the model, turns its output into log-probabilities and resizes them back to `(h, w)` (bilinear); the
    sum over the scales is returned. Its argmax over the last axis is the prediction.

    Args:
        model: a segmentation model, e.g. `keras_dla.DLA34Up()`, taking images of any size.
        images: a batch `(batch, height, width, channels)`, preprocessed as the model expects; finite (a NaN
            or an infinity is refused: TensorFlow's fused graph can give finite scores for it).
        scales: the scales; the authors' 0.5, 0.75, 1, 1.25, 1.5 by default.
        from_logits: whether the model outputs logits (`activation=None`) rather than probabilities.
        batch_size: passed on to `model.predict`.

    Returns:
        A numpy array `(batch, height, width, classes)` of summed log-probabilities.
    """
    images = _check_images(images)
    checks.check_finite("images", images)
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 4:
        raise ValueError(
            "predict_multiscale needs a segmentation model with one per-pixel output (batch, height, width, "
            f"classes). Received: a model with output shapes {[tuple(o.shape) for o in model.outputs]}"
        )
    scales = [scales] if isinstance(scales, numbers.Real) else scales
    if not scales or any(not isinstance(s, numbers.Real) or isinstance(s, bool) or s <= 0 for s in scales):
        raise ValueError(f"`scales` should be a non-empty sequence of positive numbers. Received: scales={scales!r}")
    height, width = images.shape[1:3]
    total = None
    for scale in scales:
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        scaled = images
        if size != (height, width):
            scaled = ops.image.resize(images, size, interpolation="bicubic", antialias=True)
        scores = ops.convert_to_tensor(model.predict(scaled, batch_size=batch_size, verbose=0), "float32")
        log_probs = ops.log_softmax(scores, axis=-1) if from_logits else ops.log(ops.maximum(scores, 1e-30))
        if size != (height, width):
            log_probs = ops.image.resize(log_probs, (height, width), interpolation="bilinear", antialias=True)
        total = log_probs if total is None else total + log_probs
    return ops.convert_to_numpy(total)


def colorize(labels, palette=CITYSCAPES_PALETTE, ignore_label=IGNORE_LABEL):
    """RGB image (uint8) of a label map: class k in `palette[k]`, `ignore_label` in black."""
    labels = np.asarray(labels)
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"`palette` should have one RGB row per class. Received: palette of shape {palette.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` should hold integer class ids. Received: dtype={labels.dtype}")
    known = labels != ignore_label
    if known.any() and (labels[known].min() < 0 or labels[known].max() >= len(palette)):
        raise ValueError(
            f"The palette has {len(palette)} colours; pass one with a colour per class. "
            f"Received: labels from {labels[known].min()} to {labels[known].max()}"
        )
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[known] = palette[labels[known]]
    return rgb


def write_png(path, rgb):
    """Writes an (height, width, 3) uint8 array as an 8-bit RGB PNG, with the standard library only."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"Expected an (height, width, 3) RGB array. Received: shape={rgb.shape}")
    height, width = rgb.shape[:2]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    with open(os.fspath(path), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))
    return path


def save_overlay(path, image, prediction, *, palette=CITYSCAPES_PALETTE, alpha=0.5, ignore_label=IGNORE_LABEL):
    """Saves a PNG of the prediction's colours blended over the image (`ignore_label` pixels left as they are).

    Args:
        path: the PNG file to write.
        image: `(height, width, 3)` RGB with values in [0, 255] (not preprocessed), or None for the colours alone.
        prediction: `(height, width)` class ids, or `(height, width, classes)` scores (their argmax is taken).
        palette: one RGB colour per class, Cityscapes' by default.
        alpha: weight of the colours, in [0, 1].
        ignore_label: label drawn without colour.

    Returns:
        The `(height, width, 3)` uint8 array written.
    """
    prediction = np.asarray(prediction)
    if prediction.ndim == 3:
        prediction = prediction.argmax(axis=-1)
    if prediction.ndim != 2:
        raise ValueError(
            f"`prediction` should be (height, width) ids or (height, width, classes) scores. Received: shape="
            f"{prediction.shape}"
        )
    alpha = checks.real("alpha", alpha, low=0, high=1)
    colours = colorize(prediction, palette, ignore_label)
    if image is None:
        out = colours
    else:
        image = np.asarray(image, dtype=np.float64)
        if image.shape != colours.shape:
            raise ValueError(
                f"`image` should be (height, width, 3) like the prediction {colours.shape[:2]}. "
                f"Received: shape={image.shape}"
            )
        weight = np.where((prediction != ignore_label)[..., None], alpha, 0.0)
        out = np.clip(np.rint((1 - weight) * image + weight * colours), 0, 255).astype(np.uint8)
    write_png(path, out)
    return out
