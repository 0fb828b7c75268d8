"""keras_dla's OpenVINO export against timm's ONNX file in OpenVINO, layer kinds timed by OpenVINO itself.

    python benchmarks/openvino_profile.py --model dla34 --batch 1 --precision bf16
    python benchmarks/openvino_profile.py --model dla34 --batch 1 --precision int8

Writes keras_dla's export (`keras_dla.export.export_openvino`, in a TensorFlow process) and timm's ONNX file (in a
PyTorch process) into a temporary folder, then, in this process, compiles both with OpenVINO's per-layer counters
on (`PERF_COUNT`) and runs them in alternation, `--rounds` times each: per round the median wall time of `--calls`
inferences and the summed time of each kind of layer (convolution kernels by implementation, concatenation, ...).
The two files then differ only in their graphs: same engine, same process, same threads. Batch norms get
trained-like statistics, as in `performance.py`.
"""

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def write_keras(args, path):
    sys.path.insert(0, HERE)
    import performance

    from keras_dla.export import onnx_openvino

    model, _ = performance._keras_model(argparse.Namespace(model=args.model, size=args.size))
    if args.precision == "int8":
        images = performance.calibration_images(args.size)
        onnx_openvino.export_openvino(model, path, quantization="int8", representative_data=images, calibration_steps=8)
    else:
        onnx_openvino.export_openvino(model, path)


def write_timm(args, path):
    sys.path.insert(0, HERE)
    import performance

    onnx_path = path[: -len(".xml")] + ".onnx" if args.precision == "int8" else path
    performance._timm_onnx(
        argparse.Namespace(model=args.model, size=args.size, threads=args.threads, gpu=False), onnx_path
    )
    if args.precision == "int8":  # performance.py's `openvino int8` peer row
        import openvino as ov

        ov.save_model(performance.nncf_int8(onnx_path, args.size), path)


def profile(path, nchw, args):
    """(median wall ms, {layer kind: ms per inference}) of `args.calls` inferences of the file at `path`."""
    import numpy as np
    import openvino as ov

    sys.path.insert(0, HERE)
    import performance

    config = {"INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True}
    if args.precision == "f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    request = ov.Core().compile_model(path, "CPU", config).create_infer_request()
    x = performance.random_images(args.batch, args.size)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x
    for _ in range(3):
        request.infer({0: x})
    walls, kinds = [], collections.Counter()
    for _ in range(args.calls):
        start = time.perf_counter()
        request.infer({0: x})
        walls.append((time.perf_counter() - start) * 1e3)
        for layer in request.get_profiling_info():
            kinds[f"{layer.node_type} ({layer.exec_type})"] += layer.real_time.total_seconds() * 1e3 / args.calls
    return statistics.median(walls), kinds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dla34")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--precision",
        choices=("f32", "bf16", "int8"),
        default="f32",
        help="bf16: OpenVINO's default; int8: both files quantised by NNCF on the same images (performance.py's)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", choices=("keras", "timm"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write:
        (write_keras if args.write == "keras" else write_timm)(args, args.path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        timm_file = "timm.xml" if args.precision == "int8" else "timm.onnx"
        files = {"keras_dla": os.path.join(tmp, "keras_dla.xml"), "timm": os.path.join(tmp, timm_file)}
        for who in ("keras_dla", "timm"):
            command = [sys.executable, __file__, "--write", who.split("_")[0], "--path", files[who]]
            command += ["--model", args.model, "--size", str(args.size), "--threads", str(args.threads)]
            command += ["--precision", args.precision]
            env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
            subprocess.run(command, check=True, env=env, capture_output=True)
        walls, last = collections.defaultdict(list), {}
        for r in range(args.rounds):
            for who in ("keras_dla", "timm") if r % 2 == 0 else ("timm", "keras_dla"):
                wall, kinds = profile(files[who], who == "timm", args)
                last[who] = kinds
                walls[who].append(wall)
                top = ", ".join(f"{k} {v:.2f}" for k, v in kinds.most_common(4))
                print(f"round {r + 1} {who:9s} wall {wall:6.2f} ms, layers {sum(kinds.values()):6.2f} ms: {top}")
    keras_ms, timm_ms = (statistics.median(walls[w]) for w in ("keras_dla", "timm"))
    print("layer kinds, ms per inference in the last round (keras_dla / timm):")
    for kind in sorted(
        set(last["keras_dla"]) | set(last["timm"]), key=lambda k: -last["timm"][k] - last["keras_dla"][k]
    ):
        print(f"  {kind:60s} {last['keras_dla'][kind]:7.2f} {last['timm'][kind]:7.2f}")
    print(
        f"{args.model} batch {args.batch} {args.precision}: keras_dla {keras_ms:.2f} ms, timm {timm_ms:.2f} ms "
        f"(keras_dla at {timm_ms / keras_ms:.3f}x timm's speed)"
    )


if __name__ == "__main__":
    main()
