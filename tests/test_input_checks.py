"""Input that cannot give a right answer is named in one sentence (issue 29): a user's own weights of another
channel count, bfloat16 / float16 models sent to TFLite, non-finite images, and segmentation labels out of range
in any mask of a data set."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dla import cli, convert, dla, dla_up

# ------------------------------------------------------------------------------------------------------------------
# A user's own .weights.h5 of any input channel count


def _saved(tmp_path, model, name):
    path = str(tmp_path / f"{name}.weights.h5")
    model.save_weights(path)
    return path


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_own_weights_of_any_channel_count_load(tmp_path, channels):
    shape = (32, 32, channels)
    model = dla.DLA46C(weights=None, classes=10, input_shape=shape)
    path = _saved(tmp_path, model, f"grey{channels}")
    assert convert.weights_file_input_channels(path) == channels
    loaded = dla.DLA46C(weights=path, classes=10, input_shape=shape)
    x = np.random.default_rng(channels).standard_normal((2, *shape)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_own_dla_up_weights_of_one_channel_load(tmp_path):
    model = dla_up.DLAUp("dla46_c", classes=3, input_shape=(None, None, 1))
    path = _saved(tmp_path, model, "up_grey")
    assert convert.weights_file_input_channels(path) == 1
    loaded = dla_up.DLAUp("dla46_c", classes=3, weights=path, input_shape=(None, None, 1))
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 1)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("saved, wanted", [(1, 3), (3, 1), (4, 2), (2, 4)])
def test_weights_of_another_channel_count_are_one_sentence(tmp_path, saved, wanted):
    path = _saved(tmp_path, dla.DLA46C(weights=None, classes=10, input_shape=(32, 32, saved)), f"c{saved}")
    message = (
        rf"saved from a model of {saved} input channel\(s\) and dla46_c takes {wanted}; build the model with "
        rf"input_shape=\(height, width, {saved}\)\. Received: weights="
    )
    with pytest.raises(ValueError, match=message) as caught:
        dla.DLA46C(weights=path, classes=10, input_shape=(32, 32, wanted))
    assert path in str(caught.value) and "\n" not in str(caught.value)


def test_dla_up_weights_of_another_channel_count_are_one_sentence(tmp_path):
    path = _saved(tmp_path, dla_up.DLAUp("dla46_c", classes=3, input_shape=(None, None, 1)), "up1")
    with pytest.raises(ValueError, match=r"of 1 input channel\(s\) and dla46_cup takes 3; build the model with"):
        dla_up.DLAUp("dla46_c", classes=3, weights=path)


def test_rgb_weights_stay_rgb(tmp_path):
    # ImageNet and PyTorch checkpoints are refused for other channel counts before anything is read.
    for suffix in (".pth", ".safetensors"):
        (tmp_path / f"authors{suffix}").write_bytes(b"never read")
    cases = [
        (dla.DLA46C, dict(weights="imagenet", include_top=False, input_shape=(64, 64, 1))),
        (dla.DLA46C, dict(weights=str(tmp_path / "authors.pth"), input_shape=(64, 64, 1))),
        (dla.DLA46C, dict(weights=str(tmp_path / "authors.safetensors"), input_shape=(64, 64, 4))),
        (dla_up.DLA34Up, dict(weights="imagenet", input_shape=(None, None, 1))),
    ]
    for builder, kwargs in cases:
        with pytest.raises(ValueError, match=r"expect 3 input channels \(RGB\); only a Keras \.weights\.h5 file"):
            builder(**kwargs)


def test_export_cli_exports_own_grey_weights(tmp_path, capsys):
    model = dla.DLA46C(weights=None, classes=10, input_shape=(32, 32, 1), classifier_activation=None)
    path = _saved(tmp_path, model, "grey")
    output = tmp_path / "grey_saved_model"
    args = ["export", "--model", "dla46_c", "--weights", path, "--classes", "10", "--logits", "--format"]
    args += ["saved_model", "--input-size", "32", "32", "--samples", "2", "--output", str(output)]
    assert cli.main([*args, "--preprocess", "fashion_mnist"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "parity on 2 random images" in out
    signature = tf.saved_model.load(str(output)).signatures["serving_default"]
    assert tuple(next(iter(signature.structured_input_signature[1].values())).shape) == (None, 32, 32, 1)
    # The ImageNet normalisation is for RGB: one sentence, nothing written.
    assert cli.main([*args[:-1], str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "--preprocess imagenet normalises RGB images and the model takes 1 channel(s)" in err
    assert not (tmp_path / "other").exists()
