"""DepthwiseConv2DTranspose against PyTorch's grouped ConvTranspose2d, the padding layers of DLA-Up,
ChunkedGroupConv2D against PyTorch's grouped Conv2d and Keras' own grouped Conv2D, and FusedBatchNormalization
against Keras' BatchNormalization and PyTorch's BatchNorm2d."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from keras_dla.layers import (
    BilinearKernel,
    ChunkedGroupConv2D,
    CropLike,
    DepthwiseConv2DTranspose,
    FusedBatchNormalization,
    PadToMultiple,
    chunk_groups,
)


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


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
    # The authors' fill for kernel 4 (factor 2) and 8 (factor 4), worked out by hand from REFERENCE.md §4.
    taps = {
        4: [0.25, 0.75, 0.75, 0.25],
        8: [0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125],
    }
    for size, row in taps.items():
        kernel = keras.ops.convert_to_numpy(BilinearKernel()((size, size, 3, 1)))
        for c in range(3):
            np.testing.assert_allclose(kernel[:, :, c, 0], np.outer(row, row), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"Received: shape=\(4, 4, 3\)"):
        BilinearKernel()((4, 4, 3))


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bilinear_start_is_bilinear_interpolation(factor):
    # Away from the border (where the transposed conv sees zeros), the initial layer interpolates exactly
    # like half-pixel bilinear resizing.
    x = random((1, 6, 7, 2), seed=factor)
    out = keras.ops.convert_to_numpy(DepthwiseConv2DTranspose(factor)(x))
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), scale_factor=factor, mode="bilinear", align_corners=False
    )
    resized = resized.numpy().transpose(0, 2, 3, 1)
    inner = (slice(None), slice(factor, -factor), slice(factor, -factor))
    np.testing.assert_allclose(out[inner], resized[inner], atol=1e-5)


def test_weights_are_depthwise_and_trainable_switch():
    # One (2f, 2f, C, 1) kernel, no dense C x C one; `trainable=False` freezes it through a training step.
    inputs = keras.Input((4, 4, 8))
    learned = DepthwiseConv2DTranspose(4, name="learned")
    frozen = DepthwiseConv2DTranspose(2, trainable=False, name="frozen")
    model = keras.Model(inputs, frozen(learned(inputs)))
    assert [tuple(w.shape) for w in model.weights] == [(8, 8, 8, 1), (4, 4, 8, 1)]
    assert [w.path for w in model.trainable_weights] == ["learned/kernel"]
    before = [w.numpy() for w in model.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    model.train_on_batch(random((2, 4, 4, 8)), random((2, 32, 32, 8), seed=1))
    after = [w.numpy() for w in model.weights]
    assert not np.allclose(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_keras_round_trip(tmp_path):
    inputs = keras.Input((None, None, 3))
    x = PadToMultiple(8, name="pad")(inputs)
    x = DepthwiseConv2DTranspose(4, trainable=False, name="up")(x)
    x = CropLike(name="crop")([x, inputs])
    model = keras.Model(inputs, x)
    model.get_layer("up").kernel.assign(random((8, 8, 3, 1), seed=3))
    path = os.path.join(tmp_path, "up.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("up").get_config() == model.get_layer("up").get_config()
    assert not loaded.get_layer("up").trainable
    assert loaded.get_layer("pad").multiple == 8
    x = random((2, 5, 9, 3))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_pad_to_multiple_and_crop():
    x = random((2, 5, 9, 3))
    padded = keras.ops.convert_to_numpy(PadToMultiple(8)(x))
    assert padded.shape == (2, 8, 16, 3)
    np.testing.assert_array_equal(padded[:, :5, :9], x)
    assert not padded[:, 5:].any() and not padded[:, :, 9:].any()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(CropLike()([padded, x])), x)
    # Already a multiple: unchanged.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(PadToMultiple(8)(padded)), padded)


def test_bad_arguments():
    for factor in (0, -2, 2.0, True, "2"):
        with pytest.raises(ValueError, match="Received: factor="):
            DepthwiseConv2DTranspose(factor)
    with pytest.raises(ValueError, match="Received: multiple=0"):
        PadToMultiple(0)


def test_tflite_builtin_ops_only(tmp_path):
    # Converted with TFLITE_BUILTINS alone, a Flex (TF) op would make the conversion fail.
    from ai_edge_litert.interpreter import Interpreter

    inputs = keras.Input((6, 5, 4), batch_size=1)
    outputs = DepthwiseConv2DTranspose(8, name="up")(DepthwiseConv2DTranspose(2, name="up2")(inputs))
    model = keras.Model(inputs, outputs)
    model.get_layer("up").kernel.assign(random((16, 16, 4, 1), seed=5))
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


def torch_grouped(x_nhwc, kernel, bias, groups, stride, padding):
    """PyTorch's grouped `conv2d` in float64 on a channels-last input and a Keras-layout kernel."""
    weight = torch.from_numpy(kernel.transpose(3, 2, 0, 1)).to(
        torch.float64
    )  # (kh, kw, in/g, out) -> (out, in/g, kh, kw)
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
def test_chunked_group_conv_equals_torch_and_keras(groups, in_per_group, out_per_group, per_chunk, stride, padding):
    # Random kernels and bias on an odd, non-square input: any group, chunk or channel mix-up shows.
    x = random((2, 9, 7, groups * in_per_group), seed=groups)
    kwargs = dict(filters=groups * out_per_group, kernel_size=3, strides=stride, padding=padding, groups=groups)
    chunked = ChunkedGroupConv2D(groups_per_chunk=per_chunk, **kwargs)
    reference = keras.layers.Conv2D(**kwargs)
    chunked.build(x.shape)
    reference.build(x.shape)
    kernel, bias = random(tuple(chunked.kernel.shape), seed=1), random((groups * out_per_group,), seed=2)
    for layer in (chunked, reference):
        layer.set_weights([kernel, bias])
    got = keras.ops.convert_to_numpy(chunked(x))
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(reference(x)), rtol=0, atol=1e-5)
    if padding == "valid":  # PyTorch pads symmetrically; Keras' "same" at stride 2 does not
        np.testing.assert_allclose(got, torch_grouped(x, kernel, bias, groups, stride, 0), rtol=0, atol=1e-5)
    elif stride == 1:
        np.testing.assert_allclose(got, torch_grouped(x, kernel, bias, groups, 1, 1), rtol=0, atol=1e-5)


def test_chunked_group_conv_gradients_equal_keras():
    x = tf.constant(random((2, 6, 6, 16), seed=4))
    layers = [
        ChunkedGroupConv2D(16, 3, padding="same", groups=8, groups_per_chunk=4),
        keras.layers.Conv2D(16, 3, padding="same", groups=8),
    ]
    for layer in layers:
        layer.build(x.shape)
        layer.set_weights([random((3, 3, 2, 16), seed=5), random((16,), seed=6)])
    grads = []
    for layer in layers:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        grads.append([g.numpy() for g in tape.gradient(loss, layer.trainable_weights)])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_chunk_groups_rule():
    # About 32 input channels per dense conv, at most 4 groups, a divisor of the groups.
    assert [chunk_groups(32, c) for c in (4, 8, 16, 32, 64)] == [4, 4, 2, 1, 1]
    assert chunk_groups(6, 4) == 3 and chunk_groups(7, 1) == 1


def test_chunked_group_conv_round_trip_and_bad_arguments(tmp_path):
    inputs = keras.Input((6, 6, 8))
    model = keras.Model(inputs, ChunkedGroupConv2D(8, 3, groups=4, groups_per_chunk=2, name="g")(inputs))
    model.get_layer("g").set_weights([random((3, 3, 2, 8), seed=7), random((8,), seed=8)])
    path = os.path.join(tmp_path, "g.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("g"), ChunkedGroupConv2D) and loaded.get_layer("g").groups_per_chunk == 2
    x = random((1, 6, 6, 8))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for bad in (3, 0, 2.0):
        with pytest.raises(ValueError, match="Received: groups_per_chunk="):
            ChunkedGroupConv2D(8, 3, groups=4, groups_per_chunk=bad)


def _grouped_layer_counting_keras_calls(monkeypatch, seed):
    """A built 4-group `ChunkedGroupConv2D`, an input, its chunked output, and a list that records each call of
    Keras' own (grouped) `Conv2D.convolution_op` from then on."""
    x = random((1, 5, 5, 8), seed=seed)
    layer = ChunkedGroupConv2D(8, 3, padding="same", groups=4)
    layer.build(x.shape)
    chunked = keras.ops.convert_to_numpy(layer(x))
    calls = []
    original = keras.layers.Conv2D.convolution_op
    monkeypatch.setattr(
        keras.layers.Conv2D, "convolution_op", lambda self, *args: calls.append("keras") or original(self, *args)
    )
    return layer, x, chunked, calls


def test_chunked_group_conv_leaves_a_gpu_to_keras(monkeypatch):
    # Without a CPU-under-TensorFlow, `groups_per_chunk=None` is Keras' own grouped conv (same numbers).
    import keras_dla.layers

    layer, x, chunked, calls = _grouped_layer_counting_keras_calls(monkeypatch, seed=9)
    monkeypatch.setattr(keras_dla.layers, "_tensorflow_on_cpu", lambda: False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), chunked, rtol=0, atol=1e-5)
    assert calls == ["keras"]


def test_native_grouped_convs_block_traces_keras_grouped_conv(monkeypatch):
    from keras_dla.layers import native_grouped_convs

    layer, x, chunked, calls = _grouped_layer_counting_keras_calls(monkeypatch, seed=10)
    with native_grouped_convs():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), chunked, rtol=0, atol=1e-5)
    assert calls == ["keras"]
    layer(x)  # outside the block: chunked again
    assert calls == ["keras"]


def _batch_norm_pair(shape, seed=0):
    """A Keras BatchNormalization and a FusedBatchNormalization with the same random weights and statistics."""
    channels = shape[-1]
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels), rng.normal(size=channels)]
    weights.append(rng.uniform(0.5, 2.0, channels))
    pair = []
    for cls in (keras.layers.BatchNormalization, FusedBatchNormalization):
        layer = cls(epsilon=1e-5, momentum=0.9)
        layer.build(shape)
        layer.set_weights([w.astype("float32") for w in weights])
        pair.append(layer)
    return pair


def test_fused_batch_norm_trains_as_keras_does():
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
    for ours, expected in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=2e-5, rtol=1e-5)
    # The moving statistics moved (the comparison above is not between two untouched copies).
    assert not np.allclose(np.asarray(fused.moving_mean), _batch_norm_pair(x.shape)[1].moving_mean.numpy())


def test_fused_batch_norm_inference_equals_keras_and_torch():
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


def test_fused_batch_norm_falls_back_and_round_trips(tmp_path):
    sequence = random((3, 4, 6), seed=4)  # rank 3: Keras' own computation
    keras_bn, fused = _batch_norm_pair(sequence.shape)
    np.testing.assert_allclose(fused(sequence, training=True), keras_bn(sequence, training=True), atol=1e-5)
    wide = random((2, 3, 3, 4), seed=5).astype("float64")  # float64: the fused kernel has none
    expected = keras.layers.BatchNormalization(dtype="float64")(wide, training=True)
    np.testing.assert_allclose(FusedBatchNormalization(dtype="float64")(wide, training=True), expected, atol=1e-12)
    inputs = keras.Input((5, 5, 3))
    model = keras.Model(inputs, FusedBatchNormalization(epsilon=1e-5, name="bn")(inputs))
    path = str(tmp_path / "bn.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored.get_layer("bn")) is FusedBatchNormalization and restored.get_layer("bn").epsilon == 1e-5
