"""The model contract, checked on any architecture in seconds (as keras-hub's `run_vision_backbone_test`).

`run_classifier_contract(architecture)` and `run_dla_up_contract(backbone)` build tiny models of the given
architecture on the Keras backend of this process and check what every DLA must do: level shapes and strides at
odd sizes, the classifier's heads and poolings, `.keras`, `.weights.h5` and config round trips (plain Keras and
keras_dla's loader), and one training step that moves every trainable weight. The numbers against the PyTorch
references are checked on the full-size variants (tests/test_dla.py, test_dla_up.py, test_backends.py).
"""

import json

import keras
import numpy as np

import keras_dla
from keras_dla.models.dla import LEVEL_NAMES

# Odd and non-square: the strided convs round up and the max-pool shortcuts pad (see blocks.tree).
ODD_SIZES = ((33, 47), (63, 40))
RTOL = ATOL = 1e-5

# One tiny architecture per kind of graph the builder makes: basic blocks with a tree of depth 2; grouped
# bottlenecks with residual roots and a two-conv level1; grouped Res2Net blocks of three splits. Level widths stay
# multiples of the groups' 3x3 width (blocks.bottleneck_width).
TINY_ARCHITECTURES = {
    "basic": dict(levels=(1, 1, 1, 2, 1, 1), channels=(4, 8, 8, 16, 16, 32)),
    "bottleneck": dict(
        levels=(1, 2, 1, 1, 2, 1),
        channels=(4, 8, 16, 16, 32, 32),
        block="bottleneck",
        groups=4,
        base_width=16,
        residual_root=True,
    ),
    "res2net": dict(
        levels=(1, 1, 1, 1, 1, 1), channels=(4, 8, 16, 16, 32, 32), block="res2net", groups=2, base_width=16, scale=3
    ),
}


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def run(model, x):
    """An eager forward pass in inference mode."""
    return keras.tree.map_structure(numpy, model(x, training=False))


def check_round_trips(model, build, x, tmp_path):
    """`.keras` (plain Keras, safe mode on), `.weights.h5` (plain `load_weights` and keras_dla's `weights=`) and
    config (`from_config`) round trips of `model` compute what it computes; `build(**kwargs)` makes another."""
    expected = run(model, x)
    config = model.get_config()
    assert "keras_dla" not in json.dumps(config)  # Keras' own classes only: plain Keras loads it anywhere
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(run(loaded, x), expected, rtol=RTOL, atol=ATOL)
    # Without TensorFlow's fast paths the same function up to float rounding; with them bound again, the same
    # computation.
    np.testing.assert_array_equal(run(keras_dla.attach_fast_paths(loaded), x), expected)
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(run(clone, x), expected, rtol=RTOL, atol=ATOL)
    model.save_weights(tmp_path / "model.weights.h5")
    other = build()
    assert not np.allclose(run(other, x), expected)  # a fresh model differs, so the loads below mean something
    other.load_weights(tmp_path / "model.weights.h5")
    np.testing.assert_allclose(run(other, x), expected, rtol=RTOL, atol=ATOL)
    reloaded = build(weights=str(tmp_path / "model.weights.h5"))
    np.testing.assert_allclose(run(reloaded, x), expected, rtol=RTOL, atol=ATOL)


def check_training_step(model, x, y, loss=None):
    """One SGD step on (x, y): a finite loss, and every trainable weight moves, to finite values."""
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss or keras.losses.SparseCategoricalCrossentropy())
    before = {w.path: numpy(w).copy() for w in model.trainable_weights}
    loss = float(np.asarray(model.train_on_batch(x, y)))
    assert np.isfinite(loss)
    for weight in model.trainable_weights:
        after = numpy(weight)
        assert np.isfinite(after).all(), weight.path
        assert not np.array_equal(after, before[weight.path]), f"{weight.path} did not train"


def run_classifier_contract(architecture, tmp_path, *, classes=5):
    """The classifier and backbone contract of `keras_dla.DLA(**architecture)`, on this process's backend."""
    channels = architecture["channels"]

    def build(**kwargs):
        defaults = dict(weights=None, classes=classes, input_shape=(None, None, 3))
        return keras_dla.DLA(**architecture, **{**defaults, **kwargs})

    # The six levels at odd sizes: level k has stride 2**k, rounding up like the strided convs.
    levels = build(return_levels=True, input_shape=None)
    assert levels.input_shape == (None, None, None, 3)
    assert sorted(levels.output) == list(LEVEL_NAMES)
    for height, width in ODD_SIZES:
        out = run(levels, images((2, height, width, 3), seed=height))
        for k, level in enumerate(LEVEL_NAMES):
            assert out[level].shape == (2, -(-height // 2**k), -(-width // 2**k), channels[k]), level
            assert np.isfinite(out[level]).all(), level

    # The heads: softmax probabilities, logits, the 4D features and the two poolings of level5.
    x = images((2, *ODD_SIZES[0], 3), seed=1)
    classifier = build()
    assert classifier.output_shape == (None, classes)
    probabilities = run(classifier, x)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    logits = build(classifier_activation=None)
    logits.set_weights(classifier.get_weights())
    np.testing.assert_allclose(numpy(keras.ops.softmax(run(logits, x))), probabilities, rtol=1e-5, atol=1e-6)
    level5 = run(levels, x)["level5"]
    features = build(include_top=False)
    assert features.output_shape == (None, None, None, channels[-1])
    features.set_weights(levels.get_weights())
    np.testing.assert_allclose(run(features, x), level5, rtol=RTOL, atol=ATOL)
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        pooled = build(include_top=False, pooling=pooling)
        assert pooled.output_shape == (None, channels[-1])
        pooled.set_weights(levels.get_weights())
        np.testing.assert_allclose(run(pooled, x), reduce(level5, axis=(1, 2)), rtol=RTOL, atol=ATOL)

    check_round_trips(classifier, build, x, tmp_path)
    check_training_step(build(input_shape=(32, 32, 3)), images((4, 32, 32, 3), seed=2), np.arange(4) % classes)


def run_dla_up_contract(backbone, tmp_path, *, classes=3, down_ratio=4):
    """The DLA-Up contract of `keras_dla.DLAUp(backbone)` (a dict of architecture arguments), on this backend;
    its training step is `run_dla_up_training_step`."""

    def build(**kwargs):
        return _dla_up(backbone, classes, down_ratio, **kwargs)

    model = build()
    assert model.input_shape == (None, None, None, 3)
    for height, width in ODD_SIZES:  # any size: padded to a multiple of 32 inside, cropped back
        scores = run(model, images((1, height, width, 3), seed=height))
        assert scores.shape == (1, height, width, classes)
        np.testing.assert_allclose(scores.sum(axis=-1), 1.0, rtol=1e-5)
    # The fixed bilinear upsampling is frozen, as upstream; the backbone and the decoder train.
    up = model.get_layer("up")
    assert not up.trainable and up.weights
    x = images((1, *ODD_SIZES[0], 3), seed=1)
    check_round_trips(model, build, x, tmp_path)


def run_dla_up_training_step(backbone, *, classes=3, down_ratio=4):
    """One step of the segmentation loss `keras-dla train` uses moves every trainable weight of the DLA-Up."""
    from keras_dla.training.segmentation import SegmentationCrossEntropy

    # 64 x 64: level5 is then 2 x 2, so that each batch norm there normalises over more than two values.
    model = _dla_up(backbone, classes, down_ratio, input_shape=(64, 64, 3))
    y = np.random.default_rng(3).integers(0, classes, (2, 64, 64))
    check_training_step(model, images((2, 64, 64, 3), seed=4), y, loss=SegmentationCrossEntropy())


def _dla_up(backbone, classes, down_ratio, **kwargs):
    return keras_dla.DLAUp(backbone, **{"classes": classes, "down_ratio": down_ratio, "weights": None, **kwargs})
