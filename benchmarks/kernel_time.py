"""Where the fast path's time goes: oneDNN kernel time against wall time of `inference_model(model).serve`.

    python benchmarks/kernel_time.py --model dla34 --batch 1
    python benchmarks/kernel_time.py --model dla34 --batch 1 --dtype bfloat16   # inference_model(m, dtype=...)

Runs itself again with `ONEDNN_VERBOSE=1` (oneDNN prints one line per primitive execution, with its time), times
`--calls` calls of `fast.serve` after warm-up, and prints, per call, the wall time and the summed kernel time by
primitive kind (convolution, pooling, ...): the difference is time spent in TensorFlow between the kernels. The
verbose printing itself adds a little to the wall time. Batch norms get trained-like statistics, as in
`performance.py`. `--per-conv` adds a table of the last call's convolutions by shape: time, count and GFLOP/s
(2 x multiply-adds over oneDNN's own time), to set against the matmul peak `performance.py` measures.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

MARK = "KERNEL_TIME_CALL"


def measure(args):
    import tensorflow as tf

    import keras_dla

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import performance

    performance._tf_threads(args.threads)
    model, _ = performance._keras_model(argparse.Namespace(model=args.model, size=args.size))
    fast = keras_dla.inference_model(model, dtype=args.dtype)
    x = tf.constant(performance.random_images(args.batch, args.size))
    for _ in range(3):
        fast.serve(x).numpy()
    for _ in range(args.calls):
        print(MARK, flush=True)
        start = time.perf_counter()
        fast.serve(x).numpy()
        print(MARK, time.perf_counter() - start, flush=True)


def kernel_times(lines):
    """Per call between markers: `(wall_ms, {kind: kernel_ms})` from the child's stdout."""
    calls, current = [], None
    for line in lines:
        if line.startswith(MARK):
            parts = line.split()
            if len(parts) == 1:
                current = collections.Counter()
            elif current is not None:
                calls.append((1000 * float(parts[1]), dict(current)))
                current = None
        elif current is not None and line.startswith("onednn_verbose") and ",exec," in line:
            fields = line.strip().split(",")
            current[fields[5]] += float(fields[-1])
    return calls


def conv_flops(problem):
    """2 x multiply-adds of a oneDNN convolution problem, e.g. "mb1_ic3oc16_ih224oh224kh7sh1dh0ph3_iw224ow224...".

    Channels are the totals, so a grouped convolution ("g32ic128oc128") divides by its groups.
    """
    dims = {key: int(value) for key, value in re.findall(r"([a-z]+)(\d+)", problem)}
    out_h = dims.get("oh", dims.get("ih"))
    out_w = dims.get("ow", dims.get("iw", out_h))
    kernel_h = dims.get("kh", 1)
    kernel_w = dims.get("kw", kernel_h)
    return 2 * dims["mb"] * dims["oc"] * out_h * out_w * dims["ic"] * kernel_h * kernel_w / dims.get("g", 1)


def per_conv(lines):
    """`[(problem, count, ms, gflops_per_s)]` of the convolutions in the last marked call, slowest first."""
    last, current = [], None
    for line in lines:
        if line.startswith(MARK):
            if len(line.split()) == 1:
                current = []
            elif current is not None:
                last, current = current, None
        elif current is not None and line.startswith("onednn_verbose") and ",exec," in line:
            fields = line.strip().split(",")
            if fields[5] == "convolution":
                current.append((fields[-2], float(fields[-1])))
    rows = collections.defaultdict(lambda: [0, 0.0])
    for problem, ms in last:
        rows[problem][0] += 1
        rows[problem][1] += ms
    table = [(problem, n, ms, n * conv_flops(problem) / ms / 1e6) for problem, (n, ms) in rows.items()]
    return sorted(table, key=lambda row: -row[2])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dla34")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="inference_model's dtype")
    parser.add_argument("--per-conv", action="store_true", help="a table of the last call's convolutions by shape")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measure(args)
        return
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), "--child", *(argv if argv is not None else sys.argv[1:])]
    child = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if child.returncode:
        sys.exit(f"kernel_time: the measuring process failed:\n{child.stderr[-2000:]}")
    calls = kernel_times(child.stdout.splitlines())
    if not calls:
        sys.exit("kernel_time: no oneDNN verbose lines; is this TensorFlow built with oneDNN on this CPU?")
    for wall, kinds in calls:
        inside = sum(kinds.values())
        detail = ", ".join(f"{kind} {ms:.1f}" for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]))
        print(f"wall {wall:6.1f} ms, oneDNN kernels {inside:6.1f} ms ({inside / wall:.0%}): {detail}")
    if args.per_conv:
        print(f"{'ms':>7} {'n':>3} {'GFLOP/s':>8}  convolution (oneDNN problem), last call")
        for problem, n, ms, rate in per_conv(child.stdout.splitlines()):
            print(f"{ms:7.2f} {n:3d} {rate:8.0f}  {problem}")
    walls = sorted(wall for wall, _ in calls)
    insides = sorted(sum(k.values()) for _, k in calls)
    summary = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "median_wall_ms": walls[len(walls) // 2]}
    summary["median_kernel_ms"] = insides[len(insides) // 2]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
