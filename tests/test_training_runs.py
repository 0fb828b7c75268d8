"""Real fits of `keras-dla train` in child processes: 2 replicas, 2 workers, a NaN loss, a restarted attempt.

Logical CPU devices must be set up before TensorFlow starts and a multi-worker cluster needs one process per
worker, so each fit is a fresh process (tests/training_runs.py).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests import training_runs
from tests.training_runs import TINY, TINY_DLA, attempt_folder, history_epochs, keras_dla, keras_dla_here

folder = training_runs.folder  # a module-scoped fixture: the 3-class image folder the runs train on


# ------------------------------------------------------------------------------------------------------------------
# Real fits


def test_two_replica_mirrored_fit_on_cpu(tmp_path, folder, capsys, monkeypatch):
    output = str(tmp_path / "run")
    result = keras_dla(
        ["train", *TINY, "--dataset", folder, "--devices", "2", "--epochs", "2", "--steps-per-epoch", "3"]
        + ["--output", output]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.load(open(os.path.join(output, "run.json")))
    assert run["replicas"] == 2 and run["strategy"] == "MirroredStrategy" and run["epochs_completed"] == 2
    for name in ("best.weights.h5", "final.weights.h5", "history.csv", "curves.png", "backup/latest.weights.h5"):
        assert os.path.isfile(os.path.join(output, name)), name
    assert os.listdir(os.path.join(output, "logs"))
    assert np.isfinite(run["final"]["loss"])
    # The same command again: the run is complete, nothing more is trained.
    again = keras_dla(
        ["train", *TINY, "--dataset", folder, "--devices", "2", "--epochs", "2", "--steps-per-epoch", "3"]
        + ["--output", output]
    )
    assert again.returncode == 0 and "2/2 epochs done (0 in this run)" in again.stdout
    # Other settings in the same folder are refused, before a model is built (so this runs in this process).
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code, _, err = keras_dla_here(
        capsys, ["train", *TINY, "--dataset", folder, "--epochs", "5", "--steps-per-epoch", "3", "--output", output]
    )
    assert code == 2 and "other settings (epochs)" in err


def non_finite_datasets(path):
    """The float datasets of an HDF5 file that hold a NaN or an infinity."""
    import h5py

    bad = []

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and item.dtype.kind == "f" and not np.isfinite(item[()]).all():
            bad.append(name)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return bad


def test_nan_loss_stops_with_a_message(tmp_path, folder):
    result = keras_dla(
        ["train", *TINY[:-4], "--lr", "1e30", "--dataset", folder, "--epochs", "3", "--steps-per-epoch", "4"]
        + ["--output", str(tmp_path / "run")]
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "The loss became" in result.stdout and "training stopped" in result.stdout
    assert not os.path.exists(tmp_path / "run" / "final.weights.h5")  # NaN weights are not the run's result
    # No weights file of the run (best, backup, the backup before it) holds a NaN or an infinity.
    written = [os.path.join(d, n) for d, _, names in os.walk(tmp_path / "run") for n in names if ".weights.h5" in n]
    assert {path: non_finite_datasets(path) for path in written} == {path: [] for path in written}
    assert result.stdout.count("the weights hold a NaN or an infinite value") <= 1  # said once, not every epoch


def test_a_run_killed_before_its_first_backup_is_restarted_with_other_settings(tmp_path, folder):
    output = attempt_folder(str(tmp_path / "run"), epochs=9, lr=0.5, model="dla34")
    result = keras_dla(
        ["train", *TINY, "--dataset", folder, "--epochs", "1", "--steps-per-epoch", "2"] + ["--output", output]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.load(open(os.path.join(output, "config.json")))
    assert (config["epochs"], config["model"], config["lr"]) == (1, TINY_DLA, 0.01)  # rewritten
    assert history_epochs(output) == [0]  # the attempt's row is gone
    assert open(os.path.join(output, "best.weights.h5"), "rb").read(8) == b"\x89HDF\r\n\x1a\n"


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_multiworker_fit(tmp_path, folder):
    output = str(tmp_path / "run")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    command = ["train", *TINY, "--dataset", folder, "--strategy", "multiworker", "--epochs", "2"]
    command += ["--steps-per-epoch", "3", "--output", output]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": tf_config}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "keras_dla.cli", *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    run = json.load(open(os.path.join(output, "run.json")))
    assert run["strategy"] == "MultiWorkerMirroredStrategy" and run["replicas"] == 2
    assert run["epochs_completed"] == 2
    # Only the chief wrote the run folder; worker 1 kept just its own backup there.
    assert os.listdir(os.path.join(output, "workers")) == ["worker-1"]
    assert os.path.isfile(os.path.join(output, "workers", "worker-1", "backup", "latest.weights.h5"))
    assert history_epochs(output) == [0, 1]
