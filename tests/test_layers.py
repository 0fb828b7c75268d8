"""The upsampling of DLA-Up against PyTorch's grouped ConvTranspose2d, both as the `DepthwiseConv2DTranspose` layer
and as `resampling.depthwise_conv_transpose` built from Keras' own layers; DLA-Up's padding and crop
(`resampling.pad_to_multiple`, `crop_like`); and TensorFlow's fast paths (`fast_paths.attach`) of a plain grouped
Conv2D against PyTorch's grouped Conv2d and Keras' own grouped conv, and of a plain BatchNormalization against
Keras' own computation and PyTorch's BatchNorm2d."""

import functools
import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

import keras_dla
from keras_dla import resampling
from keras_dla.models import fast_paths
from keras_dla.models.layers import BilinearKernel, DepthwiseConv2DTranspose


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def saved_config(path):
    """The `config.json` of a `.keras` file, as a string."""
    with zipfile.ZipFile(path) as archive:
        return archive.read("config.json").decode()


def saved_layer_classes(path):
    """`{(module, class_name)}` of the layers and ops of the functional model saved at `path`."""
    config = json.loads(saved_config(path))
    return {(layer["module"], layer["class_name"]) for layer in config["config"]["layers"]}


def torch_transposed(x_nhwc, weight, factor):
    """PyTorch's `ConvTranspose2d(C, C, 2f, stride f, padding f // 2, groups=C, bias=False)`, channels-last."""
    channels = x_nhwc.shape[-1]
    conv = torch.nn.ConvTranspose2d(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2, groups=channels, bias=False
    ).to(torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight))
        y = conv(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)).to(torch.float64))
    return y.numpy().transpose(0, 2, 3, 1)


def keras_transposed(x, weight, factor, **kwargs):
    layer = DepthwiseConv2DTranspose(factor, **kwargs)
    layer.build(x.shape)
    layer.kernel.assign(weight.transpose(2, 3, 0, 1))  # PyTorch (C, 1, 2f, 2f) -> (2f, 2f, C, 1)
    return layer, keras.ops.convert_to_numpy(layer(x))


def upsampling_model(channels, factor, *, name="up", trainable=True):
    """`resampling.depthwise_conv_transpose` in a model of any height and width."""
    inputs = keras.Input((None, None, channels))
    outputs = resampling.depthwise_conv_transpose(inputs, factor, name=name, trainable=trainable)
    return keras.Model(inputs, outputs)


def upsampling_from_torch(channels, factor, weight):
    """`upsampling_model` with its kernel set from PyTorch's ConvTranspose2d weight `(C, 1, 2f, 2f)`."""
    model = upsampling_model(channels, factor)
    kernel = model.get_layer("up").kernel
    kernel.assign(resampling.phase_kernel_from_torch(weight).astype(kernel.dtype))
    return model


# DepthwiseConv2DTranspose, the layer of keras_dla for users' own models.


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 1, 3])
def test_equals_torch_grouped_conv_transpose(factor):
    # Odd, non-square inputs and random per-channel kernels: any tap, phase or channel mix-up shows.
    x = random((2, 5, 7, 6), seed=factor)
    weight = random((6, 1, 2 * factor, 2 * factor), seed=100 + factor)
    expected = torch_transposed(x, weight, factor)
    layer, out = keras_transposed(x, weight, factor)
    assert out.shape == expected.shape == (2, *layer.compute_output_shape(x.shape)[1:3], 6)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 4, 8, 16])
def test_float64_is_exact(factor, float64):
    x = random((1, 4, 3, 3), seed=factor).astype("float64")
    weight = random((3, 1, 2 * factor, 2 * factor), seed=7).astype("float64")
    _, out = keras_transposed(x, weight, factor, dtype="float64")
    np.testing.assert_allclose(out, torch_transposed(x, weight, factor), rtol=1e-12, atol=1e-12)


def test_bilinear_kernel_values():
    # The authors' fill (`fill_up_weights` in their `dla_up.py`) for kernel 4 (factor 2) and 8 (factor 4), by hand.
    taps = {
        4: [0.25, 0.75, 0.75, 0.25],
        8: [0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125],
    }
    for size, row in taps.items():
        kernel = keras.ops.convert_to_numpy(BilinearKernel()((size, size, 3, 1)))
        direct = resampling.bilinear_kernel(size, 3)
        assert direct.shape == kernel.shape == (size, size, 3, 1)
        for c in range(3):
            np.testing.assert_allclose(kernel[:, :, c, 0], np.outer(row, row), rtol=0, atol=1e-7)
            np.testing.assert_allclose(direct[:, :, c, 0], np.outer(row, row), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"Received: shape=\(4, 4, 3\)"):
        BilinearKernel()((4, 4, 3))


def torch_bilinear_resize(x, factor):
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), scale_factor=factor, mode="bilinear", align_corners=False
    )
    return resized.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bilinear_start_is_bilinear_interpolation(factor):
    # Away from the border (where the transposed conv sees zeros), the initial upsampling interpolates exactly
    # like half-pixel bilinear resizing: the layer's and the one built from Keras layers alike.
    x = random((1, 6, 7, 2), seed=factor)
    resized = torch_bilinear_resize(x, factor)
    inner = (slice(None), slice(factor, -factor), slice(factor, -factor))
    for out in (DepthwiseConv2DTranspose(factor)(x), upsampling_model(2, factor)(x)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out)[inner], resized[inner], atol=1e-5)


def assert_first_learns_second_is_frozen(model):
    """A training step of `model` (4x4x8 in, 32x32x8 out) changes its first weight and leaves its second."""
    before = [w.numpy() for w in model.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    model.train_on_batch(random((2, 4, 4, 8)), random((2, 32, 32, 8), seed=1))
    after = [w.numpy() for w in model.weights]
    assert not np.allclose(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_weights_are_depthwise_and_trainable_switch():
    # One (2f, 2f, C, 1) kernel, no dense C x C one; `trainable=False` freezes it through a training step.
    inputs = keras.Input((4, 4, 8))
    learned = DepthwiseConv2DTranspose(4, name="learned")
    frozen = DepthwiseConv2DTranspose(2, trainable=False, name="frozen")
    model = keras.Model(inputs, frozen(learned(inputs)))
    assert [tuple(w.shape) for w in model.weights] == [(8, 8, 8, 1), (4, 4, 8, 1)]
    assert [w.path for w in model.trainable_weights] == ["learned/kernel"]
    assert_first_learns_second_is_frozen(model)


def test_keras_round_trip(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, DepthwiseConv2DTranspose(4, trainable=False, name="up")(inputs))
    model.get_layer("up").kernel.assign(random((8, 8, 3, 1), seed=3))
    path = os.path.join(tmp_path, "up.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("up")) is DepthwiseConv2DTranspose
    assert loaded.get_layer("up").get_config() == model.get_layer("up").get_config()
    assert not loaded.get_layer("up").trainable
    x = random((2, 5, 9, 3))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_bad_arguments():
    for factor in (0, -2, 2.0, True, "2"):
        with pytest.raises(ValueError, match="Received: factor="):
            DepthwiseConv2DTranspose(factor)
    with pytest.raises(ValueError, match="channel dimension of the input must be known"):
        DepthwiseConv2DTranspose(2).build((1, 4, 4, None))


# resampling.depthwise_conv_transpose: the same computation from Keras' own layers, as DLA-Up builds it.


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 1, 3])
def test_keras_layers_upsampling_equals_torch_grouped_conv_transpose(factor):
    # The kernel from a PyTorch weight; odd and non-square sizes through the same model of any size.
    weight = random((6, 1, 2 * factor, 2 * factor), seed=200 + factor)
    model = upsampling_from_torch(6, factor, weight)
    up = model.get_layer("up")
    assert type(up) is keras.layers.DepthwiseConv2D and tuple(up.kernel.shape) == (2, 2, factor * factor * 6, 1)
    for size in ((5, 7), (3, 1), (4, 9)):
        x = random((2, *size, 6), seed=factor + size[0])
        expected = torch_transposed(x, weight, factor)
        out = keras.ops.convert_to_numpy(model(x))
        height, width = (resampling.upsampled_size(s, factor) for s in size)
        assert out.shape == expected.shape == (2, height, width, 6)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_keras_layers_upsampling_float64_is_exact(factor, float64):
    weight = random((3, 1, 2 * factor, 2 * factor), seed=8).astype("float64")
    model = upsampling_from_torch(3, factor, weight)
    assert keras.backend.standardize_dtype(model.get_layer("up").kernel.dtype) == "float64"
    x = random((1, 5, 3, 3), seed=factor).astype("float64")
    out = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(out, torch_transposed(x, weight, factor), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_phase_kernel_maps_both_layouts_alike(factor):
    # The phase kernel of the (2f, 2f, C, 1) layout and of PyTorch's (C, 1, 2f, 2f) weight are the same array, a
    # reordering of the taps (every tap kept once); the default kernel is the bilinear fill's.
    weight = random((5, 1, 2 * factor, 2 * factor), seed=factor)
    from_torch = resampling.phase_kernel_from_torch(weight)
    from_keras = keras.ops.convert_to_numpy(resampling.phase_kernel(weight.transpose(2, 3, 0, 1)))
    assert from_torch.shape == from_keras.shape == (2, 2, factor * factor * 5, 1)
    np.testing.assert_array_equal(from_torch, from_keras)
    np.testing.assert_array_equal(np.sort(from_torch, axis=None), np.sort(weight, axis=None))
    bilinear = resampling.phase_kernel(resampling.bilinear_kernel(2 * factor, 5))
    default = upsampling_model(5, factor).get_layer("up").kernel.numpy()
    np.testing.assert_allclose(default, keras.ops.convert_to_numpy(bilinear), rtol=0, atol=1e-7)


def test_keras_layers_upsampling_layers_and_trainable_switch():
    # Phase kernels (2, 2, f^2 C, 1), one per upsampling; `trainable=False` freezes it through a training step.
    inputs = keras.Input((4, 4, 8))
    x = resampling.depthwise_conv_transpose(inputs, 4, name="learned")
    x = resampling.depthwise_conv_transpose(x, 2, name="frozen", trainable=False)
    model = keras.Model(inputs, x)
    for name in ("learned_pad", "learned", "learned_crop", "frozen_pad", "frozen", "frozen_crop"):
        model.get_layer(name)
    assert [tuple(w.shape) for w in model.weights] == [(2, 2, 16 * 8, 1), (2, 2, 4 * 8, 1)]
    assert [w.path for w in model.trainable_weights] == ["learned/kernel"]
    assert_first_learns_second_is_frozen(model)


def test_keras_layers_upsampling_file_is_plain_keras(tmp_path):
    weight = random((3, 1, 8, 8), seed=3)
    model = upsampling_from_torch(3, 4, weight)
    model.get_layer("up").trainable = False
    assert "keras_dla" not in json.dumps(model.get_config())
    path = os.path.join(tmp_path, "up.keras")
    model.save(path)
    assert "keras_dla" not in saved_config(path)
    modules = {module for module, _ in saved_layer_classes(path)}
    assert modules <= {"keras.layers", "keras.src.ops.numpy", "keras.src.ops.nn"}, modules
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("up")) is keras.layers.DepthwiseConv2D and not loaded.get_layer("up").trainable
    x = random((2, 5, 9, 3))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), torch_transposed(x, weight, 4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", ["layer", "keras_layers"])
def test_tflite_builtin_ops_only(tmp_path, build):
    # Converted with TFLITE_BUILTINS alone, a Flex (TF) op would make the conversion fail.
    from ai_edge_litert.interpreter import Interpreter

    inputs = keras.Input((6, 5, 4), batch_size=1)
    weight = random((4, 1, 16, 16), seed=5)
    if build == "layer":
        outputs = DepthwiseConv2DTranspose(8, name="up")(DepthwiseConv2DTranspose(2, name="up2")(inputs))
        model = keras.Model(inputs, outputs)
        model.get_layer("up").kernel.assign(weight.transpose(2, 3, 0, 1))
    else:
        x = resampling.depthwise_conv_transpose(inputs, 2, name="up2")
        model = keras.Model(inputs, resampling.depthwise_conv_transpose(x, 8, name="up"))
        model.get_layer("up").kernel.assign(resampling.phase_kernel_from_torch(weight))
    path = str(tmp_path / "up.tflite")
    model.export(path, format="litert", verbose=False, target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "DEPTHWISE_CONV_2D" in ops and "DEPTH_TO_SPACE" in ops, ops
    assert not any("FLEX" in op.upper() or "CUSTOM" in op.upper() for op in ops), ops
    x = random((1, 6, 5, 4), seed=9)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert out.shape == (1, 96, 80, 4)
    np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


# resampling.pad_to_multiple and crop_like: DLA-Up's padding to a multiple of 32 and the crop back.


@pytest.mark.parametrize("multiple", [8, 32, 1])
def test_pad_to_multiple_and_crop_like(multiple):
    # One model of any height and width, sizes known only when it runs: odd, one, already a multiple, one above.
    inputs = keras.Input((None, None, 3))
    padded = resampling.pad_to_multiple(inputs, multiple, name="pad")
    model = keras.Model(inputs, [padded, resampling.crop_like(padded, inputs)])
    for name in ("pad_zeros", "pad_cells"):
        model.get_layer(name)
    for height, width in ((5, 9), (1, 1), (8, 16), (33, 7), (32, 31)):
        x = random((2, height, width, 3), seed=height * width)
        pad_h, pad_w = -height % multiple, -width % multiple
        expected = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        got, cropped = (keras.ops.convert_to_numpy(t) for t in model(x))
        assert got.shape == expected.shape and got.shape[1] % multiple == 0 and got.shape[2] % multiple == 0
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(cropped, x)
    # crop_like crops at the bottom and right to the reference, whatever the difference.
    big, small = keras.Input((None, None, 2)), keras.Input((None, None, 5))
    crop = keras.Model([big, small], resampling.crop_like(big, small))
    x, reference = random((1, 11, 6, 2)), random((1, 4, 5, 5))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(crop([x, reference])), x[:, :4, :5])


# fast_paths: TensorFlow's computations of a model's plain grouped Conv2D and BatchNormalization.


@pytest.fixture
def chunking_device(monkeypatch):
    """The grouped convs of attached layers chunk, as on a CPU, even where a GPU is visible."""
    monkeypatch.setattr(fast_paths, "_tensorflow_on_cpu", lambda: True)


@pytest.fixture
def keras_conv_calls(monkeypatch):
    """The names of the layers that run Keras' own `Conv2D.convolution_op`, in the order of their calls."""
    calls = []
    original = keras.layers.Conv2D.convolution_op

    @functools.wraps(original)
    def counting(self, *args):
        calls.append(self.name)
        return original(self, *args)

    monkeypatch.setattr(keras.layers.Conv2D, "convolution_op", counting)
    return calls


def attached_grouped_conv(x, kernel, bias, **kwargs):
    """A plain grouped `Conv2D` named "g" in an attached model of `x`'s shape, with `kernel` and `bias`."""
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, keras.layers.Conv2D(name="g", **kwargs)(inputs))
    model.get_layer("g").set_weights([kernel, bias])
    assert fast_paths.attach(model) is model
    return model, model.get_layer("g")


def plain_grouped_conv(x, kernel, bias, **kwargs):
    """The same conv, not attached: Keras' own grouped convolution."""
    layer = keras.layers.Conv2D(name="plain", **kwargs)
    layer.build(x.shape)
    layer.set_weights([kernel, bias])
    return layer


def torch_grouped(x_nhwc, kernel, bias, groups, stride, padding):
    """PyTorch's grouped `conv2d` in float64 on a channels-last input and a Keras-layout kernel."""
    weight = torch.from_numpy(kernel.transpose(3, 2, 0, 1)).to(torch.float64)  # (kh, kw, in/g, out) -> (out, ...)
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)).to(torch.float64)
    b = None if bias is None else torch.from_numpy(bias).to(torch.float64)
    y = torch.nn.functional.conv2d(x, weight, b, stride=stride, padding=padding, groups=groups)
    return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(
    "groups, in_per_group, out_per_group, per_chunk, stride, padding",
    [
        (8, 2, 2, None, 1, "same"),
        (8, 2, 3, 2, 2, "valid"),
        (4, 3, 1, 4, 1, "valid"),
        (6, 1, 2, 3, 2, "same"),
        (8, 2, 2, 1, 1, "same"),
    ],
)
def test_attached_grouped_conv_equals_torch_and_keras(
    groups, in_per_group, out_per_group, per_chunk, stride, padding, chunking_device, keras_conv_calls
):
    # Random kernels and bias on an odd, non-square input: any group, chunk or channel mix-up shows. The attached
    # layer (default chunks) and `chunked_grouped_conv` (`per_chunk` groups a chunk) against both references.
    x = random((2, 9, 7, groups * in_per_group), seed=groups)
    kwargs = dict(filters=groups * out_per_group, kernel_size=3, strides=stride, padding=padding, groups=groups)
    kernel = random((3, 3, in_per_group, groups * out_per_group), seed=1)
    bias = random((groups * out_per_group,), seed=2)
    model, layer = attached_grouped_conv(x, kernel, bias, **kwargs)
    assert type(layer) is keras.layers.Conv2D and fast_paths.attached(layer)
    got = keras.ops.convert_to_numpy(model(x))
    assert keras_conv_calls == []  # computed as chunks, not by Keras' grouped conv
    chunked = keras.ops.convert_to_numpy(
        fast_paths.chunked_grouped_conv(layer, x, layer.kernel, groups_per_chunk=per_chunk) + bias
    )
    reference = plain_grouped_conv(x, kernel, bias, **kwargs)
    assert not fast_paths.attached(reference)
    expected = keras.ops.convert_to_numpy(reference(x))
    assert keras_conv_calls == ["plain"]
    for out in (got, chunked):
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
        if padding == "valid":  # PyTorch pads symmetrically; Keras' "same" at stride 2 does not
            np.testing.assert_allclose(out, torch_grouped(x, kernel, bias, groups, stride, 0), rtol=0, atol=1e-5)
        elif stride == 1:
            np.testing.assert_allclose(out, torch_grouped(x, kernel, bias, groups, 1, 1), rtol=0, atol=1e-5)


def test_attached_grouped_conv_gradients_equal_keras_and_torch(chunking_device, keras_conv_calls):
    x_np = random((2, 6, 6, 16), seed=4)
    kernel, bias = random((3, 3, 2, 16), seed=5), random((16,), seed=6)
    kwargs = dict(filters=16, kernel_size=3, padding="same", groups=8)
    _, attached = attached_grouped_conv(x_np, kernel, bias, **kwargs)
    plain = plain_grouped_conv(x_np, kernel, bias, **kwargs)
    x = tf.constant(x_np)
    grads = []
    for layer in (attached, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) ** 2)
        grads.append([g.numpy() for g in tape.gradient(loss, [x, *layer.trainable_weights])])
    assert keras_conv_calls == ["plain"]
    weight = torch.from_numpy(kernel.transpose(3, 2, 0, 1)).to(torch.float64).requires_grad_()
    b = torch.from_numpy(bias).to(torch.float64).requires_grad_()
    tx = torch.from_numpy(x_np.transpose(0, 3, 1, 2)).to(torch.float64).requires_grad_()
    (torch.nn.functional.conv2d(tx, weight, b, padding=1, groups=8) ** 2).sum().backward()
    torch_grads = [
        tx.grad.numpy().transpose(0, 2, 3, 1),
        weight.grad.numpy().transpose(2, 3, 1, 0),  # (out, in/g, kh, kw) -> (kh, kw, in/g, out)
        b.grad.numpy(),
    ]
    for ours, keras_grad, torch_grad in zip(*grads, torch_grads, strict=True):
        np.testing.assert_allclose(ours, keras_grad, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ours, torch_grad, rtol=1e-5, atol=1e-4)


def test_attach_binds_grouped_convs_and_batch_norms_only():
    inputs = keras.Input((6, 6, 8))
    x = keras.layers.Conv2D(8, 3, padding="same", groups=4, name="grouped")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(8, 1, name="dense")(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    inner = keras.Model(inputs, x, name="inner")
    outer_inputs = keras.Input((6, 6, 8))
    outer = keras.Model(outer_inputs, keras.layers.BatchNormalization(name="outer_bn")(inner(outer_inputs)))
    every = [*outer.layers, *inner.layers]
    assert not any(fast_paths.attached(layer) for layer in every)
    fast_paths.attach(outer)
    bound = {layer.name for layer in every if fast_paths.attached(layer)}
    assert bound == {"grouped", "bn", "outer_bn"}  # nested models entered; dense and depthwise convs left alone
    assert not fast_paths.attached(keras.layers.Conv2D(8, 3, groups=4))  # a layer is attached only by `attach`


def test_chunk_groups_rule():
    # About 32 input channels per dense conv, at most 4 groups, a divisor of the groups.
    assert [fast_paths.chunk_groups(32, c) for c in (4, 8, 16, 32, 64)] == [4, 4, 2, 1, 1]
    assert fast_paths.chunk_groups(6, 4) == 3 and fast_paths.chunk_groups(7, 1) == 1


def _attached_counting_keras_calls(keras_conv_calls, seed):
    """An attached 4-group Conv2D "g", an input, its chunked output; `keras_conv_calls` records from then on."""
    x = random((1, 5, 5, 8), seed=seed)
    model, layer = attached_grouped_conv(
        x, random((3, 3, 2, 8), seed=seed + 1), random((8,), seed=seed + 2), filters=8, kernel_size=3,
        padding="same", groups=4,
    )  # fmt: skip
    chunked = keras.ops.convert_to_numpy(model(x))
    assert keras_conv_calls == []
    return model, x, chunked


def test_attached_grouped_conv_leaves_a_gpu_to_keras(monkeypatch, chunking_device, keras_conv_calls):
    # Without a CPU-under-TensorFlow the attached layer is Keras' own grouped conv (same numbers).
    model, x, chunked = _attached_counting_keras_calls(keras_conv_calls, seed=9)
    monkeypatch.setattr(fast_paths, "_tensorflow_on_cpu", lambda: False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), chunked, rtol=0, atol=1e-5)
    assert keras_conv_calls == ["g"]


def test_native_grouped_convs_block_traces_keras_grouped_conv(chunking_device, keras_conv_calls):
    model, x, chunked = _attached_counting_keras_calls(keras_conv_calls, seed=10)
    with fast_paths.native_grouped_convs():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), chunked, rtol=0, atol=1e-5)
    assert keras_conv_calls == ["g"]
    model(x)  # outside the block: chunked again
    assert keras_conv_calls == ["g"]


def test_attached_model_saves_plain_keras(tmp_path):
    inputs = keras.Input((6, 6, 8))
    x = keras.layers.Conv2D(8, 3, padding="same", groups=4, name="g")(inputs)
    model = fast_paths.attach(keras.Model(inputs, keras.layers.BatchNormalization(epsilon=1e-5, name="bn")(x)))
    model.get_layer("g").set_weights([random((3, 3, 2, 8), seed=7), random((8,), seed=8)])
    model.get_layer("bn").moving_variance.assign(np.full(8, 3.0, "float32"))
    assert fast_paths.attached(model.get_layer("g")) and fast_paths.attached(model.get_layer("bn"))
    assert "keras_dla" not in json.dumps(model.get_config())
    path = os.path.join(tmp_path, "g.keras")
    model.save(path)
    assert "keras_dla" not in saved_config(path)
    assert saved_layer_classes(path) == {
        ("keras.layers", "InputLayer"),
        ("keras.layers", "Conv2D"),
        ("keras.layers", "BatchNormalization"),
    }
    loaded = keras.saving.load_model(path)
    g, bn = loaded.get_layer("g"), loaded.get_layer("bn")
    assert type(g) is keras.layers.Conv2D and g.groups == 4 and type(bn) is keras.layers.BatchNormalization
    assert bn.epsilon == 1e-5 and not fast_paths.attached(g) and not fast_paths.attached(bn)
    x = random((1, 6, 6, 8))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-5)
    assert keras_dla.attach_fast_paths(loaded) is loaded  # a loaded model gets the fast paths again (public API)
    assert fast_paths.attached(loaded.get_layer("g")) and fast_paths.attached(loaded.get_layer("bn"))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-5)


@pytest.fixture
def keras_batch_norm_calls(monkeypatch):
    """The names of the layers that run Keras' own `BatchNormalization.call`, in the order of their calls."""
    calls = []
    original = keras.layers.BatchNormalization.call

    @functools.wraps(original)  # Keras reads the signature of `call`
    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.BatchNormalization, "call", counting)
    return calls


def _batch_norm_pair(shape, seed=0, dtype=None):
    """A plain Keras BatchNormalization "keras" and an attached one "fused", same random weights and statistics."""
    channels = shape[-1]
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels), rng.normal(size=channels)]
    weights.append(rng.uniform(0.5, 2.0, channels))
    pair = []
    for name in ("keras", "fused"):
        inputs = keras.Input(shape[1:], dtype=dtype)
        layer = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=dtype, name=name)
        model = keras.Model(inputs, layer(inputs))
        layer.set_weights([w.astype(dtype or "float32") for w in weights])
        if name == "fused":
            fast_paths.attach(model)
        pair.append(layer)
    keras_bn, fused = pair
    assert type(fused) is keras.layers.BatchNormalization and fast_paths.attached(fused)
    assert not fast_paths.attached(keras_bn)
    return keras_bn, fused


def test_fused_batch_norm_trains_as_keras_does(keras_batch_norm_calls):
    x = tf.constant(random((4, 7, 5, 6)) * 3 + 1)
    keras_bn, fused = _batch_norm_pair(x.shape)
    results = []
    for layer in (keras_bn, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.constant(random(x.shape, seed=1)))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    assert keras_batch_norm_calls == ["keras"]  # the attached layer ran the fused kernel
    for ours, expected in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=2e-5, rtol=1e-5)
    # The moving statistics moved (the comparison above is not between two untouched copies).
    untouched = _batch_norm_pair(x.shape)[1]
    assert not np.allclose(np.asarray(fused.moving_mean), untouched.moving_mean.numpy())
    assert not np.allclose(np.asarray(fused.moving_variance), untouched.moving_variance.numpy())


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_fused_batch_norm_in_mixed_precision_trains_as_keras_does(policy, keras_batch_norm_calls):
    """Under a mixed policy the fused kernel takes the half-precision input as it is (no float32 copy), and gives
    Keras' outputs, gradients and float32 moving statistics within half-precision rounding."""
    x = tf.constant(random((4, 7, 5, 6)) * 3 + 1)
    results = []
    for name in ("keras", "fused"):
        layer = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=policy, name=name)
        model = keras.Model(inputs := keras.Input(x.shape[1:]), layer(inputs))
        if name == "fused":
            fast_paths.attach(model)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * tf.constant(random(x.shape, seed=1)))
        assert y.dtype == policy.split("_")[1] and layer.moving_variance.dtype == "float32"
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([tf.cast(y, "float32"), *grads, layer.moving_mean, layer.moving_variance])
    assert keras_batch_norm_calls == ["keras"]
    half = tf.as_dtype(policy.split("_")[1])
    traced = tf.function(lambda t: layer(t, training=True)).get_concrete_function(tf.TensorSpec(x.shape, half))
    kernels = [op for op in traced.graph.get_operations() if op.type == "FusedBatchNormV3"]
    assert kernels and all(op.inputs[0].dtype == half for op in kernels)
    for ours, expected, tolerance in zip(results[1], results[0], (2e-2, 5e-2, 5e-2, 5e-2, 1e-5, 1e-5), strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=tolerance, rtol=tolerance)


def test_fused_batch_norm_inference_equals_keras_and_torch(keras_batch_norm_calls):
    x = random((2, 5, 5, 8), seed=2) * 2
    keras_bn, fused = _batch_norm_pair(x.shape, seed=3)
    expected = keras_bn(x, training=False)
    np.testing.assert_allclose(fused(x, training=False), expected, atol=1e-5)
    torch_bn = torch.nn.BatchNorm2d(8, eps=1e-5).eval()
    gamma, beta, mean, variance = (torch.from_numpy(w) for w in fused.get_weights())
    torch_bn.load_state_dict(dict(weight=gamma, bias=beta, running_mean=mean, running_var=variance), strict=False)
    with torch.no_grad():
        reference = torch_bn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(fused(x, training=False), reference, atol=1e-5)
    # Frozen layers normalise with the moving statistics in training too, as Keras' do.
    fused.trainable = False
    np.testing.assert_allclose(fused(x, training=True), expected, atol=1e-5)
    assert keras_batch_norm_calls == ["keras"]


def test_fused_batch_norm_falls_back_and_round_trips(tmp_path, keras_batch_norm_calls):
    sequence = random((3, 4, 6), seed=4)  # rank 3: Keras' own computation
    keras_bn, fused = _batch_norm_pair(sequence.shape)
    np.testing.assert_allclose(fused(sequence, training=True), keras_bn(sequence, training=True), atol=1e-5)
    assert keras_batch_norm_calls == ["fused", "keras"]
    wide = random((2, 3, 3, 4), seed=5).astype("float64")  # float64: the fused kernel has none
    keras_bn, fused = _batch_norm_pair(wide.shape, seed=6, dtype="float64")
    expected = keras_bn(wide, training=True)
    got = fused(wide, training=True)
    assert keras.backend.standardize_dtype(got.dtype) == "float64"
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert keras_batch_norm_calls[2:] == ["keras", "fused"]
    inputs = keras.Input((5, 5, 3))
    model = fast_paths.attach(keras.Model(inputs, keras.layers.BatchNormalization(epsilon=1e-5, name="bn")(inputs)))
    path = str(tmp_path / "bn.keras")
    model.save(path)
    assert "keras_dla" not in saved_config(path)
    restored = keras.saving.load_model(path)
    bn = restored.get_layer("bn")
    assert type(bn) is keras.layers.BatchNormalization and bn.epsilon == 1e-5 and not fast_paths.attached(bn)
