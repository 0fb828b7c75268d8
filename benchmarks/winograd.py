"""Times one 3x3 stride-1 convolution: TensorFlow's own (oneDNN) against Winograd F(2x2, 3x3) made of TensorFlow ops.

The fast path spends most of its time in oneDNN's direct 3x3 convolutions (`benchmarks/kernel_time.py`).
Winograd's F(2x2, 3x3) computes a 2x2 output tile with 16 multiplies per input-output channel pair instead of 36,
so it was the one way left to do fewer floating-point operations in float32. Built from TensorFlow ops:

- input transform: a 4x4 stride-2 depthwise conv with the 16 fixed kernels of B^T d B, then a transpose to
  [16, tiles, C];
- 16 matrix products, tiles x C times C x K (one batched matmul), against the kernel transformed once, G g G^T;
- output transform: one matmul with the 4 x 16 matrix of A^T m A, a transpose, depth_to_space, bias and ReLU.

The direct form is `conv2d` + bias + ReLU, which TensorFlow fuses into one oneDNN call. Both are checked against
each other before timing. Shapes are DLA-34's 3x3 convolutions at 224x224 (stages at 56, 28, 14 and 7 pixels).

Usage: `python benchmarks/winograd.py [--batches 1 8] [--threads 2] [--calls 30]`.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Winograd F(2x2, 3x3) matrices (Lavin and Gray, 2016).
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)

# (feature map side, channels in = channels out)
SHAPES = [(56, 64), (28, 128), (14, 256), (7, 512)]


def transformed_kernel(kernel):
    """[3, 3, C, K] -> [16, C, K]: G g G^T for every channel pair, computed in float64."""
    u = np.einsum("ai,ijck,bj->abck", G, kernel.astype(np.float64), G)
    return u.reshape(16, *kernel.shape[2:]).astype(np.float32)


def input_transform_filter(channels):
    """Depthwise [4, 4, C, 16]: output s = (a, b) of a 4x4 patch d is (B^T d B)[a, b]."""
    f = np.einsum("ai,bj->ijab", B_T, B_T).reshape(4, 4, 1, 16)
    return np.tile(f, (1, 1, channels, 1)).astype(np.float32)


def output_transform_matrix():
    """[4, 16]: output (p, q) of a 4x4 tile m is (A^T m A)[p, q]."""
    return np.einsum("pa,qb->pqab", A_T, A_T).reshape(4, 16).astype(np.float32)


def winograd_conv(x, u, bias, input_filter, output_matrix):
    """3x3 stride-1 "same" convolution + bias + ReLU of NHWC `x` by Winograd F(2x2, 3x3)."""
    _, height, width, channels = x.shape
    tiles_h, tiles_w = (height + 1) // 2, (width + 1) // 2
    out_channels = u.shape[-1]
    padded = tf.pad(x, [[0, 0], [1, 2 * tiles_h + 1 - height], [1, 2 * tiles_w + 1 - width], [0, 0]])
    v = tf.nn.depthwise_conv2d(padded, input_filter, [1, 2, 2, 1], "VALID")  # [N, th, tw, C * 16]
    v = tf.transpose(tf.reshape(v, [-1, channels, 16]), [2, 0, 1])  # [16, tiles, C]
    m = tf.matmul(v, u)  # [16, tiles, K]
    y = tf.matmul(output_matrix, tf.reshape(m, [16, -1]))  # [4, tiles * K]
    y = tf.transpose(tf.reshape(y, [4, -1, out_channels]), [1, 0, 2])  # [tiles, 4, K]
    y = tf.nn.depth_to_space(tf.reshape(y, [-1, tiles_h, tiles_w, 4 * out_channels]), 2)
    return tf.nn.relu(y[:, :height, :width, :] + bias)


def median_ms(fn, x, calls, warmup=3):
    for _ in range(warmup):
        fn(x).numpy()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(x).numpy()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    if min(args.batches) < 1 or args.threads < 1 or args.calls < 1:
        parser.error("--batches, --threads and --calls should be positive")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    rng = np.random.default_rng(0)
    print(f"{'batch':>5} {'shape':>12} {'direct ms':>10} {'winograd ms':>12} {'ratio':>6} {'max diff':>9}")
    for batch in args.batches:
        for side, channels in SHAPES:
            x = tf.constant(rng.standard_normal((batch, side, side, channels)).astype(np.float32))
            kernel = (rng.standard_normal((3, 3, channels, channels)) / np.sqrt(9 * channels)).astype(np.float32)
            bias = tf.constant(rng.standard_normal(channels).astype(np.float32))
            k = tf.constant(kernel)
            u = tf.constant(transformed_kernel(kernel))
            input_filter = tf.constant(input_transform_filter(channels))
            output_matrix = tf.constant(output_transform_matrix())

            direct = tf.function(lambda x, k=k, b=bias: tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, k, 1, "SAME"), b)))
            winograd = tf.function(lambda x, u=u, b=bias, f=input_filter, a=output_matrix: winograd_conv(x, u, b, f, a))
            shape = f"{side}x{side}x{channels}"
            diff = float(np.abs(winograd(x).numpy() - direct(x).numpy()).max())
            if diff > 1e-4:
                raise SystemExit(f"Winograd differs from the direct convolution by {diff:.2e} at {shape}")
            direct_ms, winograd_ms = median_ms(direct, x, args.calls), median_ms(winograd, x, args.calls)
            print(
                f"{batch:>5} {shape:>12} {direct_ms:>10.2f} {winograd_ms:>12.2f} "
                f"{direct_ms / winograd_ms:>6.2f} {diff:>9.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
