"""int8 TFLite of the demo's trained Fashion-MNIST classifier against Keras on the 10,000 real test images.

Usage: `keras-dla demo` (writes dla_demo/model.weights.h5), then
`python benchmarks/int8_demo_parity.py [dla_demo/model.weights.h5] [dla46_c] [32]` (weights, variant, input size).
Calibrates on 500 training images through the evaluation pipeline, then prints Keras and int8 accuracy and
their top-1 agreement.
"""

import os
import sys
import tempfile
import time

import numpy as np

from keras_dla import export
from keras_dla.export import runtime
from keras_dla.training import datasets, fit


def main(weights="dla_demo/model.weights.h5", variant="dla46_c", size=32):
    size = int(size)
    model = fit.build_classifier(variant, 10, (size, size, 1), weights)
    test, _ = datasets.classification_data("fashion_mnist", split="validation", batch_size=250, image_size=size)
    x, y = (np.concatenate(parts) for parts in zip(*[(a.numpy(), b.numpy()) for a, b in test], strict=True))
    calibration, _ = datasets.classification_data(
        "fashion_mnist", split="train", batch_size=250, image_size=size, limit=500, training=False
    )
    representative = np.concatenate([a.numpy() for a, _ in calibration])
    keras_top1 = model.predict(x, batch_size=250, verbose=0).argmax(-1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export.export_tflite(
            model,
            os.path.join(tmp, "int8.tflite"),
            quantization="int8",
            representative_data=representative,
            calibration_steps=len(representative),
        )
        convert_s = time.perf_counter() - start
        interpreter = runtime.tflite_interpreter(path, 2)
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        int8_top1 = np.empty(len(x), dtype=np.int64)
        for i in range(len(x)):
            interpreter.set_tensor(inp["index"], x[i : i + 1].astype(inp["dtype"]))
            interpreter.invoke()
            int8_top1[i] = interpreter.get_tensor(out["index"])[0].argmax()
    print(f"{len(x)} test images; int8 conversion {convert_s:.1f} s")
    print(
        f"Keras accuracy {np.mean(keras_top1 == y):.4f}, int8 accuracy {np.mean(int8_top1 == y):.4f}, "
        f"top-1 agreement {np.mean(int8_top1 == keras_top1):.4f}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
