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


# The files that take longest, longest first: tools/test.sh hands whole files to pytest-xdist workers in collection
# order, so starting these first lets the workers end together (the rest keep their order).
LONGEST_FIRST = (
    "test_training_resume.py",
    "test_demo.py",
    "test_training_runs.py",
    "test_examples.py",
    "test_backends.py",
    "test_dla.py",
    "test_export.py",
    "test_contract.py",
    "test_cli_export.py",
    "test_input_checks.py",
    "test_faults.py",
    "test_weights.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the rest, the order stays
