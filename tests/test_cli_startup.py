"""`keras-dla` starts fast and quiet: `--help` of every command, `info` and `list` import no TensorFlow (nor
Keras), and no command prints TensorFlow's C++ log lines unless `keras-dla --verbose`."""

import json
import os
import re
import subprocess
import sys

import pytest

from keras_dla import cli
from keras_dla.cli import demo as cli_demo

# Runs `keras-dla ARGS...` in this interpreter, then prints which heavy modules that imported, as JSON.
PROBE = """
import json, sys
from keras_dla.cli import main
commands = json.loads(sys.argv[1])
codes = []
for argv in commands:
    try:
        codes.append(main(argv))
    except SystemExit as e:
        codes.append(e.code)
heavy = ("tensorflow", "keras", "jax", "torch")
print(json.dumps({"codes": codes, "imported": [m for m in heavy if m in sys.modules]}))
"""
# TensorFlow's C++ logging (absl and TensorFlow's formats), as it starts:
# `I0000 00:00:1796144112.798135   18337 cudart_stub.cc:31] Could not find cuda drivers ...`,
# `2026-12-01 16:59:05.123456: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on ...`.
TF_CPP_LINE = re.compile(
    r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ |^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    r"|absl::InitializeLog|cpu_feature_guard"
)


def _run(commands, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it for pytest
    env.update(env_extra or {})
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout, done.stderr


def test_help_of_every_command_imports_no_tensorflow():
    commands = [["--help"]] + [[name, "--help"] for name in cli.COMMANDS]
    result, out, _ = _run(commands)
    assert result["codes"] == [0] * len(commands)
    assert result["imported"] == []
    for name in cli.COMMANDS:
        assert f"usage: keras-dla {name}" in out


def test_info_and_list_import_no_tensorflow():
    result, out, _ = _run([["info"], ["list"]])
    assert result["codes"] == [0, 0]
    assert result["imported"] == []
    assert re.search(r"keras_dla \S+, keras \S+ \(\w+\), tensorflow \S+", out)
    assert "dla34 " in out and "levels=(1, 1, 1, 2, 2, 1)" in out  # info's table
    assert "cache: " in out  # list's last line


def test_info_names_the_backend_keras_would_use():
    result, out, _ = _run([["info"]], {"KERAS_BACKEND": "jax"})
    assert "(jax)" in out and result["imported"] == []


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_no_tensorflow_log_lines_unless_verbose(tmp_path, verbose):
    # A command that runs TensorFlow (builds, exports and runs a model), and one that fails after importing it.
    export = ["export", "--model", "dla46_c", "--weights", "none", "--format", "saved_model", "--classes", "3"]
    export += ["--input-size", "32", "32", "--samples", "1", "--output", str(tmp_path / "sm")]
    unknown = ["export", "--model", "no_such_model", "--weights", "none", "--format", "tflite", "--output", "x"]
    flag = ["--verbose"] if verbose else []
    result, out, err = _run([flag + export, flag + unknown], {"KERAS_BACKEND": "tensorflow"})
    assert result["codes"] == [0, 2] and "tensorflow" in result["imported"]
    assert "parity on 1 random images" in out
    tf_lines = [line for line in err.splitlines() if TF_CPP_LINE.search(line)]
    if verbose:
        # The same commands show them: the quiet run's silence is the CLI's doing.
        assert tf_lines, err
    else:
        assert tf_lines == [], err
        assert err.strip().splitlines()[-1].startswith("keras-dla export: error: Unknown model"), err


# The logging settings a library could change: the C++ level, the root and TensorFlow's Python loggers.
LOGGING_STATE = (
    "(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), logging.getLogger().level, logging.getLogger('tensorflow').level, "
    "logging.getLogger('absl').level)"
)


def test_importing_keras_dla_leaves_logging_alone():
    code = (
        "import logging, os, sys\n"
        "import keras_dla\n"
        "print('keras' in sys.modules)\n"  # the names load on first use
        "import keras\n"  # the backend's own settings (TensorFlow imports JAX, which sets TF_CPP_MIN_LOG_LEVEL)
        f"before = {LOGGING_STATE}\n"
        "keras_dla.DLA46C(weights=None, classes=3, input_shape=(32, 32, 3))\n"
        "import keras_dla.export, keras_dla.export.onnx_openvino, keras_dla.training\n"
        f"print(before == {LOGGING_STATE})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_demo_help_defaults_are_the_demos():
    from keras_dla import demo

    for task, shown in cli_demo.HELP_DEFAULTS.items():
        assert shown == {k: demo.DEFAULTS[task][k] for k in shown}
