"""Times DepthwiseConv2DTranspose against the naive ways to get PyTorch's ConvTranspose2d(groups=C) in Keras.

All three compute the same numbers (checked before timing):
- `polyphase`: keras_dla's layer, a 2x2 depthwise conv with f^2 outputs per channel over the input grid,
  then depth_to_space: 4 f^2 multiply-adds per input pixel and channel, what the transposed conv needs.
- `zero-stuff`: insert f - 1 zeros between input pixels, then a depthwise conv with the flipped 2f x 2f
  kernel over the upsampled grid: f^2 times the work.
- `dense`: Keras' Conv2DTranspose with a C x C kernel that is zero off the block diagonal: C times the
  work and C times the kernel memory.

Usage: `python benchmarks/upsample.py [--repeats 10] [--threads 1] [--quick]`. Cases are the upsamplings of DLA34Up on
a 512 x 1024 image: the final `up` (19 classes) at each down ratio and IDA-Up's 2x ups at both ends.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_dla.models.layers import DepthwiseConv2DTranspose  # noqa: E402

# (name, channels, input height, input width, factor)
CASES = [
    ("up, down_ratio 2", 19, 256, 512, 2),
    ("up, down_ratio 4", 19, 128, 256, 4),
    ("up, down_ratio 8", 19, 64, 128, 8),
    ("up, down_ratio 16", 19, 32, 64, 16),
    ("ida_0.up_1 (C=256)", 256, 16, 32, 2),
    ("ida_3.up_4 (C=32)", 32, 128, 256, 2),
]
QUICK_CASES = [CASES[0], CASES[3], CASES[4]]


def polyphase(kernel, factor):
    layer = DepthwiseConv2DTranspose(factor)
    layer.build((None, None, None, kernel.shape[2]))
    layer.kernel.assign(kernel)
    return layer


def zero_stuff(kernel, factor):
    """Dilate the input by `factor` with zeros, then a "full" depthwise correlation with the flipped kernel."""
    flipped = ops.convert_to_tensor(kernel[::-1, ::-1])
    size, crop = 2 * factor, factor // 2

    def call(x):
        batch, height, width, channels = ops.shape(x)
        stuffed = ops.reshape(x, (batch, height, 1, width, 1, channels))
        stuffed = ops.pad(stuffed, ((0, 0), (0, 0), (0, factor - 1), (0, 0), (0, factor - 1), (0, 0)))
        stuffed = ops.reshape(stuffed, (batch, height * factor, width * factor, channels))
        stuffed = ops.pad(stuffed, ((0, 0), (size - 1, size - 1), (size - 1, size - 1), (0, 0)))
        y = ops.depthwise_conv(stuffed, flipped, padding="valid")  # length (H - 1) f + 2f + f - 1
        out_h, out_w = (height + 1) * factor - 2 * crop, (width + 1) * factor - 2 * crop
        return y[:, crop : crop + out_h, crop : crop + out_w, :]

    return call


def dense(kernel, factor):
    """Conv2DTranspose with a block-diagonal (2f, 2f, C, C) kernel, cropped like PyTorch's padding."""
    channels = kernel.shape[2]
    layer = keras.layers.Conv2DTranspose(channels, 2 * factor, strides=factor, padding="valid", use_bias=False)
    layer.build((None, None, None, channels))
    full = np.zeros((2 * factor, 2 * factor, channels, channels), "float32")
    full[:, :, np.arange(channels), np.arange(channels)] = kernel[:, :, :, 0]
    layer.kernel.assign(full)
    crop = factor // 2

    def call(x):
        y = layer(x)
        return y[:, crop:-crop, crop:-crop, :] if crop else y

    return call


METHODS = {"polyphase": polyphase, "zero-stuff": zero_stuff, "dense": dense}


def multiply_adds(method, channels, height, width, factor):
    """Multiply-adds of each method's convolution, in millions."""
    per_pixel = {
        "polyphase": (height + 1) * (width + 1) * 4 * factor**2 * channels,
        "zero-stuff": (height + 1) * (width + 1) * factor**2 * 4 * factor**2 * channels,
        "dense": height * width * 4 * factor**2 * channels * channels,
    }
    return per_pixel[method] / 1e6


def time_calls(fns, x, repeats):
    """Median milliseconds of each function; the functions take turns, so load changes hit all alike."""
    compiled = {name: tf.function(fn, jit_compile=False) for name, fn in fns.items()}
    for fn in compiled.values():
        fn(x).numpy()  # trace and warm up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in compiled.items():
            start = time.perf_counter()
            fn(x).numpy()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="three cases, for a smoke run")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: TF's default)")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    threads = args.threads or "default"
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, {threads} threads, batch 1")
    print(f"{'case':<22}{'input':>14}{'f':>4}  " + "".join(f"{m + ' ms':>14}{'MMAC':>9}" for m in METHODS))
    for name, channels, height, width, factor in QUICK_CASES if args.quick else CASES:
        x = rng.standard_normal((1, height, width, channels)).astype("float32")
        kernel = rng.standard_normal((2 * factor, 2 * factor, channels, 1)).astype("float32")
        fns = {method: make(kernel, factor) for method, make in METHODS.items()}
        reference = ops.convert_to_numpy(fns["polyphase"](x))
        for fn in fns.values():
            np.testing.assert_allclose(ops.convert_to_numpy(fn(x)), reference, rtol=1e-4, atol=1e-3)
        ms = time_calls(fns, x, args.repeats)
        row = f"{name:<22}{f'{height}x{width}x{channels}':>14}{factor:>4}  "
        for method in fns:
            row += f"{ms[method]:>14.2f}{multiply_adds(method, channels, height, width, factor):>9.0f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
