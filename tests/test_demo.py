"""The demo's whole pipeline (train, evaluate, export, check, report, pictures) on small subsets of the real data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_dla import demo
from keras_dla.training import evaluation
from tests.training_runs import TINY_DLA


def test_confusion_matrix_and_iou():
    labels = np.array([0, 0, 1, 1, 2, 255])
    predictions = np.array([0, 1, 1, 1, 0, 2])
    matrix = evaluation.confusion_matrix(labels, predictions, 3, ignore=255)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_allclose(evaluation.iou_per_class(matrix), [1 / 3, 2 / 3, 0.0])
    assert np.isnan(evaluation.iou_per_class(np.zeros((2, 2), int))).all()


def run_demo_cli(args, timeout=900):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.run(
        [sys.executable, "-m", "keras_dla.cli", "demo", "--verbose", "2", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_demo_pipeline_on_a_small_subset(tmp_path, task):
    output = str(tmp_path / "demo")
    # The smallest run of the whole pipeline: 4 steps of 16 images at 32x32 (scene crops for DLA-Up), 32 test images.
    args = ["--task", task, "--output", output, "--epochs", "1", "--train-limit", "64", "--test-limit", "32"]
    # A tiny architecture (as a backbone for DLA-Up) on one replica: what is checked is the pipeline, not the model
    # (tests/test_dla.py checks every variant's numbers, tests/test_cli_export.py exports the demo's default one) or
    # the replicas (tests/test_training_runs.py trains on two).
    args += ["--batch-size", "16", "--image-size", "32", "--model", TINY_DLA, "--devices", "1"]
    result = run_demo_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(os.path.join(output, "report.json")))
    assert report["task"] == task and report["epochs"] == 1 and report["test_examples"] == 32
    assert report["input_size"] == 32
    assert report["strategy"] == "MirroredStrategy"
    figure = report["test_accuracy"] if task == "classification" else report["mean_iou"]
    assert 0.0 <= figure <= 1.0
    for name in ("report.md", "curves.png", "confusion_matrix.png", "samples.png", "model.tflite", "model.weights.h5"):
        assert os.path.getsize(os.path.join(output, name)) > 0, name
    assert os.path.isfile(os.path.join(output, "saved_model", "saved_model.pb"))
    # Both exports agree with the Keras model on real test images. The outputs are probabilities; a one-epoch
    # DLA-Up has far-from-settled BatchNorm statistics that magnify TFLite's float rounding (measured 1.7e-3).
    tolerance = 1e-3 if task == "classification" else 1e-2
    for name in ("saved_model", "tflite"):
        parity = report["export"][name]
        assert parity["images"] == 32 and parity["max_abs_diff"] < tolerance, parity
        agreement = parity["top1_agreement"] if task == "classification" else parity["pixel_agreement"]
        assert agreement >= 0.99, parity
    assert set(report["timings"]) >= {"train_s", "evaluate_s", "export_s", "export_check_s", "total_s"}
    assert "test accuracy" in result.stdout or "mean IoU" in result.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "0"], "Received: epochs=0"),
        (["--batch-size", "0"], "Received: batch_size=0"),
        (["--test-limit", "0"], "Received: test_limit=0"),
        (["--image-size", "16"], "`image_size` should be at least 32"),
    ],
)
def test_bad_demo_arguments_fail_before_training(tmp_path, capsys, extra, message):
    # A 0 is not "the default": it is refused with a sentence, and nothing is trained or written.
    from keras_dla.cli import main

    output = tmp_path / "demo"
    assert main(["demo", "--output", str(output), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_demo_output_that_is_a_file(tmp_path, capsys):
    from keras_dla.cli import main

    (tmp_path / "afile").write_bytes(b"keep")
    assert main(["demo", "--output", str(tmp_path / "afile")]) == 2
    assert "afile is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_bytes() == b"keep"


def test_demo_help_states_the_defaults_it_uses(capsys):
    from keras_dla.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cls, seg = demo.DEFAULTS["classification"], demo.DEFAULTS["segmentation"]
    assert f"default: {cls['epochs']} (classification), {seg['epochs']} (segmentation)" in text
    assert f"global batch size (default {cls['batch_size']} / {seg['batch_size']})" in text
    assert f"default: {cls['model']} (classification), {seg['model']} (segmentation)" in text
    assert "(default: None)" not in text
