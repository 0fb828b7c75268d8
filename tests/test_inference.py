"""`keras_dla.inference_model`: batch norm folded into the convolutions computes what the model computes.

Every variant is compared with trained-looking weights (random batch-norm statistics far from the identity),
so a folding mistake in scale, shift or channel order shows in the logits.
"""

import json

import keras
import numpy as np
import pytest

import keras_dla
from keras_dla.export import inference
from keras_dla.models import dla_up, fast_paths
from keras_dla.weights.names import keras_name
from tests import variants
from tests.test_export import classifier, images, trained_looking

TOLERANCE = 1e-4  # the bound on the folded model's float32 outputs


def _batch_norms(model):
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            count += _batch_norms(layer)
        count += isinstance(layer, keras.layers.BatchNormalization)
    return count


@pytest.mark.parametrize("variant", variants.tier(variants.ONE_PER_BLOCK))
def test_folded_classifier_equals_the_model(variant):
    model = classifier(variant)
    fast = keras_dla.inference_model(model)
    assert _batch_norms(model) > 0 and _batch_norms(fast) == 0  # every DLA batch norm follows a conv
    x = images(3, 40)
    expected = model.predict_on_batch(x)
    for got in (fast.predict_on_batch(x), fast(x).numpy(), fast.serve(x).numpy()):
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert np.abs(expected).max() > 0.1  # logits, not a degenerate all-zero output
    names = {layer.name for layer in fast.layers}
    convs = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    stem_conv, stem_bn = keras_name("base_layer.0"), keras_name("base_layer.1")
    assert stem_conv in convs and convs <= names and stem_bn not in names  # names kept, batch norms gone
    # The grouped convs (DLA-X) stay plain Conv2D layers with the fast path attached.
    grouped = [layer for layer in fast.layers if getattr(layer, "groups", 1) > 1]
    assert len(grouped) == sum(getattr(layer, "groups", 1) > 1 for layer in model.layers)
    assert all(type(layer) is keras.layers.Conv2D and fast_paths.attached(layer) for layer in grouped)


def test_a_plain_grouped_conv_stays_plain_with_the_fast_path_attached():
    # A model not built by keras_dla (nothing attached): the folded copy's grouped conv is still a plain Conv2D,
    # with TensorFlow's fast path bound to it, and computes what the model computes.
    inputs = keras.Input((6, 6, 8))
    x = keras.layers.Conv2D(8, 3, padding="same", groups=4, use_bias=False, name="g")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    model.get_layer("g").kernel.assign(np.random.default_rng(2).standard_normal((3, 3, 2, 8)).astype("float32"))
    model.get_layer("bn").moving_variance.assign(np.full(8, 3.0, "float32"))
    assert not fast_paths.attached(model.get_layer("g"))
    for fast in (keras_dla.fold_batch_norms(model), keras_dla.inference_model(model)):
        g = fast.get_layer("g")
        assert type(g) is keras.layers.Conv2D and g.groups == 4 and g.use_bias and fast_paths.attached(g)
        assert "bn" not in {layer.name for layer in fast.layers}
        x = np.random.default_rng(1).standard_normal((2, 6, 6, 8)).astype("float32")
        np.testing.assert_allclose(fast(x).numpy(), model(x, training=False).numpy(), rtol=0, atol=1e-5)
    assert "keras_dla" not in json.dumps(fast.get_config())


def test_serve_takes_any_batch_and_size():
    fast = keras_dla.inference_model(classifier("dla46_c"))
    for batch, size in ((1, 32), (5, 47)):
        assert fast.serve(images(batch, size)).shape == (batch, 10)
    with pytest.raises(ValueError, match=r"`serve` takes inputs of shape \(None, None, None, 3\).*\(1, 32, 32, 1\)"):
        fast.serve(images(1, 32)[..., :1])
    with pytest.raises(ValueError, match=r"`serve` takes 1 input\(s\). Received: 2"):
        fast.serve(images(1, 32), images(1, 32))
    with pytest.raises(ValueError, match=r"`jit_compile` should be True or False. Received: jit_compile='yes'"):
        keras_dla.inference_model(fast, jit_compile="yes")


def test_folded_dla_up_equals_the_model():
    model = dla_up.DLAUp("dla34", classes=5, activation=None, input_shape=(None, None, 3))
    trained_looking(model, 64)
    fast = keras_dla.inference_model(model)
    assert _batch_norms(fast) == 0
    x = images(2, 64)
    np.testing.assert_allclose(fast.predict_on_batch(x), model.predict_on_batch(x), rtol=0, atol=TOLERANCE)


def test_folding_leaves_the_original_untouched():
    model = classifier("dla46_c")
    before = [w.copy() for w in model.get_weights()]
    keras_dla.inference_model(model)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_batch_norm_that_follows_no_conv_or_a_shared_conv_is_kept():
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    a = conv(inputs)
    b = keras.layers.BatchNormalization()(a)
    c = keras.layers.BatchNormalization()(keras.layers.ReLU()(a))  # the conv has two consumers: not foldable
    d = keras.layers.BatchNormalization()(keras.layers.Add()([b, c]))  # follows an add: not foldable
    model = keras.Model(inputs, d)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(4, 0.3, "float32"))
            layer.moving_variance.assign(np.full(4, 2.0, "float32"))
    assert inference.foldable_pairs(model) == {}
    fast = keras_dla.inference_model(model)
    assert _batch_norms(fast) == 3
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(fast(x).numpy(), model(x, training=False).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [keras.Sequential([keras.layers.Dense(2)]), "dla34", None])
def test_inference_model_refuses_what_is_not_a_functional_model(bad):
    with pytest.raises(ValueError, match="`inference_model` needs a functional keras Model"):
        keras_dla.inference_model(bad)
    with pytest.raises(ValueError, match="`fold_batch_norms` needs a functional keras Model"):
        keras_dla.fold_batch_norms(bad)
