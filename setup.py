"""keras_dla: Deep Layer Aggregation for Keras 3."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, "keras_dla", "version.py"), encoding="utf-8") as f:
    exec(f.read(), version)

setup(
    name="keras_dla",
    version=version["__version__"],
    description="Deep Layer Aggregation (DLA, DLA-Up) for Keras 3, equal to the authors' PyTorch models",
    long_description=open(os.path.join(here, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_dla", "keras_dla.*"]),
    package_data={"keras_dla.models": ["data/*.json"]},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.13",
        "numpy",
        "h5py",
        # Training (keras_dla.training.datasets, training, demo): tfds pipelines, TensorBoard logs, curves and pictures.
        "tensorflow-datasets",
        "importlib_resources",  # tensorflow-datasets 4.9 imports it to prepare a data set, without requiring it
        "tensorboard",
        "matplotlib",
        # Export (keras_dla.export): the LiteRT interpreter that runs .tflite files for the parity checks;
        # tf.lite.Interpreter, the fallback, is deprecated. No wheels for Windows.
        "ai-edge-litert; platform_system != 'Windows'",
        # keras_dla.export.tflite_metadata builds the TFLite metadata flatbuffers (TensorFlow requires it too).
        "flatbuffers",
    ],
    extras_require={
        # The numeric reference (PyTorch, timm) and the tools the tests and lint need. torch and
        # torchvision are pinned to the pair that installs together offline here (PyTorch 2.13.0 breaks torchvision).
        "test": [
            "pytest",
            # tools/test.sh spreads the TensorFlow pass over the cores (`-n`).
            "pytest-xdist",
            "ruff",
            "safetensors",
            "torch==2.14.1",
            "torchvision==0.29.1",
            "timm",
            # The other Keras backends, for the backend contract (tests/test_backends.py).
            "jax[cpu]",
            # MediaPipe's ImageClassifier and ImageSegmenter run the exported TFLite files from their metadata.
            "mediapipe",
            # ONNX and OpenVINO export (tests/test_export_onnx.py): the "onnx" and "openvino" extras.
            "tf2onnx",
            "onnx",
            "onnxruntime",
            "openvino",
            "nncf",
        ],
        # ONNX export (keras_dla.export.onnx_openvino, `keras-dla export --format onnx`): Keras' exporter converts with
        # tf2onnx; ONNX Runtime runs the file for the parity check and quantises it to int8.
        "onnx": ["tf2onnx", "onnx", "onnxruntime"],
        # OpenVINO export: OpenVINO converts and runs the model, NNCF quantises it to int8; a graph its TensorFlow
        # front end cannot shape (DLA-Up's upsampling) goes through tf2onnx's ONNX export.
        "openvino": ["openvino", "nncf", "tf2onnx", "onnx"],
        # benchmarks/performance.py: timm's model exported to ONNX and run by ONNX Runtime and OpenVINO (int8 by
        # ONNX Runtime's static quantisation and by NNCF), peak memory.
        "bench": ["onnx", "onnxscript", "onnxruntime", "openvino", "nncf"],
    },
    entry_points={"console_scripts": ["keras-dla = keras_dla.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
