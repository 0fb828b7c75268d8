"""Evaluation figures from predicted and true labels: the confusion matrix and, from it, the intersection over
union of every class (the authors' `segment.py` evaluation accumulates the same matrix and takes `nanmean` of it).
"""

import keras
import numpy as np


def predict_dataset(model, ds):
    """The scores and labels of a batched (image, label) data set, in order, as numpy arrays."""
    scores, labels = [], []
    for x, y in ds:
        scores.append(keras.ops.convert_to_numpy(model(x, training=False)))
        labels.append(np.asarray(y))
    return np.concatenate(scores), np.concatenate(labels)


def confusion_matrix(labels, predictions, classes, ignore=None):
    """`classes` x `classes` counts, rows the true class; labels equal to `ignore` are left out."""
    labels, predictions = np.ravel(labels).astype(np.int64), np.ravel(predictions).astype(np.int64)
    if ignore is not None:
        keep = labels != ignore
        labels, predictions = labels[keep], predictions[keep]
    return np.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(matrix):
    """Intersection over union of every class from a confusion matrix (NaN for a class never seen)."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def accuracy_per_class(matrix):
    """The share of each true class (a row of the confusion matrix) predicted as itself; 0 for an empty row."""
    return np.diag(matrix) / np.maximum(matrix.sum(1), 1)
