"""Lower precisions of the demo's trained Fashion-MNIST classifier against float32 Keras, on the 10,000 test images.

Usage: `keras-dla demo` (writes dla_demo/model.weights.h5), then
`python benchmarks/precision_agreement.py [dla_demo/model.weights.h5] [dla46_c] [32]` (weights, variant, input size).
Rows: `keras_dla.inference_model(model, dtype="bfloat16")`, the OpenVINO export at OpenVINO's default precision
(bfloat16 on a CPU that has it), and the int8 exports: TFLite, ONNX Runtime static int8 and OpenVINO int8 by NNCF
(all calibrated on the same 500 training images, through the evaluation pipeline; OpenVINO at its default precision,
as `benchmarks/performance.py` times it). Prints each row's accuracy and its top-1 agreement with the float32 Keras
model, and writes them as JSON beside the weights (`precision_agreement.json`).
"""

import json
import os
import sys
import tempfile
import time

import numpy as np

import keras_dla
from keras_dla import export
from keras_dla.export import runtime
from keras_dla.training import datasets, fit


def _top1(call, x, batch):
    """The top-1 classes `call` (a batch of images -> class scores) gives over `x`, `batch` images a call."""
    return np.concatenate([np.asarray(call(x[i : i + batch])).argmax(-1) for i in range(0, len(x), batch)])


def _file_top1(path, x, batch):
    """The top-1 classes of an exported file over `x`, through keras_dla's runner (it quantises int8 inputs)."""
    runner = runtime.Runner(path, num_threads=os.cpu_count())
    return _top1(lambda images: next(iter(runner(images).values())), x, runner.shape[0] or batch)


def _openvino_top1(path, x, batch):
    """The top-1 classes of an OpenVINO file over `x`, compiled at OpenVINO's default precision for this CPU."""
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU")
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    request = compiled.create_infer_request()
    return _top1(lambda images: request.infer({0: images})[compiled.outputs[0]], x, batch), str(precision)


def main(weights="dla_demo/model.weights.h5", variant="dla46_c", size=32):
    size = int(size)
    model = fit.build_classifier(variant, 10, (size, size, 1), weights)
    test, _ = datasets.classification_data("fashion_mnist", split="validation", batch_size=250, image_size=size)
    x, y = (np.concatenate(parts) for parts in zip(*[(a.numpy(), b.numpy()) for a, b in test], strict=True))
    calibration, _ = datasets.classification_data(
        "fashion_mnist", split="train", batch_size=250, image_size=size, limit=500, training=False
    )
    representative = np.concatenate([a.numpy() for a, _ in calibration])
    float32 = model.predict(x, batch_size=250, verbose=0).argmax(-1)
    rows = {"float32 (Keras)": float32}
    bf16 = keras_dla.inference_model(model, dtype="bfloat16")
    rows["bfloat16 (inference_model)"] = _top1(bf16.serve, x, 250)
    with tempfile.TemporaryDirectory() as tmp:
        for name, exporter, suffix in (
            ("int8 (TFLite)", export.export_tflite, ".tflite"),
            ("int8 (ONNX Runtime, static QDQ)", export.export_onnx, ".onnx"),
        ):
            start = time.perf_counter()
            path = exporter(
                model,
                os.path.join(tmp, "int8" + suffix),
                quantization="int8",
                representative_data=representative,
                calibration_steps=len(representative),
            )
            print(f"{name}: converted in {time.perf_counter() - start:.1f} s")
            rows[name] = _file_top1(path, x, 250)
        path = export.export_openvino(model, os.path.join(tmp, "float.xml"))
        rows["OpenVINO, default precision"], precision = _openvino_top1(path, x, 250)
        print(f"OpenVINO's default inference precision here: {precision}")
        path = export.export_openvino(
            model,
            os.path.join(tmp, "int8.xml"),
            quantization="int8",
            representative_data=representative,
            calibration_steps=len(representative),
        )
        rows["int8 (OpenVINO, NNCF)"], _ = _openvino_top1(path, x, 250)
    results = {
        name: {"accuracy": float(np.mean(top1 == y)), "top1_agreement": float(np.mean(top1 == float32))}
        for name, top1 in rows.items()
    }
    print(f"{len(x)} Fashion-MNIST test images, {variant} at {size}x{size} ({weights})")
    for name, r in results.items():
        print(f"  {name:34s} accuracy {r['accuracy']:.4f}  top-1 agreement with float32 {r['top1_agreement']:.4f}")
    out = os.path.join(os.path.dirname(os.path.abspath(weights)), "precision_agreement.json")
    with open(out, "w") as f:
        json.dump({"variant": variant, "size": size, "images": len(x), "rows": results}, f, indent=1)
    print(f"Written: {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
