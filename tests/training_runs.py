"""What the tests of `keras-dla train` share: a tiny architecture for `--model`, and ways to run the command.

The runs train `tests/tiny_dla.json` (basic blocks, 4 to 32 channels) at 32x32: what they check is the run's
machinery (resuming, replicas, workers, files), whose cost is then TensorFlow's start-up and tracing, not the
model (tests/test_dla.py checks every variant's numbers).
"""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from keras_dla.training.config import TrainConfig
from tests.test_data import make_class_folder

TINY_DLA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_dla.json")
# A tiny real run: the tiny architecture at 32x32 on a 3-class folder, a few steps.
TINY = ["--model", TINY_DLA, "--image-size", "32", "--batch-size", "8", "--lr", "0.01", "--verbose", "2"]


def tiny_architecture():
    """The arguments of `keras_dla.DLA` in `TINY_DLA`."""
    with open(TINY_DLA, encoding="utf-8") as f:
        return json.load(f)


def keras_dla(args, env=None, timeout=600, **kwargs):
    """`keras-dla ARGS` in a fresh process (TF_CONFIG unset unless `env` sets it): its CompletedProcess."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environment.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "keras_dla.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
        **kwargs,
    )


def keras_dla_here(capsys, args):
    """`keras-dla ARGS` run by `keras_dla.cli.main` in this process: (exit code, stdout, stderr).

    For the commands whose point is not a fresh process (no `--devices`, no kill): each saves a TensorFlow start.
    """
    from keras_dla.cli import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder of 3 classes of 30 small PNG images each."""
    return make_class_folder(str(tmp_path_factory.mktemp("data") / "animals"), per_class=30, size=(36, 36))


def history_epochs(output):
    with open(os.path.join(output, "history.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def attempt_folder(output, backup_files=(), **settings):
    """A run folder as an attempt with `settings` leaves it: config.json, a history row, best weights."""
    os.makedirs(os.path.join(output, "backup"), exist_ok=True)
    config = dataclasses.asdict(TrainConfig(output=output, **settings))
    open(os.path.join(output, "config.json"), "w").write(json.dumps(config))
    open(os.path.join(output, "history.csv"), "w").write("epoch,val_accuracy\n0,0.99\n")
    open(os.path.join(output, "best.weights.h5"), "wb").write(b"weights of the attempt")
    os.makedirs(os.path.join(output, "logs", "train"), exist_ok=True)
    for name in backup_files:
        open(os.path.join(output, "backup", name), "w").write("{}")
    return output
