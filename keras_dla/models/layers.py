"""`DepthwiseConv2DTranspose`: PyTorch's grouped transposed convolution as a Keras layer, for users' own models.

keras_dla's DLA-Up builds the same computation from Keras' own layers (`keras_dla.resampling`), so that its files
load with plain Keras; this layer offers it as one layer, with the kernel in the transposed conv's own layout.
"""

import keras
from keras import layers, ops

from keras_dla import resampling


@keras.saving.register_keras_serializable(package="keras_dla")
class BilinearKernel(keras.initializers.Initializer):
    """The authors' bilinear fill of a `(2f, 2f, channels, 1)` upsampling kernel (`resampling.bilinear_kernel`)."""

    def __call__(self, shape, dtype=None):
        if len(shape) != 4 or shape[0] != shape[1] or shape[3] != 1:
            raise ValueError(f"BilinearKernel fills (k, k, channels, 1) kernels. Received: shape={tuple(shape)}")
        kernel = resampling.bilinear_kernel(shape[0], shape[2])
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

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (
            batch,
            resampling.upsampled_size(height, self.factor),
            resampling.upsampled_size(width, self.factor),
            channels,
        )

    def call(self, inputs):
        return resampling.upsample_by_phases(inputs, resampling.phase_kernel(self.kernel), self.factor)

    def get_config(self):
        config = super().get_config()
        config.update(factor=self.factor, kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config
