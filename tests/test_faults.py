"""Fault injection: `keras-dla train` and `keras-dla export` killed at many points, and what each kill leaves.

A run is killed (SIGKILL) just before or just after one of its file renames (every file keras_dla writes is renamed
into place: `os.replace` is wrapped in the child process), or at a seeded random time. After each kill every file
on disk must be whole: each weights file verified by its checksum, each JSON file parsed, history.csv holding each
epoch once, curves.png complete, an export's artefact absent or complete. The same command then runs again (it
must resume), and once a run completes, nothing a killed run left may remain. Each test prints how many kills it
tried and how many left something wrong (none may). The short form kills a run once; the long form (`slow`) kills
runs at every kind of rename and at random times, and an export likewise.
"""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from keras_dla.weights import checksum
from tests.test_data import make_class_folder
from tests.training_runs import TINY_DLA

EPOCHS = 2
TRAIN = ["--model", TINY_DLA, "--image-size", "32", "--batch-size", "8", "--lr", "0.01", "--verbose", "0"]
TRAIN += ["--epochs", str(EPOCHS), "--steps-per-epoch", "3"]
EXPORT = ["--model", "dla46_c", "--weights", "none", "--classes", "3", "--format", "saved_model"]
EXPORT += ["--input-size", "32", "32", "--samples", "2", "--overwrite"]

# Runs `keras-dla ARGS...`, killing itself just before or after the rename of a chosen write:
#   python -c _DRIVER KILL LOG ARGS...   KILL: "none", "N:before" / "N:after" (the Nth rename), "NAME:before" /
#   "NAME:after" (the first rename onto a file or folder called NAME). LOG gets a line per rename.
_DRIVER = r"""
import os, signal, sys

kill, log = sys.argv[1], sys.argv[2]
point, _, when = kill.partition(":")
real_replace, count = os.replace, 0


def replace(source, target, **kwargs):
    global count
    count += 1
    with open(log, "a") as f:
        f.write(f"{count} {target}\n")
    chosen = point == str(count) or point == os.path.basename(os.fspath(target))
    if chosen and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target, **kwargs)
    if chosen and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)


os.replace = replace
from keras_dla.cli import main

sys.exit(main(sys.argv[3:]))
"""


def _run(args, kill, log, after_s=None):
    """Runs `keras-dla args` through `_DRIVER`; SIGKILLs it after `after_s` seconds if given. Returns (rc, stderr)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    env.pop("TF_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, kill, log, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _, err = process.communicate(timeout=after_s if after_s is not None else 600)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    return process.returncode, err


def _png_is_whole(path):
    with open(path, "rb") as f:
        data = f.read()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


def _history_problems(path):
    with open(path, newline="", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    whole = [line for line in lines if line.endswith("\n")]
    if not whole:  # being created (CSVLogger appends in place): the next run's rewrite_history removes it
        return []
    if "epoch" not in next(csv.reader([whole[0]])):
        return [f"{path}: no header"]
    epochs = [row["epoch"] for row in csv.DictReader(whole)]
    return [] if len(epochs) == len(set(epochs)) else [f"{path}: epochs {epochs}"]


def problems_in(folder, skip=("logs",)):
    """What is not whole under `folder`; temporary `.partial.` files a kill left are the next run's to remove."""
    problems = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.relpath(os.path.join(root, d), folder) not in skip]
        for name in names:
            path = os.path.join(root, name)
            if name.startswith(".partial.") or ".tmp" in os.path.relpath(path, folder):
                continue
            try:
                if name.endswith((".weights.h5", ".weights.h5.bkp")):
                    if not checksum.verify(path):
                        problems.append(f"{path}: no checksum")
                elif name.endswith((".json", ".json.bkp")):
                    with open(path, encoding="utf-8") as f:
                        json.load(f)
                elif name == "history.csv":
                    problems += _history_problems(path)
                elif name.endswith(".png") and not _png_is_whole(path):
                    problems.append(f"{path}: cut short")
            except (OSError, ValueError) as e:
                problems.append(f"{path}: {e}")
    return problems


def leftovers_in(folder, skip=("logs",)):
    """Temporary files and work folders under `folder` (none may remain after a completed run)."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.relpath(os.path.join(root, d), folder) not in skip]
        found += [os.path.join(root, n) for n in names + dirs if n.startswith(".partial.") or n.endswith(".tmp")]
    return found


class Tally:
    """Kills tried and kills that left something wrong, printed at the end of a test."""

    def __init__(self, what):
        self.what, self.kills, self.bad = what, 0, []
        self.start = time.monotonic()

    def after(self, rc, err, where, problems):
        if rc == -signal.SIGKILL:
            self.kills += 1
        elif rc != 0:
            problems = [*problems, f"exit {rc}: {err[-1500:]}"]
        if problems:
            self.bad.append((where, problems))

    def report(self):
        took = time.monotonic() - self.start
        print(f"\n{self.what}: {self.kills} kills tried, {len(self.bad)} left something wrong ({took:.0f} s)")
        for where, problems in self.bad:
            print(f"  {where}: {problems}")
        assert not self.bad


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_class_folder(str(tmp_path_factory.mktemp("data") / "animals"), per_class=12, size=(36, 36))


def _train_until_done(tally, command, output, log, kills, seed):
    """Runs `command` killed at each of `kills` in turn (a write, or "random"), then to completion; checks each."""
    rng = random.Random(seed)
    for kill in kills:
        after_s = None
        if kill == "random":  # somewhere in a run: after Python and TensorFlow start, before the run would end
            kill, after_s = "none", rng.uniform(6.0, 30.0)
        rc, err = _run(command, kill, log, after_s)
        tally.after(rc, err, f"{kill} after {after_s:.1f} s" if after_s else kill, problems_in(output))
    rc, err = _run(command, "none", log)
    problems = problems_in(output) + leftovers_in(output)
    if rc == 0:
        with open(os.path.join(output, "run.json")) as f:
            run = json.load(f)
        with open(os.path.join(output, "history.csv"), newline="") as f:
            epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
        if run["epochs_completed"] != EPOCHS or epochs != list(range(EPOCHS)):
            problems.append(f"completed run: {run['epochs_completed']} epochs, history {epochs}")
        for name in ("best.weights.h5", "final.weights.h5"):
            if not os.path.isfile(os.path.join(output, name)):
                problems.append(f"{name} missing")
    tally.after(rc, err, "the run to completion", problems)


def _export_until_done(tally, command, output, log, kills, seed):
    rng = random.Random(seed)
    work = os.path.dirname(output)
    for kill in kills:
        after_s = None
        if kill == "random":
            kill, after_s = "none", rng.uniform(6.0, 25.0)
        rc, err = _run(command, kill, log, after_s)
        problems = problems_in(work)
        if os.path.lexists(output) and not os.path.isfile(os.path.join(output, "saved_model.pb")):
            problems.append(f"{output} is there without its saved_model.pb")
        tally.after(rc, err, f"{kill} after {after_s:.1f} s" if after_s else kill, problems)
    rc, err = _run(command, "none", log)
    problems = problems_in(work) + leftovers_in(work)
    if not os.path.isfile(os.path.join(output, "saved_model.pb")):
        problems.append(f"{output}: no saved_model.pb after a completed export")
    tally.after(rc, err, "the export to completion", problems)


# Every file a run renames into place, killed just before its rename (the complete temporary file is left) or just
# after (the next file is not written yet); each pair runs in one folder: killed, killed again, then to completion.
TRAIN_KILLS = (
    ("config.json:before", "best.weights.h5:before"),
    ("best.weights.h5:after", "curves.png:before"),
    ("latest.weights.h5:before", "training_metadata.json:before"),
    ("latest.weights.h5:after", "latest.weights.h5.bkp:before"),
    ("training_metadata.json:after", "training_metadata.json.bkp:before"),
    ("final.weights.h5:before", "run.json:before"),
)
EXPORT_KILLS = ("saved_model:before", "saved_model:after", "saved_model.json:before", "random", "random")


def test_killed_train_leaves_whole_files_short(tmp_path, folder):
    """One kill, at the first best weights, then the same command to completion."""
    tally = Tally("keras-dla train, short form")
    output = str(tmp_path / "run")
    command = ["train", *TRAIN, "--dataset", folder, "--output", output]
    _train_until_done(tally, command, output, str(tmp_path / "renames.log"), ["best.weights.h5:before"], seed=0)
    tally.report()


@pytest.mark.slow
def test_killed_train_and_export_leave_whole_files_at_every_write(tmp_path, folder):
    """Kills before and after every kind of rename of a run and of an export, and at seeded random times."""
    tally = Tally("keras-dla train and export, long form")
    for i, kills in enumerate([*TRAIN_KILLS, ("random", "random", "random")]):
        output = str(tmp_path / f"run-{i}")
        command = ["train", *TRAIN, "--dataset", folder, "--output", output]
        _train_until_done(tally, command, output, str(tmp_path / f"{i}.log"), list(kills), seed=i)
    exported = str(tmp_path / "export" / "saved_model")
    command = ["export", *EXPORT, "--output", exported]
    _export_until_done(tally, command, exported, str(tmp_path / "export.log"), list(EXPORT_KILLS), seed=0)
    tally.report()
