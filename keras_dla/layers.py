"""Custom layers: DLA-Up's depthwise transposed convolution, and fast forms of Keras' grouped conv and batch norm.

`ChunkedGroupConv2D` (the grouped convs of DLA-X) and `FusedBatchNormalization` (every DLA batch norm) are
described in their docstrings; the rest of this module text is about DLA-Up's upsampling.

The authors upsample with `ConvTranspose2d(C, C, 2f, stride=f, padding=f // 2, groups=C, bias=False)`.
Keras' `Conv2DTranspose` has no `groups` (keras-team/keras#19871), and its two obvious stand-ins waste
work: a dense C x C block-diagonal kernel costs C times too much, and zero-stuffing the input before a
depthwise conv costs f^2 times too much. `DepthwiseConv2DTranspose` computes the same sums at the
transposed convolution's own cost in the polyphase (sub-pixel) form:

Without padding, a stride-f transposed conv with a 2f kernel gives (H + 1) f outputs per axis, and output
`M f + b` (b < f) receives `x[M] w[b] + x[M - 1] w[f + b]`: for each of the f x f phases (b_h, b_w), a
2x2 correlation over the input grid padded by one. One depthwise conv with f^2 outputs per channel
computes all phases (run as a multiplier-1 depthwise conv over f^2 side-by-side copies of the input,
the kernel's channels ordered as `depth_to_space` reads them), `depth_to_space` interleaves them, and
cropping `f // 2` from each side applies PyTorch's padding. Every op (pad, tile, depthwise conv, depth_to_space,
slice) is a TFLite builtin.
"""

import contextlib
import contextvars
import math

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="keras_dla")
class BilinearKernel(keras.initializers.Initializer):
    """The authors' bilinear fill for a `(2f, 2f, channels, 1)` upsampling kernel, the same for every channel.

    With k the kernel size, f = ceil(k / 2) and c = (2f - 1 - f % 2) / (2f), tap (i, j) weighs
    (1 - |i / f - c|) (1 - |j / f - c|): a stride-f transposed conv with this kernel is bilinear
    interpolation by f.
    """

    def __call__(self, shape, dtype=None):
        if len(shape) != 4 or shape[0] != shape[1] or shape[3] != 1:
            raise ValueError(f"BilinearKernel fills (k, k, channels, 1) kernels. Received: shape={tuple(shape)}")
        size = shape[0]
        f = math.ceil(size / 2)
        center = (2 * f - 1 - f % 2) / (2.0 * f)
        taps = 1 - np.abs(np.arange(size) / f - center)
        kernel = np.outer(taps, taps)[:, :, None, None] * np.ones((1, 1, shape[2], 1))
        return ops.convert_to_tensor(kernel, dtype=dtype or keras.config.floatx())

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="keras_dla")
class DepthwiseConv2DTranspose(layers.Layer):
    """PyTorch's `ConvTranspose2d(C, C, 2 * factor, stride=factor, padding=factor // 2, groups=C, bias=False)`.

    Each channel is upsampled by `factor` with its own `2 factor x 2 factor` kernel, initialised to
    bilinear interpolation (`BilinearKernel`); freeze it with `trainable=False` for a fixed bilinear
    upsampling, as the authors' final `up` layer is. An input of size H gives `(H + 1) factor - 2 (factor // 2)`,
    that is `H * factor` for even factors. Channels-last only.

    The kernel has shape `(2 factor, 2 factor, channels, 1)` (the layout of Keras' `DepthwiseConv2D`):
    PyTorch's weight `(channels, 1, 2 factor, 2 factor)` maps onto it by `transpose(2, 3, 0, 1)`.

    Args:
        factor: the integer upsampling factor (the stride), >= 1.
        kernel_initializer: initializer of the kernel; bilinear by default.
        **kwargs: base layer arguments (`name`, `trainable`, `dtype`).
    """

    def __init__(self, factor, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"`factor` should be a positive integer. Received: factor={factor!r}")
        self.factor = factor
        self.kernel_initializer = keras.initializers.get(kernel_initializer or BilinearKernel())

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"The channel dimension of the input must be known. Received: input_shape={input_shape}")
        size = 2 * self.factor
        self.kernel = self.add_weight(
            name="kernel",
            shape=(size, size, channels, 1),
            initializer=self.kernel_initializer,
        )

    def _output_size(self, size):
        return None if size is None else (size + 1) * self.factor - 2 * (self.factor // 2)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, self._output_size(height), self._output_size(width), channels)

    def _phase_kernel(self):
        """The (2, 2, f^2 C, 1) depthwise kernel of the phases, channel `(b_h f + b_w) C + c`.

        Phase (b_h, b_w) of channel c weighs tap (d_h, d_w) by w[(1 - d_h) f + b_h, (1 - d_w) f + b_w, c].
        """
        f = self.factor
        channels = self.kernel.shape[2]
        kernel = ops.reshape(self.kernel, (2, f, 2, f, channels))  # (a_h, b_h, a_w, b_w, C), index = a f + b
        kernel = ops.flip(kernel, axis=(0, 2))  # tap d = 1 - a reads x[M - 1 + d]
        kernel = ops.transpose(kernel, (0, 2, 1, 3, 4))  # (d_h, d_w, b_h, b_w, C)
        return ops.reshape(kernel, (2, 2, f * f * channels, 1))

    def call(self, inputs):
        f = self.factor
        x = ops.pad(inputs, ((0, 0), (1, 1), (1, 1), (0, 0)))
        # depth_to_space reads its channels phase-major (phase C + c): with f^2 copies of the input side by
        # side, a depthwise conv of multiplier 1 (the fast one; multipliers > 1 run slowly on CPU) writes its
        # outputs in that order, so no transpose of the (large) output is needed.
        if f > 1:
            x = ops.tile(x, (1, 1, 1, f * f))
        phases = ops.depthwise_conv(x, ops.cast(self._phase_kernel(), x.dtype), padding="valid")
        y = ops.depth_to_space(phases, f) if f > 1 else phases
        crop = f // 2
        if crop:
            y = y[:, crop:-crop, crop:-crop, :]
        return y

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor, kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


@keras.saving.register_keras_serializable(package="keras_dla")
class PadToMultiple(layers.Layer):
    """Zero-pads height and width at the bottom and right up to the next multiple of `multiple`.

    DLA-Up adds each level to the 2x upsampled level below it, so every level must be exactly twice the
    next one: the authors' model needs sizes that are multiples of 32. Padding inside the model (and
    `CropLike` after it) lifts that restriction and changes nothing at multiples of 32.
    """

    def __init__(self, multiple, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
            raise ValueError(f"`multiple` should be a positive integer. Received: multiple={multiple!r}")
        self.multiple = multiple

    def _padded(self, size):
        return None if size is None else -(-size // self.multiple) * self.multiple

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, self._padded(height), self._padded(width), channels)

    def call(self, inputs):
        shape = ops.shape(inputs)
        pad_h = (self.multiple - shape[1] % self.multiple) % self.multiple
        pad_w = (self.multiple - shape[2] % self.multiple) % self.multiple
        return ops.pad(inputs, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))

    def get_config(self):
        config = super().get_config()
        config.update(multiple=self.multiple)
        return config


@keras.saving.register_keras_serializable(package="keras_dla")
class CropLike(layers.Layer):
    """Crops `inputs[0]` at the bottom and right to the height and width of `inputs[1]` (undoes `PadToMultiple`)."""

    def compute_output_shape(self, input_shape):
        shape, reference = input_shape
        return (shape[0], reference[1], reference[2], shape[3])

    def call(self, inputs):
        x, reference = inputs
        shape = ops.shape(reference)
        return x[:, : shape[1], : shape[2], :]


def chunk_groups(groups, channels_per_group, *, target_channels=32, max_groups=4):
    """Groups merged into each chunk of `ChunkedGroupConv2D`: about `target_channels` inputs, at most `max_groups`.

    The largest divisor of `groups` not above `min(max_groups, target_channels // channels_per_group)` (at least
    1). A chunk of s groups costs s times the grouped FLOPs (its kernel is block-diagonal), so s stays small;
    the defaults were the fastest of s in {1, 2, 4, 8} for DLA-X's 3x3 convs in a one-off timing on the 2-core
    development CPU (not kept: the machine was busy, so only the ordering is trusted).
    """
    limit = max(1, min(max_groups, target_channels // max(channels_per_group, 1)))
    return max(s for s in range(1, limit + 1) if groups % s == 0)


_native_grouped_convs = contextvars.ContextVar("keras_dla_native_grouped_convs", default=False)


@contextlib.contextmanager
def native_grouped_convs():
    """Within this block `ChunkedGroupConv2D(groups_per_chunk=None)` traces Keras' own grouped conv.

    For exports to runtimes that have a grouped convolution of their own: TFLite's CONV_2D takes groups, and the
    chunked form would store every block-diagonal kernel, zeros included (`keras_dla.export.export_tflite`).
    """
    token = _native_grouped_convs.set(True)
    try:
        yield
    finally:
        _native_grouped_convs.reset(token)


def _tensorflow_on_cpu():
    """Whether Keras runs on TensorFlow with no GPU visible (where Keras' grouped conv goes through XLA)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


@keras.saving.register_keras_serializable(package="keras_dla")
class ChunkedGroupConv2D(layers.Conv2D):
    """A grouped `Conv2D` that runs as a few dense convolutions on a CPU under TensorFlow.

    Keras 3's TensorFlow backend runs every grouped convolution through XLA (TensorFlow has no grouped conv
    kernel for the CPU): several times slower than oneDNN's dense convolutions for inference, and far slower for
    the gradient (DLA-60X's Keras training step did not finish; see README, "Performance"). This layer keeps
    `Conv2D`'s weights and config (the kernel shape `(kh, kw, in / groups, filters)`, so weights copy over
    unchanged) and computes the same sums as `groups / s` ordinary convolutions over consecutive chunks of
    `s = groups_per_chunk` groups, each with the block-diagonal kernel of its groups, concatenated. The DLA
    builders use it for every grouped conv.

    Args:
        groups_per_chunk: groups per dense convolution (a divisor of `groups`): always chunked. `None` (default)
            chunks with `chunk_groups` where Keras runs on TensorFlow with no GPU, and leaves a GPU, another
            backend, or a TFLite export (`native_grouped_convs`) to Keras' own grouped convolution.
        **kwargs: the arguments of `keras.layers.Conv2D`.
    """

    def __init__(self, *args, groups_per_chunk=None, **kwargs):
        super().__init__(*args, **kwargs)
        if groups_per_chunk is not None and (
            not isinstance(groups_per_chunk, int) or groups_per_chunk < 1 or self.groups % groups_per_chunk
        ):
            raise ValueError(
                f"`groups_per_chunk` should be a positive divisor of groups={self.groups}. "
                f"Received: groups_per_chunk={groups_per_chunk!r}"
            )
        self.groups_per_chunk = groups_per_chunk

    def _chunk(self, in_per_group):
        return self.groups_per_chunk or chunk_groups(self.groups, in_per_group)

    def convolution_op(self, inputs, kernel):
        kh, kw, in_per_group, filters = kernel.shape
        native = _native_grouped_convs.get() or not _tensorflow_on_cpu()
        if self.groups == 1 or (self.groups_per_chunk is None and native):
            return super().convolution_op(inputs, kernel)
        s = self._chunk(in_per_group)
        chunks = self.groups // s
        out_per_group = filters // self.groups
        # kernel[h, w, i, (c, t, m)] for group c * s + t -> block-diagonal dense[c][h, w, (t', i), (t, m)].
        k = ops.reshape(kernel, (kh, kw, in_per_group, chunks, s, out_per_group))
        k = ops.transpose(k, (0, 1, 3, 2, 4, 5))[:, :, :, None]  # (kh, kw, c, 1, i, t, m)
        eye = ops.reshape(ops.eye(s, dtype=kernel.dtype), (1, 1, 1, s, 1, s, 1))
        dense = ops.reshape(k * eye, (kh, kw, chunks, s * in_per_group, s * out_per_group))
        axis = -1 if self.data_format == "channels_last" else 1
        pieces = ops.split(inputs, chunks, axis=axis) if chunks > 1 else [inputs]
        outputs = [
            ops.conv(
                piece,
                dense[:, :, c],
                strides=list(self.strides),
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format=self.data_format,
            )
            for c, piece in enumerate(pieces)
        ]
        return ops.concatenate(outputs, axis=axis) if chunks > 1 else outputs[0]

    def get_config(self):
        config = super().get_config()
        config.update(groups_per_chunk=self.groups_per_chunk)
        return config


@keras.saving.register_keras_serializable(package="keras_dla")
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused batch-norm kernel.

    Keras 3 normalises with separate moment, subtract, multiply and add passes (and as many passes back for the
    gradient). On TensorFlow, over a 4-D channels-last input, this layer runs `FusedBatchNormV3` instead: one
    oneDNN kernel for the forward pass and one for the gradient in training, and in inference a form that
    TensorFlow's graph optimiser fuses into the convolution before it. It keeps Keras' semantics and weights: the
    moving statistics are updated with the biased batch variance, as Keras does (the kernel returns the unbiased
    one for that purpose; it is rescaled). Anything else (another backend, another rank or axis, float64, a mask,
    `synchronized` or `renorm`) is left to Keras' own computation.

    In a one-off A/B timing of DLA-34's training step (batch 16, 2-core CPU, otherwise idle): 7.5 -> 9.0 images/s.
    """

    def _fused(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and len(inputs.shape) == 4
            and keras.backend.standardize_dtype(inputs.dtype) != "float64"  # the kernel has no float64
            and self.axis in (-1, 3)
            and not self.synchronized
            and not self.renorm
            and self.scale
            and self.center
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, "float32")
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
