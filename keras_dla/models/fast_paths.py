"""TensorFlow's faster computations of a model's plain Keras batch norms and grouped convolutions.

keras_dla models hold only Keras' own layers, so their `.keras` files load with plain Keras on any backend. On
TensorFlow two of those layers have a faster computation of the same function, which `attach` binds to the layer
objects of a built model (their class and config stay Keras' own, so nothing of keras_dla reaches a saved file):

- `BatchNormalization` runs as TensorFlow's `FusedBatchNormV3`: one oneDNN kernel for the forward pass and one for
  the gradient, where Keras 3 computes moments, subtract, multiply and add as separate passes; in inference,
  TensorFlow's graph optimiser fuses it into the convolution before it. Keras' semantics are kept: the moving
  variance is updated with the biased batch variance (the kernel returns the unbiased one; it is rescaled).
- A grouped `Conv2D` runs, on a CPU, as a few dense convolutions over consecutive chunks of groups, each with the
  block-diagonal kernel of its groups: Keras' TensorFlow backend sends every grouped convolution through XLA
  (TensorFlow has no grouped CPU kernel), which is several times slower than oneDNN's dense convolutions for
  inference and far slower for the gradient.

The builders attach both on TensorFlow; `keras_dla.attach_fast_paths(model)` does it for a model loaded with
`keras.models.load_model`. Other backends keep Keras' own computation, which is their fast one.
"""

import contextlib
import contextvars
import types

import keras
from keras import layers, ops

_native_grouped_convs = contextvars.ContextVar("keras_dla_native_grouped_convs", default=False)


@contextlib.contextmanager
def native_grouped_convs():
    """Within this block grouped convolutions trace as Keras' own grouped conv, not as chunks.

    For exports to runtimes that have a grouped convolution of their own: TFLite's CONV_2D takes groups, and the
    chunked form would store every block-diagonal kernel, zeros included (`keras_dla.export.export_tflite`).
    """
    token = _native_grouped_convs.set(True)
    try:
        yield
    finally:
        _native_grouped_convs.reset(token)


def chunk_groups(groups, channels_per_group, *, target_channels=32, max_groups=4):
    """Groups merged into each chunk of a chunked grouped conv: about `target_channels` inputs, at most `max_groups`.

    The largest divisor of `groups` not above `min(max_groups, target_channels // channels_per_group)` (at least
    1). A chunk of s groups costs s times the grouped FLOPs (its kernel is block-diagonal), so s stays small;
    the defaults were the fastest of s in {1, 2, 4, 8} for DLA-X's 3x3 convs on a 2-core CPU.
    """
    limit = max(1, min(max_groups, target_channels // max(channels_per_group, 1)))
    return max(s for s in range(1, limit + 1) if groups % s == 0)


def chunked_grouped_conv(conv, inputs, kernel, groups_per_chunk=None):
    """What the grouped `conv` computes on `inputs` with `kernel`, as `groups / s` dense convolutions.

    `kernel` has Keras' grouped shape `(kh, kw, in / groups, filters)`; chunk c of `s = groups_per_chunk`
    (default `chunk_groups`) groups gets the block-diagonal dense kernel of its groups.
    """
    kh, kw, in_per_group, filters = kernel.shape
    s = groups_per_chunk or chunk_groups(conv.groups, in_per_group)
    chunks = conv.groups // s
    out_per_group = filters // conv.groups
    # kernel[h, w, i, (c, t, m)] for group c * s + t -> block-diagonal dense[c][h, w, (t', i), (t, m)].
    k = ops.reshape(kernel, (kh, kw, in_per_group, chunks, s, out_per_group))
    k = ops.transpose(k, (0, 1, 3, 2, 4, 5))[:, :, :, None]  # (kh, kw, c, 1, i, t, m)
    eye = ops.reshape(ops.eye(s, dtype=kernel.dtype), (1, 1, 1, s, 1, s, 1))
    dense = ops.reshape(k * eye, (kh, kw, chunks, s * in_per_group, s * out_per_group))
    axis = -1 if conv.data_format == "channels_last" else 1
    pieces = ops.split(inputs, chunks, axis=axis) if chunks > 1 else [inputs]
    outputs = [
        ops.conv(
            piece,
            dense[:, :, c],
            strides=list(conv.strides),
            padding=conv.padding,
            dilation_rate=conv.dilation_rate,
            data_format=conv.data_format,
        )
        for c, piece in enumerate(pieces)
    ]
    return ops.concatenate(outputs, axis=axis) if chunks > 1 else outputs[0]


def _tensorflow_on_cpu():
    """Whether Keras runs on TensorFlow with no GPU visible (where Keras' grouped conv goes through XLA)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


def _chunked_convolution_op(self, inputs, kernel):
    if self.groups == 1 or _native_grouped_convs.get() or not _tensorflow_on_cpu():
        return layers.Conv2D.convolution_op(self, inputs, kernel)
    return chunked_grouped_conv(self, inputs, kernel)


def _fusable(layer, inputs, mask):
    return (
        mask is None
        and len(inputs.shape) == 4
        and keras.backend.standardize_dtype(inputs.dtype) != "float64"  # the kernel has no float64
        and layer.axis in (-1, 3)
        and not layer.synchronized
        and not layer.renorm
        and layer.scale
        and layer.center
    )


def _fused_batch_norm_call(self, inputs, training=None, mask=None):
    if not _fusable(self, inputs, mask):
        return layers.BatchNormalization.call(self, inputs, training=training, mask=mask)
    import tensorflow as tf

    # The kernel takes bfloat16 and float16 inputs as they are (its statistics, scale and offset stay float32), so a
    # mixed-precision model needs no casts around each batch norm; Keras' own layer casts to float32 and back.
    low = keras.backend.standardize_dtype(inputs.dtype) in ("bfloat16", "float16")
    x = inputs if low else tf.cast(inputs, "float32")
    gamma, beta = tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32")
    if training and self.trainable:
        empty = tf.constant([], "float32")
        y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True,
        )  # fmt: skip
        shape = tf.shape(x)
        count = tf.cast(shape[0] * shape[1] * shape[2], "float32")
        variance = tf.where(count > 1, unbiased * (count - 1) / tf.maximum(count, 1), tf.zeros_like(unbiased))
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + tf.cast(batch, moving.dtype) * (1 - self.momentum))
    else:
        y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, "float32"),
            variance=tf.cast(self.moving_variance, "float32"), epsilon=self.epsilon, data_format="NHWC",
            is_training=False,
        )  # fmt: skip
    return tf.cast(y, self.compute_dtype)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def attach(model):
    """Binds TensorFlow's fast batch norm and grouped convolution to `model`'s layers; returns `model`.

    Only on the TensorFlow backend; elsewhere, and for layers of other classes, nothing changes. The layers keep
    their class, weights and config: the model computes the same function and saves the same file.
    """
    if keras.backend.backend() != "tensorflow":
        return model
    for layer in _all_layers(model):
        if type(layer) is layers.BatchNormalization:
            layer.call = types.MethodType(_fused_batch_norm_call, layer)
        elif type(layer) is layers.Conv2D and layer.groups > 1:
            layer.convolution_op = types.MethodType(_chunked_convolution_op, layer)
    return model


def attached(layer):
    """Whether `attach` has bound a fast computation to `layer`."""
    return any(
        getattr(getattr(layer, method, None), "__func__", None) is fast
        for method, fast in (("call", _fused_batch_norm_call), ("convolution_op", _chunked_convolution_op))
    )
