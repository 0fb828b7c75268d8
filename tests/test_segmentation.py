"""Segmentation tools: the 255-ignoring loss and mean IoU against PyTorch / the authors' formulas, training,
multi-scale inference and the PNG overlay."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from PIL import Image

import keras_dla
from keras_dla.training import segmentation
from keras_dla.weights.names import keras_name


def scores_and_labels(seed=0, shape=(2, 9, 11), classes=4):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal(shape + (classes,))).astype("float32")
    labels = rng.integers(0, classes, shape)
    labels[0, :3] = 255
    labels[1, :, -2:] = 255
    return logits, labels


def test_loss_equals_torch_nll_ignoring_255():
    logits, labels = scores_and_labels()
    log_probs = torch.log_softmax(torch.from_numpy(logits).permute(0, 3, 1, 2), dim=1)
    expected = float(torch.nn.NLLLoss(ignore_index=255)(log_probs, torch.from_numpy(labels)))
    from_logits = segmentation.SegmentationCrossEntropy(from_logits=True)
    from_probabilities = segmentation.SegmentationCrossEntropy()
    np.testing.assert_allclose(float(from_logits(labels, logits)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(from_probabilities(labels, keras.ops.softmax(logits))), expected, rtol=1e-5)
    # Labels with a trailing channel axis, as image pipelines give them.
    np.testing.assert_allclose(float(from_logits(labels[..., None], logits)), expected, rtol=1e-6)
    # The ignored pixels' scores do not matter; an all-ignored batch gives 0, not NaN.
    changed = np.where((labels == 255)[..., None], 100.0, logits).astype("float32")
    np.testing.assert_allclose(float(from_logits(labels, changed)), expected, rtol=1e-6)
    assert float(from_logits(np.full_like(labels, 255), logits)) == 0.0
    restored = segmentation.SegmentationCrossEntropy.from_config(from_logits.get_config())
    assert restored.ignore_label == 255 and restored.from_logits


def authors_mean_iou(labels, prediction, classes):
    """The authors' evaluation: a confusion histogram over labels in [0, classes), per-class IoU, nanmean."""
    keep = (labels >= 0) & (labels < classes)
    hist = np.bincount(classes * labels[keep] + prediction[keep], minlength=classes**2).reshape(classes, classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    return np.nanmean(iou)


def test_mean_iou_ignores_255_over_batches():
    metric = segmentation.SegmentationMeanIoU(5)
    all_labels, all_predictions = [], []
    for seed in range(3):
        logits, labels = scores_and_labels(seed, classes=5)
        logits[..., 4] = -10  # class 4 never predicted nor labelled: left out of the mean
        labels = np.where(labels == 4, 0, labels)
        metric.update_state(labels, keras.ops.softmax(logits))
        all_labels.append(labels)
        all_predictions.append(logits.argmax(-1))
    expected = authors_mean_iou(np.concatenate(all_labels).ravel(), np.concatenate(all_predictions).ravel(), 5)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    assert 0 < expected < 1
    restored = segmentation.SegmentationMeanIoU.from_config(metric.get_config())
    assert restored.num_classes == 5 and restored.ignore_label == 255


def test_one_training_step_has_finite_gradients():
    model = keras_dla.DLA34Up(classes=4, down_ratio=4, activation=None)
    loss_fn = segmentation.SegmentationCrossEntropy(from_logits=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 64, 64, 3)).astype("float32")
    labels = rng.integers(0, 4, (2, 64, 64))
    labels[:, :20] = 255
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(x, training=True))
    gradients = tape.gradient(loss, model.trainable_weights)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)
    # The decoder and the learned ups receive gradient; the frozen bilinear `up` is not trainable.
    named = dict(zip([w.path for w in model.trainable_weights], gradients, strict=True))
    assert np.abs(named[f"{keras_name('dla_up.ida_0.up_1')}/kernel"].numpy()).max() > 0
    assert "up/kernel" not in named
    node = model.get_layer(keras_name("dla_up.ida_2.node_1.0"))
    up_before, node_before = model.get_layer("up").kernel.numpy(), node.kernel.numpy()
    keras.optimizers.SGD(0.01, momentum=0.9).apply(gradients, model.trainable_weights)
    np.testing.assert_array_equal(model.get_layer("up").kernel.numpy(), up_before)
    assert not np.allclose(node.kernel.numpy(), node_before)
    assert np.isfinite(float(loss_fn(labels, model(x, training=False))))


class ConstantScores(keras.layers.Layer):
    """Per-pixel logits that depend on the pixel's colour only: resizing commutes with them up to interpolation."""

    def call(self, x):
        return keras.ops.stack([x[..., 0], -x[..., 0], x[..., 1]], axis=-1)


def test_multiscale_sums_log_probabilities_at_the_authors_scales():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Softmax()(ConstantScores()(inputs)))
    assert segmentation.AUTHORS_TEST_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5)
    # A constant image: every scale sees the same pixels, so the sum is 5 x the log-probabilities.
    image = np.broadcast_to(np.array([0.3, -0.2, 0.5], "float32"), (1, 45, 61, 3)).copy()
    summed = segmentation.predict_multiscale(model, image)
    assert summed.shape == (1, 45, 61, 3)
    single = np.log(model.predict(image, verbose=0))
    np.testing.assert_allclose(summed, 5 * single, rtol=1e-4, atol=1e-4)
    # Logits in, same sums.
    logits_model = keras.Model(inputs, ConstantScores()(inputs))
    np.testing.assert_allclose(
        segmentation.predict_multiscale(logits_model, image, from_logits=True), summed, rtol=1e-4, atol=1e-4
    )
    # One scale of 1 is the plain prediction.
    x = np.random.default_rng(0).standard_normal((2, 33, 40, 3)).astype("float32")
    np.testing.assert_allclose(
        segmentation.predict_multiscale(model, x, scales=(1.0,)), np.log(model.predict(x, verbose=0)), atol=1e-5
    )
    with pytest.raises(ValueError, match="Received: scales="):
        segmentation.predict_multiscale(model, x, scales=(0.5, -1))
    np.testing.assert_allclose(
        segmentation.predict_multiscale(model, x, scales=1.0), np.log(model.predict(x, verbose=0)), atol=1e-5
    )
    classifier = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(ValueError, match=r"needs a segmentation model with one per-pixel output.*\(None, 3\)"):
        segmentation.predict_multiscale(classifier, x)
    with pytest.raises(ValueError, match="`num_classes` should be a positive integer. Received: num_classes=0"):
        segmentation.SegmentationMeanIoU(0)


def test_multiscale_on_dla_up():
    model = keras_dla.DLA34Up(classes=3, down_ratio=8)
    x = np.random.default_rng(1).standard_normal((1, 70, 90, 3)).astype("float32")
    summed = segmentation.predict_multiscale(model, x, scales=(0.5, 1.0, 1.5))
    assert summed.shape == (1, 70, 90, 3)
    assert np.isfinite(summed).all() and (summed <= 0).all()


def test_overlay_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 10, 3)).astype(np.uint8)
    labels = rng.integers(0, 19, (7, 10))
    labels[0] = 255
    path = tmp_path / "overlay.png"
    written = keras_dla.save_overlay(path, image, labels, alpha=0.25)
    read = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(read, written)
    palette = keras_dla.CITYSCAPES_PALETTE
    assert palette.shape == (19, 3) and tuple(palette[0]) == (128, 64, 128) and tuple(palette[13]) == (0, 0, 142)
    expected = np.rint(0.75 * image + 0.25 * palette[np.where(labels == 255, 0, labels)]).astype(np.uint8)
    expected[0] = image[0]  # ignored pixels keep the image
    np.testing.assert_array_equal(read, expected)

    # Scores are argmaxed; no image gives the colours alone.
    scores = np.eye(19, dtype="float32")[labels.clip(0, 18)]
    colours = keras_dla.save_overlay(tmp_path / "colours.png", None, scores)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "colours.png")), palette[labels.clip(0, 18)])
    assert colours.dtype == np.uint8

    with pytest.raises(ValueError, match="Received: labels from 0 to 19"):
        keras_dla.save_overlay(tmp_path / "bad.png", None, np.array([[0, 19]]))
    with pytest.raises(ValueError, match="Received: shape="):
        keras_dla.save_overlay(tmp_path / "bad.png", image[:5], labels)
