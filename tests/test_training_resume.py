"""Killed and resumed: `keras-dla train` SIGKILLed mid-run resumes with the same command, on every backend.

Each run is a child process, so that it can be killed (tests/training_runs.py).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import training_runs
from tests.training_runs import TINY, history_epochs, keras_dla

folder = training_runs.folder  # a module-scoped fixture: the 3-class image folder the runs train on


def _start_and_kill(command, output, after_epoch, env=None):
    """Starts `keras-dla train`, SIGKILLs it once its backup holds epoch `after_epoch`; returns the backup's epoch."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_dla.cli", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    metadata = os.path.join(output, "backup", "training_metadata.json")
    deadline = time.time() + 500
    try:
        while time.time() < deadline and process.poll() is None:
            if os.path.isfile(metadata):
                try:
                    if json.load(open(metadata))["epoch"] >= after_epoch:
                        break
                except (ValueError, KeyError):
                    pass
            time.sleep(0.05)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    return json.load(open(metadata))["epoch"]


def test_killed_run_resumes_with_the_same_command(tmp_path, folder):
    """Killed after its second epoch, with what kills at other moments leave (the latest backup cut short, history
    rows repeated, not backed up or partial), the run resumes from the backup before and writes each epoch once."""
    output = str(tmp_path / "run")
    command = ["train", *TINY, "--dataset", folder, "--epochs", "3", "--steps-per-epoch", "4", "--output", output]
    done = _start_and_kill(command, output, after_epoch=2)  # from the second backup on, the previous one is kept
    assert done == 2
    latest = os.path.join(output, "backup", "latest.weights.h5")
    assert os.path.isfile(latest + ".bkp")
    with open(latest, "r+b") as f:  # as a kill in the middle of writing it would leave it
        f.truncate(os.path.getsize(latest) // 2)
    history = os.path.join(output, "history.csv")
    with open(history, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    rows = [line for line in lines[1:] if line.endswith("\n")]
    not_backed_up = str(done) + rows[-1][rows[-1].index(",") :]
    with open(history, "a", newline="") as f:
        f.write(rows[0] + not_backed_up + not_backed_up[:7])
    result = keras_dla(command)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.load(open(os.path.join(output, "run.json")))
    assert run["epochs_completed"] == 3 and run["epochs_this_run"] == 3 - (done - 1)  # from the backup before
    assert history_epochs(output) == [0, 1, 2]  # each epoch once on disk, not only as read_history reads it


@pytest.mark.parametrize("backend, devices", [("jax", 2), ("torch", 1)])
def test_other_backends_train_and_resume_a_killed_run(tmp_path, folder, backend, devices):
    """`keras-dla train` on JAX (DataParallel over 2 host devices) and PyTorch: killed, resumed, same run folder."""
    output = str(tmp_path / "run")
    command = ["train", *TINY, "--dataset", folder, "--epochs", "3", "--steps-per-epoch", "3", "--output", output]
    command += ["--devices", str(devices)]
    env = {"KERAS_BACKEND": backend}
    done = _start_and_kill(command, output, after_epoch=1, env=env)
    assert 1 <= done < 3
    result = keras_dla(command, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.load(open(os.path.join(output, "run.json")))
    assert run["backend"] == backend and run["replicas"] == devices
    assert run["strategy"] == ("DataParallel" if devices > 1 else "OneDevice")
    assert run["epochs_completed"] == 3 and run["epochs_this_run"] == 3 - done
    assert sorted(set(history_epochs(output))) == [0, 1, 2]
    for name in ("best.weights.h5", "final.weights.h5", "history.csv", "curves.png", "config.json"):
        assert os.path.isfile(os.path.join(output, name)), name
    assert os.listdir(os.path.join(output, "logs"))
    assert np.isfinite(run["final"]["loss"])
