"""DLA-Up's upsampling and size handling, built from Keras' own layers and ops so that a `.keras` file needs no
keras_dla to load.

The authors upsample with `ConvTranspose2d(C, C, 2f, stride=f, padding=f // 2, groups=C, bias=False)` (ucbdrive/dla
`dla_up.py`). Keras' `Conv2DTranspose` has no `groups` (keras-team/keras#19871), and its two obvious stand-ins waste
work: a dense C x C block-diagonal kernel costs C times too much, and zero-stuffing the input before a depthwise
conv costs f^2 times too much. `depthwise_conv_transpose` computes the same sums at the transposed convolution's
own cost in the polyphase (sub-pixel) form:

Without padding, a stride-f transposed conv with a 2f kernel gives (H + 1) f outputs per axis, and output
`M f + b` (b < f) receives `x[M] w[b] + x[M - 1] w[f + b]`: for each of the f x f phases (b_h, b_w), a 2x2
correlation over the input grid padded by one. One `DepthwiseConv2D` of multiplier 1 over f^2 side-by-side copies
of the input computes all phases (its kernel, the *phase kernel*, holds the transposed conv's taps reordered, one
to one), `depth_to_space` interleaves them, and cropping `f // 2` from each side applies PyTorch's padding. Every
op (pad, tile, depthwise conv, depth_to_space, crop) is a TFLite builtin.

DLA-Up adds each level to the 2x upsampled level below it, so the authors' model needs sizes that are multiples
of 32. `pad_to_multiple` and `crop_like` pad the input inside the model and crop the output back, for sizes known
only when the model runs too: the row and column indices they gather are counted from the tensors themselves.
"""

import math

import numpy as np
from keras import layers, ops


def bilinear_kernel(size, channels):
    """The authors' bilinear fill of a `(size, size, channels, 1)` upsampling kernel, the same for every channel.

    With f = ceil(size / 2) and c = (2f - 1 - f % 2) / (2f), tap (i, j) weighs (1 - |i / f - c|) (1 - |j / f - c|):
    a stride-f transposed conv with this kernel is bilinear interpolation by f (ucbdrive/dla `dla_up.py`,
    `fill_up_weights`).
    """
    f = math.ceil(size / 2)
    center = (2 * f - 1 - f % 2) / (2.0 * f)
    taps = 1 - np.abs(np.arange(size) / f - center)
    return np.outer(taps, taps)[:, :, None, None] * np.ones((1, 1, channels, 1))


def phase_kernel(kernel):
    """The `(2, 2, f^2 C, 1)` phase kernel of a `(2f, 2f, C, 1)` depthwise transposed-conv kernel.

    Channel `(b_h f + b_w) C + c` is phase (b_h, b_w) of channel c, the order in which `depth_to_space` reads
    them; it weighs tap (d_h, d_w) by `kernel[(1 - d_h) f + b_h, (1 - d_w) f + b_w, c]`. Works on NumPy arrays
    and backend tensors alike.
    """
    f = kernel.shape[0] // 2
    channels = kernel.shape[2]
    k = ops.reshape(kernel, (2, f, 2, f, channels))  # (a_h, b_h, a_w, b_w, C), index = a f + b
    k = ops.flip(k, axis=(0, 2))  # tap d = 1 - a reads x[M - 1 + d]
    k = ops.transpose(k, (0, 2, 1, 3, 4))  # (d_h, d_w, b_h, b_w, C)
    return ops.reshape(k, (2, 2, f * f * channels, 1))


def phase_kernel_from_torch(weight):
    """NumPy: the phase kernel of PyTorch's grouped `ConvTranspose2d` weight `(C, 1, 2f, 2f)`."""
    f = weight.shape[-1] // 2
    channels = weight.shape[0]
    k = np.transpose(weight, (2, 3, 0, 1)).reshape(2, f, 2, f, channels)[::-1, :, ::-1]
    return np.ascontiguousarray(k.transpose(0, 2, 1, 3, 4).reshape(2, 2, f * f * channels, 1))


def upsampled_size(size, factor):
    """The output size of `depthwise_conv_transpose` for an input of `size` (None: unknown)."""
    return None if size is None else (size + 1) * factor - 2 * (factor // 2)


def upsample_by_phases(x, kernel, factor):
    """The polyphase computation on tensors: `x` padded, tiled, convolved with the phase `kernel`, interleaved."""
    x = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    if factor > 1:
        x = ops.tile(x, (1, 1, 1, factor * factor))
    y = ops.depthwise_conv(x, ops.cast(kernel, x.dtype), padding="valid")
    if factor > 1:
        y = ops.depth_to_space(y, factor)
    crop = factor // 2
    return y[:, crop:-crop, crop:-crop, :] if crop else y


def depthwise_conv_transpose(x, factor, *, name, trainable=True):
    """PyTorch's `ConvTranspose2d(C, C, 2 factor, stride=factor, padding=factor // 2, groups=C, bias=False)`.

    Built into the graph of `x` from Keras layers and ops: `ZeroPadding2D`, a tile, a `DepthwiseConv2D` named
    `name` that holds the phase kernel (initialised to bilinear interpolation, `bilinear_kernel`), a
    depth-to-space and a `Cropping2D`. An input of size H gives `(H + 1) factor - 2 (factor // 2)`, that is
    `H * factor` for even factors. `trainable=False` fixes it, as the authors' final `up` layer is.
    """
    channels = x.shape[-1]
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    if factor > 1:
        x = ops.tile(x, (1, 1, 1, factor * factor))
    conv = layers.DepthwiseConv2D(2, padding="valid", use_bias=False, trainable=trainable, name=name)
    y = conv(x)
    conv.kernel.assign(ops.cast(phase_kernel(bilinear_kernel(2 * factor, channels)), conv.kernel.dtype))
    if factor > 1:
        y = ops.depth_to_space(y, factor)
    crop = factor // 2
    if crop:
        y = layers.Cropping2D(crop, name=f"{name}_crop")(y)
    return y


def _indices(x, axis):
    """0, 1, ..., n - 1 for the size n of `x` along `axis` (1 or 2), as a tensor: n may be known only at run time."""
    line = x[0, :, 0, 0] if axis == 1 else x[0, 0, :, 0]
    return ops.cast(ops.cumsum(ops.ones_like(line)) - 1, "int32")


def crop_like(x, reference):
    """`x` cropped at the bottom and right to the height and width of `reference`."""
    for axis in (1, 2):
        x = ops.take(x, _indices(reference, axis), axis=axis)
    return x


def pad_to_multiple(x, multiple, *, name):
    """`x` zero-padded at the bottom and right to the next multiple of `multiple` in height and width."""
    padded = layers.ZeroPadding2D(((0, multiple - 1), (0, multiple - 1)), name=f"{name}_zeros")(x)
    # A grid of ceil(H / multiple) x ceil(W / multiple) cells, repeated back up: the padded size, as a tensor.
    cells = layers.MaxPooling2D(multiple, padding="same", name=f"{name}_cells")(x[..., :1])
    target = ops.repeat(ops.repeat(cells, multiple, axis=1), multiple, axis=2)
    return crop_like(padded, target)
