"""The losses and metrics `train` compiles: label-smoothed cross-entropy of integer labels (classification), and
for segmentation `keras_dla.training.segmentation`'s loss and mean IoU with the accuracy of the labelled pixels.
"""

import keras
from keras import ops

from keras_dla.training import segmentation
from keras_dla.training.choices import IGNORE_LABEL


@keras.saving.register_keras_serializable(package="keras_dla")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels smoothed towards the uniform distribution by `label_smoothing`.

    Keras' `SparseCategoricalCrossentropy` has no label smoothing; this is `categorical_crossentropy` of the
    smoothed one-hot labels, and with `label_smoothing=0` the sparse cross-entropy itself.
    """

    def __init__(self, label_smoothing=0.0, from_logits=False, name="sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        labels = ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred)[:-1])
        return keras.losses.categorical_crossentropy(
            ops.one_hot(labels, classes, dtype=y_pred.dtype),
            y_pred,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "from_logits": self.from_logits}


def pixel_accuracy(ignore_label=IGNORE_LABEL):
    """A metric: the share of labelled pixels (label other than `ignore_label`) whose argmax is their label."""

    def pixel_accuracy(y_true, y_pred):
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        valid = ops.cast(ops.not_equal(y_true, ignore_label), "float32")
        hit = ops.cast(ops.equal(y_true, ops.cast(ops.argmax(y_pred, axis=-1), "int32")), "float32")
        return ops.sum(hit * valid) / ops.maximum(ops.sum(valid), 1.0)

    return keras.metrics.MeanMetricWrapper(pixel_accuracy, name="pixel_accuracy")


def segmentation_loss_and_metrics(classes, from_logits):
    """The label-ignoring cross-entropy, and the mean IoU and pixel accuracy, of a `classes`-way segmenter."""
    loss = segmentation.SegmentationCrossEntropy(from_logits=from_logits)
    return loss, [segmentation.SegmentationMeanIoU(classes, name="mean_iou"), pixel_accuracy()]
