# isort: skip_file
import os

# Quiet TensorFlow's start-up logging; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# PyTorch (the numeric reference) must be imported before TensorFlow: the other order crashes in
# torch's own imports (triton, through timm -> torchvision -> torch._dynamo).
import torch  # noqa: E402, F401
import timm  # noqa: E402, F401

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def float64():
    """Builds Keras models in float64 for the duration of a test."""
    previous = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(previous[0])
        keras.config.set_dtype_policy(previous[1])
