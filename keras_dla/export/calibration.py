"""The representative images of int8 calibration, as the quantisers take them.

`representative_dataset` checks the images an int8 export is calibrated on (an array, or an iterable of images or
batches, never a data set of pairs) and returns the generator that TFLite's converter and ONNX Runtime's
`quantize_static` (`keras_dla.export.onnx_openvino`) read one-image batches from, counting them with `progress`.
"""

import sys
import time

import keras
import numpy as np

from keras_dla import checks


def representative_dataset(data, shape, dtype, steps, verbose=False):
    """A converter `representative_dataset`: one-image batches of `data`, in the exported input's dtype.

    Its `count` attribute is the number of images it yields. With `verbose`, the images are counted as the
    converter calibrates on them: a progress bar on a terminal, a
    line every 10 s in a log.
    """
    if data is None:
        raise ValueError(
            "int8 quantization calibrates on representative images; pass `representative_data` "
            "(`--representative`). Received: representative_data=None"
        )
    if isinstance(data, np.ndarray):
        if data.ndim == len(shape) - 1:
            data = data[None]
        if data.ndim != len(shape) or tuple(data.shape[1:]) != tuple(shape[1:]):
            raise ValueError(
                f"Representative images should have shape (N, {', '.join(map(str, shape[1:]))}). "
                f"Received: shape={data.shape}"
            )
        if len(data) == 0:
            raise ValueError("Representative data should hold at least one image. Received: 0 images")
        checks.check_finite("representative_data", data[:steps])
        samples = list(data[:steps])
    else:
        samples = []
        for item in data:
            if isinstance(item, (tuple, list, dict)):
                raise ValueError(
                    "Representative data should yield images or batches of images, not tuples or dicts such as "
                    "(image, label) pairs; keep the images, e.g. `ds.map(lambda x, y: x)`. "
                    f"Received: an item of type {type(item).__name__}"
                )
            item = np.asarray(keras.ops.convert_to_numpy(item))
            samples.extend(item if item.ndim == len(shape) else [item])
            if len(samples) >= steps:
                break
        samples = samples[:steps]
        if not samples:
            raise ValueError("Representative data should hold at least one image. Received: an empty iterable")
        for s in samples:
            if tuple(s.shape) != tuple(shape[1:]):
                raise ValueError(
                    f"Representative images should have shape {tuple(shape[1:])}. Received: shape={s.shape}"
                )
        checks.check_finite("representative_data", np.stack(samples))

    def generate():
        if verbose:
            print(f"Calibrating int8 on {len(samples)} representative image(s)", flush=True)
        report = progress(len(samples), "images calibrated") if verbose else (lambda done: None)
        for done, s in enumerate(samples, 1):
            yield [np.asarray(s, dtype=dtype)[None]]
            report(done)

    generate.count = len(samples)  # the images calibrated on, for the sidecar
    return generate


def progress(total, what, log_every_s=10.0):
    """`report(done)`: Keras' progress bar on a terminal; in a log, a plain line every `log_every_s` and at the end."""
    if sys.stdout.isatty():
        bar = keras.utils.Progbar(total, unit_name="image")
        return bar.update
    start = last = time.perf_counter()

    def report(done):
        nonlocal last
        now = time.perf_counter()
        if done == total or now - last >= log_every_s:
            print(f"  {done}/{total} {what} ({now - start:.0f} s)", flush=True)
            last = now

    return report
