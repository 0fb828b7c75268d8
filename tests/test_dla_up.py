"""DLA-Up segmentation against a PyTorch DLASeg in the authors' layout (tests/torch_dla_up.py)."""

import atexit
import functools
import json
import os
import re
import shutil
import tempfile
import zipfile

import keras
import numpy as np
import pytest
import timm
import torch

import keras_dla
from keras_dla import resampling
from keras_dla.models import blocks, dla_up, fast_paths
from keras_dla.weights import convert, dlaseg, readers
from keras_dla.weights.names import keras_name
from tests import reference, torch_dla_up

# The authors' `sum(p.numel() for p in model.parameters())` for 19 classes and down_ratio 2 (their `dla_up.py`):
# it includes the backbone's ImageNet `fc` and its dead `project` layers, which the Keras model does not build.
AUTHORS_PARAMETERS = {
    "dla34": 18_095_163,
    "dla60": 31_303_227,
    "dla102": 42_700_859,
    "dla169": 62_958_139,
}
OTHER_BACKBONES = [v for v in keras_dla.MODEL_CONFIGS if v not in AUTHORS_PARAMETERS]
CLASSES = 5


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def run(model, x):
    # An eager call: one image through a big graph, where tracing `predict` would cost more than it saves.
    return keras.ops.convert_to_numpy(model(x, training=False))


def torch_parameters(model):
    """Weights that are PyTorch parameters: all but the BatchNorm statistics."""
    return sum(int(np.prod(w.shape)) for w in model.weights if not w.path.endswith(("moving_mean", "moving_variance")))


def unbuilt_parameters(variant):
    """Parameters of the authors' graph that the Keras model leaves out: `base.fc` and the dead projects."""
    config = keras_dla.MODEL_CONFIGS[variant]
    channels = config["channels"]
    widths = {}

    def walk(name, levels, cin, cout):
        widths[f"{name}.project."] = (cin, cout)
        if levels > 1:
            walk(f"{name}.tree1", levels - 1, cin, cout)
            walk(f"{name}.tree2", levels - 1, cout, cout)

    for i in range(2, 6):
        walk(f"level{i}", config["levels"][i], channels[i - 1], channels[i])
    dead = sum(cin * cout + 2 * cout for cin, cout in map(widths.get, convert.dead_project_keys(config)))
    return channels[-1] * 1000 + 1000 + dead


@functools.cache
def timm_base(variant):
    return reference.make_timm_model(variant)


@functools.cache
def checkpoint(variant, down_ratio, classes=CLASSES):
    """(PyTorch DLASeg, path of its authors'-layout state dict), made once per test session."""
    torch_model = torch_dla_up.make_dlaseg(variant, classes, down_ratio, base=timm_base(variant))
    path = os.path.join(_tmpdir(), f"{variant}up_{down_ratio}_{classes}.safetensors")
    reference.save_safetensors(torch_dla_up.authors_state_dict(torch_model, variant), path)
    return torch_model, path


@functools.lru_cache(maxsize=1)
def _tmpdir():
    # Checkpoints of the larger variants are hundreds of MB: removed when the test session ends.
    path = tempfile.mkdtemp(prefix="keras_dla_up_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def assert_logits_close(actual, expected):
    # Float32 round-off scales with the logits (a few hundred for some random weights, a few units for
    # others) and grows with depth: 1e-5 of their range still leaves any conversion error in plain view.
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("down_ratio", [2, 4, 8, 16])
def test_equals_authors_dlaseg(down_ratio):
    torch_model, path = checkpoint("dla34", down_ratio)
    model = keras_dla.DLAUp("dla34", classes=CLASSES, down_ratio=down_ratio, weights=path, activation=None)
    for shape in ((2, 64, 96, 3), (1, 128, 64, 3)):
        x = images(shape, seed=down_ratio)
        expected = torch_dla_up.logits(torch_model, x)
        assert expected.shape == shape[:3] + (CLASSES,)
        assert_logits_close(run(model, x), expected)


def test_softmax_output_is_authors_log_softmax():
    torch_model, path = checkpoint("dla34", 2)
    model = keras_dla.DLA34Up(classes=CLASSES, weights=path)
    assert model.name == "dla34up"
    x = images((1, 64, 64, 3), seed=3)
    logits = torch_dla_up.logits(torch_model, x).astype("float64")
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    probabilities = run(model, x)
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-5)
    # Compare where float32 probabilities still resolve the log (logits are large and peaked).
    resolved = log_softmax > -20
    with np.errstate(divide="ignore"):
        log_probabilities = np.log(probabilities)
    np.testing.assert_allclose(log_probabilities[resolved], log_softmax[resolved], atol=2e-3)


def test_every_key_accounted_for():
    _, path = checkpoint("dla34", 4)
    model = keras_dla.DLAUp("dla34", classes=CLASSES, down_ratio=4)
    state = readers.read_state_dict(path)
    ignored = convert.assign_state_dict(
        model,
        state,
        dead_prefixes=("base.level3.project.", "base.level4.project."),
        ignored_prefixes={"base.fc.": dla_up.BASE_FC_NOTE},
    )
    assert sorted(k for k in ignored if not k.endswith("num_batches_tracked")) == sorted(
        ["base.fc.weight", "base.fc.bias"]
        + [f"base.level{i}.project.{m}.{t}" for i in (3, 4) for m, t in [(0, "weight")]]
        + [f"base.level{i}.project.1.{t}" for i in (3, 4) for t in ("weight", "bias", "running_mean", "running_var")]
    )
    assert ignored["base.fc.weight"] == dla_up.BASE_FC_NOTE
    # Every decoder tensor is used: level2 is the first level at down_ratio 4, so four IDA stages.
    decoder = [k for k in state if not k.startswith("base.")]
    assert not set(decoder) & {k for k in ignored if not k.endswith("num_batches_tracked")}
    assert {k.split(".")[1] for k in decoder if k.startswith("dla_up.")} == {"ida_0", "ida_1", "ida_2"}
    assert {"up.weight", "fc.0.weight", "fc.0.bias"} <= set(decoder)


@pytest.mark.parametrize("variant", list(AUTHORS_PARAMETERS))
def test_parameter_counts_of_the_authors_variants(variant):
    builder = dla_up.UP_BUILDERS[variant]
    model = builder(classes=19, weights=None)
    assert model.name == f"{variant}up"
    assert torch_parameters(model) == AUTHORS_PARAMETERS[variant] - unbuilt_parameters(variant)
    # Named after the module paths of the authors' DLASeg.
    for path in ("dla_up.ida_0.proj_1.0", "dla_up.ida_0.up_1", "dla_up.ida_0.node_1.0", "dla_up.ida_3.node_4.1"):
        model.get_layer(keras_name(path))
    model.get_layer(keras_name("fc.0"))
    assert model.get_layer("base").get_layer(keras_name("level5.root.conv")) is not None
    # TensorFlow's fused batch norm is bound in the backbone (a nested model) and in the decoder alike.
    assert fast_paths.attached(model.get_layer("base").get_layer(keras_name("level5.root.bn")))
    assert fast_paths.attached(model.get_layer(keras_name("dla_up.ida_3.node_4.1")))
    assert [w.path for w in model.get_layer("up").weights] == ["up/kernel"]
    assert not model.get_layer("up").trainable


@pytest.mark.parametrize(
    "variant",
    [pytest.param(v, marks=[] if v == "dla46x_c" else [pytest.mark.slow]) for v in OTHER_BACKBONES],
)
def test_other_backbones_equal_reference(variant):
    # No upstream DLA-Up for these: the same construction on their levels, checked the same way.
    torch_model, path = checkpoint(variant, 8)
    model = keras_dla.DLAUp(variant, classes=CLASSES, down_ratio=8, weights=path, activation=None)
    x = images((1, 64, 96, 3), seed=1)
    assert_logits_close(run(model, x), torch_dla_up.logits(torch_model, x))


def test_any_size_pads_and_crops():
    model = keras_dla.DLA34Up(classes=3, down_ratio=4, activation=None)
    padded_model = keras.Model(model.input, model.get_layer("up_crop").output)  # the upsampling, before crop_like
    for height, width in ((33, 47), (63, 95), (70, 41), (32, 32)):
        x = images((1, height, width, 3), seed=height)
        out = run(model, x)
        assert out.shape == (1, height, width, 3)
        # The output is the model's output on the zero-padded image, cropped back.
        full_h, full_w = -(-height // 32) * 32, -(-width // 32) * 32
        padded = np.zeros((1, full_h, full_w, 3), "float32")
        padded[:, :height, :width] = x
        np.testing.assert_allclose(out, run(padded_model, padded)[:, :height, :width], atol=1e-4)
    fixed = keras_dla.DLA34Up(classes=3, input_shape=(45, 61, 3))
    assert fixed.output_shape == (None, 45, 61, 3)
    from_tensor = keras_dla.DLA34Up(classes=3, input_tensor=keras.Input((None, 77, 3), batch_size=2))
    assert from_tensor.output_shape == (2, None, 77, 3)


def test_large_input():
    model = keras_dla.DLAUp("dla34", classes=19, down_ratio=2)
    out = run(model, images((1, 520, 700, 3)))
    assert out.shape == (1, 520, 700, 19)
    np.testing.assert_allclose(out.sum(-1), 1, atol=1e-4)


def test_keras_and_weights_file_round_trips(tmp_path):
    _, path = checkpoint("dla34", 8)
    model = keras_dla.DLAUp("dla34", classes=CLASSES, down_ratio=8, weights=path)
    x = images((2, 40, 50, 3), seed=5)
    expected = run(model, x)

    keras_path = str(tmp_path / "dla34up.keras")
    model.save(keras_path)
    with zipfile.ZipFile(keras_path) as archive:
        assert "keras_dla" not in archive.read("config.json").decode()  # only Keras' own layers and ops
    assert "keras_dla" not in json.dumps(model.get_config())
    # Plain Keras loads it, without TensorFlow's fast paths: the same function up to float rounding (Keras' batch
    # norm against the fused kernel: 2.2e-5 relative on one of 20,000 probabilities on an AVX-512 CPU, so the
    # references' rtol); with them attached again, the same computation.
    loaded = keras.saving.load_model(keras_path)
    np.testing.assert_allclose(run(loaded, x), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(run(keras_dla.attach_fast_paths(loaded), x), expected)
    assert not loaded.get_layer("up").trainable and loaded.get_layer(keras_name("dla_up.ida_0.up_1")).trainable

    weights_path = str(tmp_path / "dla34up.weights.h5")
    model.save_weights(weights_path)
    reloaded = keras_dla.DLAUp("dla34", classes=CLASSES, down_ratio=8, weights=weights_path)
    np.testing.assert_array_equal(run(reloaded, x), expected)


def test_initialisation_as_upstream():
    model = keras_dla.DLAUp("dla34", classes=19, down_ratio=4)
    ups = [layer for layer in model.layers if layer.name == "up" or re.fullmatch(r"dla_up_ida_\d+_up_\d+", layer.name)]
    assert len(ups) == 1 + 3 + 2 + 1  # `up` and the ups of ida_0..ida_2
    for layer in ups:
        assert type(layer) is keras.layers.DepthwiseConv2D
        # The phase kernel of the authors' bilinear fill (made by the PyTorch reference) of the upsampling's
        # (C, 1, 2f, 2f) ConvTranspose2d weight; C from the input of the layer's padding, f^2 C the kernel's width.
        channels = model.get_layer(f"{layer.name}_pad").input.shape[-1]
        factor = int(np.sqrt(layer.kernel.shape[2] // channels))
        assert factor * factor * channels == layer.kernel.shape[2] and factor in (2, 4, 8)
        bilinear = torch_dla_up.bilinear_(torch.empty(channels, 1, 2 * factor, 2 * factor)).numpy()
        np.testing.assert_allclose(layer.kernel.numpy(), resampling.phase_kernel_from_torch(bilinear), atol=1e-7)
        filled = keras.ops.convert_to_numpy(resampling.phase_kernel(resampling.bilinear_kernel(2 * factor, channels)))
        filled = filled.astype("float32")
        np.testing.assert_array_equal(layer.kernel.numpy(), filled)
        assert layer.trainable == (layer.name != "up")
    for layer in model.layers:
        if layer.name.startswith("dla_up_") and isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel.numpy()
            fan_out = kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
            assert abs(kernel.std() / np.sqrt(2 / fan_out) - 1) < 0.1, layer.name
        if layer.name.startswith("dla_up_") and isinstance(layer, keras.layers.BatchNormalization):
            assert (layer.gamma.numpy() == 1).all() and (layer.beta.numpy() == 0).all()
    bias = model.get_layer(keras_name("fc.0")).bias.numpy()
    assert np.abs(bias).max() <= 1 / np.sqrt(64) and bias.std() > 0


def test_bad_arguments(tmp_path):
    for down_ratio in (1, 3, 32, "2", True, 2.0):
        with pytest.raises(ValueError, match=f"Received: down_ratio={down_ratio!r}"):
            keras_dla.DLA34Up(down_ratio=down_ratio)
    with pytest.raises(ValueError, match="Received: backbone='dla35'"):
        keras_dla.DLAUp("dla35")
    for classes in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"Received: classes={classes!r}"):
            keras_dla.DLA34Up(classes=classes)
    with pytest.raises(ValueError, match="Received: weights="):
        keras_dla.DLA34Up(weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="Received: input_shape="):
        keras_dla.DLA34Up(input_shape=(31, 64, 3))
    with pytest.raises(ValueError, match="Received: activation="):
        keras_dla.DLA34Up(activation="no-such-activation")


def test_bad_checkpoints(tmp_path):
    _, path = checkpoint("dla34", 4)
    with pytest.raises(ValueError, match=f"predicts {CLASSES} classes.*Received: classes=19"):
        keras_dla.DLAUp("dla34", classes=19, down_ratio=4, weights=path)
    with pytest.raises(ValueError, match="down_ratio=4. Received: down_ratio=8"):
        keras_dla.DLAUp("dla34", classes=CLASSES, down_ratio=8, weights=path)
    _, other = checkpoint("dla46x_c", 8)
    with pytest.raises(ValueError, match="holds a dla46x_c backbone, not dla34. Received: backbone='dla34'"):
        keras_dla.DLAUp("dla34", classes=CLASSES, down_ratio=8, weights=other)

    state = readers.read_state_dict(path)
    extra = dict(state, **{"dla_up.ida_0.up_7.weight": np.zeros((256, 1, 4, 4), "float32")})
    with pytest.raises(ValueError, match=r"has no layer for.*Received: dla_up\.ida_0\.up_7\.weight"):
        keras_dla.DLAUp(
            "dla34",
            classes=CLASSES,
            down_ratio=4,
            weights=reference.save_safetensors(extra, tmp_path / "x.safetensors"),
        )
    missing = {k: v for k, v in state.items() if k != "dla_up.ida_1.node_2.0.weight"}
    with pytest.raises(ValueError, match="no tensor 'dla_up.ida_1.node_2.0.weight'"):
        keras_dla.DLAUp(
            "dla34",
            classes=CLASSES,
            down_ratio=4,
            weights=reference.save_safetensors(missing, tmp_path / "m.safetensors"),
        )
    backbone_only = {k[len("base.") :]: v for k, v in state.items() if k.startswith("base.")}
    with pytest.raises(ValueError, match="Not a checkpoint of the authors' DLASeg layout"):
        keras_dla.DLAUp(
            "dla34",
            classes=CLASSES,
            down_ratio=4,
            weights=reference.save_safetensors(backbone_only, tmp_path / "b.safetensors"),
        )


def test_authors_training_checkpoint_pth(tmp_path):
    # segment.py saves {"epoch", "arch", "state_dict", "best_prec1"} with torch.save, and the state dict of
    # the nn.DataParallel it trains under, whose keys start with "module.".
    torch_model, path = checkpoint("dla34", 16)
    state = {f"module.{k}": torch.from_numpy(np.array(v)) for k, v in readers.read_state_dict(path).items()}
    pth = str(tmp_path / "checkpoint_latest.pth")
    torch.save({"epoch": 3, "arch": "dla34up", "state_dict": state, "best_prec1": 0.0}, pth)
    model = keras_dla.DLAUp("dla34", classes=CLASSES, down_ratio=16, weights=pth, activation=None)
    x = images((1, 64, 64, 3), seed=8)
    assert_logits_close(run(model, x), torch_dla_up.logits(torch_model, x))


def test_checkpoint_backbone_is_recognised_for_every_variant():
    # Shapes only: timm's graphs on the meta device, keys in the DLASeg layout.
    for variant in keras_dla.MODEL_CONFIGS:
        with torch.device("meta"):
            state = timm.create_model(variant, pretrained=False).state_dict()
        state = {f"base.{k}": v for k, v in state.items()}
        assert dlaseg.checkpoint_backbone(state, keras_dla.MODEL_CONFIGS, blocks.bottleneck_width) == variant
