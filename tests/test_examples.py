"""The example scripts run, in their small default mode, on data and weights made here (no downloads)."""

import json
import os
import re
import subprocess
import sys

import torch

from tests.test_data import make_class_folder
from tests.training_runs import TINY_DLA

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, args, cwd, timeout=600):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_transfer_learning_from_a_pytorch_checkpoint_on_a_folder(tmp_path):
    import timm

    # Random weights in timm's DLA-34 layout stand in for the ImageNet checkpoint (none is on this machine):
    # the script loads them through the same conversion as weights="imagenet".
    checkpoint = str(tmp_path / "dla34.pth")
    torch.save(timm.create_model("dla34", pretrained=False).state_dict(), checkpoint)
    folder = make_class_folder(str(tmp_path / "flowers"), per_class=12, size=(40, 40))
    args = ["--dataset", folder, "--weights", checkpoint, "--image-size", "32", "--batch-size", "8"]
    out = run_example("transfer_learning.py", args, cwd=tmp_path)
    assert "3 classes, 33 training images" in out
    assert re.search(r"validation accuracy after fine-tuning: \d\.\d{4}", out), out[-2000:]


def test_segmentation_training_on_the_scenes(tmp_path):
    # A DLA-Up on a tiny backbone and 32x32 crops: the script's whole path, train and score, at least cost.
    args = ["--output", "run", "--batch-size", "8", "--model", TINY_DLA, "--crop-size", "32"]
    out = run_example("segmentation_training.py", args, cwd=tmp_path)
    assert re.search(r"mean IoU \d\.\d{4}", out), out[-2000:]
    assert (tmp_path / "run" / "final.weights.h5").is_file()


def test_distributed_training_over_two_logical_cpu_devices(tmp_path):
    args = ["--devices", "2", "--batch-size", "32", "--output", "run", "--model", TINY_DLA]
    out = run_example("distributed_training.py", args, cwd=tmp_path)
    assert "MirroredStrategy with 2 replica(s): 2 epochs" in out, out[-2000:]
    with open(tmp_path / "run" / "run.json") as f:
        run = json.load(f)
    assert run["replicas"] == 2 and run["epochs_completed"] == 2
