"""Training: argument checks, schedules, TF_CONFIG, run folders, and `keras-dla train`'s bad input, in this process.

The real fits, in child processes, are tests/test_training_runs.py (2 replicas, 2 workers, NaN) and
tests/test_training_resume.py (killed and resumed, on each backend); tests/training_runs.py holds what they share.
"""

import csv
import json
import os
import re
import shutil

import keras
import numpy as np
import pytest

from keras_dla import files
from keras_dla.cli import build_parser
from keras_dla.cli import train as cli_train
from keras_dla.training import choices, distribute, fit, losses, plots, run_folder, schedules
from keras_dla.training.config import WEIGHT_DECAY, TrainConfig, check_resumable, default_lr, epoch_steps, validate
from tests import training_runs
from tests.test_data import make_class_folder
from tests.training_runs import TINY, TINY_DLA, attempt_folder, keras_dla, keras_dla_here, tiny_architecture

folder = training_runs.folder  # a module-scoped fixture: the 3-class image folder the runs train on


# ------------------------------------------------------------------------------------------------------------------
# In-process checks (no devices are touched)


def test_every_named_recipe_is_implemented_and_the_cli_parses():
    """choices.py names the recipes the CLI offers; augment.py implements each, and refuses at import to differ."""
    from keras_dla.training import augment

    assert tuple(augment.CLASSIFICATION_RECIPES) == choices.CLASSIFICATION_AUGMENTS
    assert tuple(augment.SEGMENTATION_RECIPES) == choices.SEGMENTATION_AUGMENTS
    with pytest.raises(ImportError, match=r"implements the classification recipes \('flip',\).*make them the same"):
        augment._check_recipes({"flip": None}, ("flip", "mixup"), "classification")
    args = build_parser().parse_args(["train", "--epochs", "3", "--batch-size", "16"])
    config = cli_train.config_from_args(args)
    assert (config.dataset, config.epochs, config.batch_size, config.weights) == ("fashion_mnist", 3, 16, "none")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(model="resnet50"), "Unknown model for classification.*Received: model='resnet50'"),
        (dict(task="segmentation", model="dla34x"), "Unknown model for segmentation"),
        (dict(task="detection"), "Unknown task"),
        (dict(epochs=0), "`epochs` should be a positive integer. Received: epochs=0"),
        (dict(batch_size=-4), "Received: batch_size=-4"),
        (dict(schedule="linear"), "Unknown schedule.*Received: schedule='linear'"),
        (dict(strategy="tpu"), "Unknown strategy.*Received: strategy='tpu'"),
        (dict(weights="/no/such/file.pth"), "Received: weights='/no/such/file.pth'"),
        (dict(lr=-1.0), "Received: lr=-1.0"),
        (dict(optimizer="lamb"), "Unknown optimizer.*Received: optimizer='lamb'"),
        (dict(label_smoothing=1.0), "in \\[0, 1\\). Received: label_smoothing=1.0"),
        (dict(task="segmentation", model="dla34up", label_smoothing=0.1), "classification only"),
        (dict(steps_per_epoch=25, steps_per_execution=10), "multiple of `steps_per_execution`.*=25"),
        (dict(augment="mixup"), "Unknown augmentation for classification.*Received: augment='mixup'"),
        (dict(task="segmentation", model="dla34up", augment="small"), "Unknown augmentation for segmentation"),
        (dict(image_size=16), "`image_size` should be at least 32.*Received: image_size=16"),
        (dict(momentum=-1.0), "`momentum` should be in \\[0, 1\\]. Received: momentum=-1.0"),
        (dict(weight_decay=-5.0), "`weight_decay` should be 0 or more. Received: weight_decay=-5.0"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(changes, message):
    with pytest.raises(ValueError, match=message):
        validate(TrainConfig(**changes))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "an existing JSON file of architecture arguments"),
        ("{levels", "does not parse as JSON"),
        ('["levels"]', "should hold a JSON object"),
        ('{"depth": 3}', "Unknown DLA architecture argument\\(s\\) \\['depth'\\]"),
        ('{"levels": [1, 1, 1]}', "`levels` should be 6 positive integers"),
        ('{"block": "dense"}', "`block` should be one of"),
    ],
)
def test_a_bad_architecture_file_is_one_sentence(tmp_path, content, message):
    path = tmp_path / "mine.json"
    if content is not None:
        path.write_text(content)
    for task in ("classification", "segmentation"):
        with pytest.raises(ValueError, match=message) as caught:
            validate(TrainConfig(task=task, model=str(path)))
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_an_architecture_file_builds_that_architecture(tmp_path):
    from keras_dla import DLA

    config = validate(TrainConfig(model=TINY_DLA))
    model = fit.build_classifier(config.model, 3, (32, 32, 1), "none")
    expected = DLA(**tiny_architecture(), weights=None, input_shape=(32, 32, 1), classes=3)
    assert model.name == "tiny_dla" and model.count_params() == expected.count_params()
    assert [w.shape for w in model.weights] == [w.shape for w in expected.weights]
    segmenter = fit.build_segmenter(TINY_DLA, 4, (64, 64, 1), "none", 4)
    assert segmenter.output_shape == (None, 64, 64, 4)
    assert segmenter.get_layer("base").get_layer("level5_tree1_conv1").filters == 32


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    for output, message in [("afile", "afile is a file, not a folder"), ("afile/run", "Cannot create `output`")]:
        with pytest.raises(ValueError, match=message):
            validate(TrainConfig(output=str(tmp_path / output)))


def test_an_epoch_is_whole_graph_calls():
    # 6000 examples at batch 32 are 187 batches: 180 steps in 18 calls of 10, not 19 calls running 190 steps.
    config = TrainConfig(batch_size=32, steps_per_execution=10)
    assert epoch_steps(config, 6000) == (180, 10)
    assert epoch_steps(config, 256) == (8, 8)  # fewer batches than one call: all of them in one call
    assert epoch_steps(TrainConfig(batch_size=32), 6000) == (187, 1)
    explicit = TrainConfig(batch_size=32, steps_per_execution=10, steps_per_epoch=30)
    assert epoch_steps(explicit, 6000) == (30, 10)


def test_smoothed_crossentropy_matches_keras_categorical():
    import keras

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5), size=6).astype("float32")
    labels = rng.integers(0, 5, 6)
    onehot = np.eye(5, dtype="float32")[labels]
    for smoothing in (0.0, 0.1, 0.3):
        ours = losses.SparseSmoothedCrossentropy(smoothing)(labels, probabilities)
        expected = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)(onehot, probabilities)
        assert float(ours) == pytest.approx(float(expected), rel=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy()(labels[:, None], probabilities)
    assert float(losses.SparseSmoothedCrossentropy()(labels[:, None], probabilities)) == pytest.approx(float(plain))
    assert float(losses.SparseSmoothedCrossentropy(0.1)(labels, probabilities)) != pytest.approx(float(plain))
    restored = losses.SparseSmoothedCrossentropy.from_config(losses.SparseSmoothedCrossentropy(0.2).get_config())
    assert restored.label_smoothing == 0.2


def test_optimizers():
    import keras

    config = TrainConfig(optimizer="adamw", weight_decay=0.05, batch_size=256)
    adamw = schedules.make_optimizer(config, 0.01)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 0.05
    assert default_lr(config) == pytest.approx(2e-3)
    sgd = schedules.make_optimizer(TrainConfig(), 0.1)
    assert sgd.momentum == 0.9 and sgd.weight_decay == WEIGHT_DECAY


def test_schedules_follow_the_authors():
    step = schedules.learning_rate_schedule("step", 0.1, 400)
    assert [round(float(step(s)), 6) for s in (0, 99, 100, 200, 399)] == [0.1, 0.1, 0.01, 0.001, 0.0001]
    poly = schedules.learning_rate_schedule("poly", 0.01, 100)
    assert float(poly(0)) == pytest.approx(0.01) and float(poly(100)) == pytest.approx(0.0)
    assert float(poly(50)) == pytest.approx(0.01 * 0.5**0.9, rel=1e-5)
    cosine = schedules.learning_rate_schedule("cosine", 0.2, 100)
    assert float(cosine(50)) == pytest.approx(0.1, rel=1e-5) and float(cosine(100)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="Received: schedule='exp'"):
        schedules.learning_rate_schedule("exp", 0.1, 10)


def _tf_config(cluster=None, task=None, **top):
    config = {"cluster": {"worker": ["a:1", "b:2"]} if cluster is None else cluster}
    config["task"] = {"type": "worker", "index": 0} if task is None else task
    return json.dumps({**config, **top})


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "does not parse as JSON"),
        ("[" * 100000, "does not parse as JSON"),
        ("[" * 100000 + "]" * 100000, "does not parse as JSON (nested too deeply)"),
        ('{"cluster": {"worker": ["localhost:1"]}}', "'cluster' and a 'task'"),
        ("null", "should be a JSON object with 'cluster' and 'task'"),
        ("3", "should be a JSON object"),
        ('"worker"', "should be a JSON object"),
        ('["cluster", "task"]', "should be a JSON object"),
        ('{"cluster": null, "task": {"type": "worker", "index": 0}}', "'cluster' and a 'task' object"),
        ('{"cluster": ["a:1"], "task": {"type": "worker", "index": 0}}', "'cluster' and a 'task' object"),
        ('{"cluster": {"worker": ["a:1"]}, "task": "worker"}', "'cluster' and a 'task' object"),
        ('{"cluster": {"worker": ["a:1"]}, "task": [0]}', "'cluster' and a 'task' object"),
        (_tf_config({"worker": "a:1,b:2"}), "'host:port' strings; its 'worker' is 'a:1,b:2'"),  # a string for a list
        (_tf_config({"worker": [["a:1"], ["b:2"]]}), "its 'worker' is [['a:1'], ['b:2']]"),  # lists for strings
        (_tf_config({"worker": None}), "its 'worker' is None"),
        (_tf_config({"worker": []}), "its 'worker' is []"),
        (_tf_config({"worker": [1]}), "'host:port'"),
        (_tf_config({"worker": [None, "b:2"]}), "its 'worker' is [None, 'b:2']"),
        (_tf_config({"worker": {"0": "a:1"}}), "its 'worker' is {'0': 'a:1'}"),
        (_tf_config({"worker": ["localhost"]}), "its 'worker' is ['localhost']"),  # no port
        (_tf_config({"worker": ["a:port"]}), "its 'worker' is ['a:port']"),
        (_tf_config({"worker": ["a:0"]}), "its 'worker' is ['a:0']"),
        (_tf_config({"worker": ["a:70000"]}), "its 'worker' is ['a:70000']"),
        (_tf_config({"worker": [":1"]}), "its 'worker' is [':1']"),
        (_tf_config({"worker": ["a:1"], "chief": 5}), "its 'chief' is 5"),
        (_tf_config({"worker": ["a:1"], "ps": ["b:2"]}), "job(s) ['ps'], which MultiWorkerMirroredStrategy"),
        (_tf_config({}), "has no 'worker' or 'chief'"),
        (_tf_config({"evaluator": ["a:1"]}, {"type": "evaluator", "index": 0}), "has no 'worker' or 'chief'"),
        (_tf_config({"worker": ["a:1"], "chief": ["b:2", "c:3"]}), "more than one 'chief'"),
        (_tf_config({"worker": ["a:1", "a:1"]}), "lists an address twice"),
        (
            _tf_config(task={"type": "worker", "index": "0"}),
            "an 'index' (a number) into the cluster's 'worker' list, not '0'",
        ),
        (_tf_config(task={"type": "worker", "index": 3}), "into the cluster's 'worker' list, not 3"),
        (_tf_config(task={"type": "worker", "index": -1}), "not -1"),
        (_tf_config(task={"type": "worker", "index": 0.0}), "not 0.0"),
        (_tf_config(task={"type": "worker", "index": True}), "not True"),
        (_tf_config(task={"type": "worker", "index": None}), "not None"),
        (_tf_config(task={"type": "worker", "index": [0]}), "not [0]"),
        (_tf_config(task={"type": "worker"}), "not None"),
        (_tf_config(task={"type": "chief", "index": 0}), "a 'type' among the cluster's jobs ['worker'], not 'chief'"),
        (
            _tf_config(task={"type": ["worker"], "index": 0}),
            "a 'type' among the cluster's jobs ['worker'], not ['worker']",
        ),
        (_tf_config(task={"type": None, "index": 0}), "not None"),
        (_tf_config(task={"index": 0}), "not None"),
        (
            _tf_config({"worker": ["a:1"], "evaluator": ["b:2"]}, {"type": "evaluator", "index": 0}),
            "task type 'evaluator' does not train",
        ),
    ],
)
def test_bad_tf_config(text, message):
    with pytest.raises(ValueError, match=f"^TF_CONFIG.*{re.escape(message)}.*Received: TF_CONFIG=") as caught:
        distribute.parse_tf_config(text)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "cluster, task",
    [
        ({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, {"type": "worker", "index": 1}),
        ({"worker": ["a:1"], "chief": ["b:2"]}, {"type": "chief", "index": 0}),
        ({"worker": ["[::1]:2222"], "evaluator": ["b:2"]}, {"type": "worker", "index": 0}),
    ],
)
def test_good_tf_config(cluster, task):
    assert distribute.parse_tf_config(_tf_config(cluster, task, environment="cloud"))["task"] == task


def test_chief_of_a_cluster():
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert distribute.is_chief({"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert not distribute.is_chief({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    with_chief = {**cluster, "chief": ["127.0.0.1:3"]}
    assert not distribute.is_chief({"cluster": with_chief, "task": {"type": "worker", "index": 0}})
    assert distribute.is_chief({"cluster": with_chief, "task": {"type": "chief", "index": 0}})


def test_history_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,loss\n0,0.5,1.0\n1,0.6,0.9\n1,0.65,0.8\n2,0.7,0.7\n")
    rows = run_folder.read_history(str(path))
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[1]["accuracy"] == 0.65
    plots.plot_history(rows, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_a_row_cut_short_by_a_kill_is_dropped_before_the_run_appends(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,loss\n0,0.5,1.0\n1,0.6")  # killed while writing epoch 1
    run_folder.drop_partial_last_row(str(path))
    with open(path, "a") as f:  # the restarted run logs epoch 1 again
        f.write("1,0.65,0.8\n")
    rows = run_folder.read_history(str(path))
    assert [(r["epoch"], r["accuracy"], r["loss"]) for r in rows] == [(0, 0.5, 1.0), (1, 0.65, 0.8)]
    run_folder.drop_partial_last_row(str(path))  # a complete file is left alone
    assert path.read_text() == "epoch,accuracy,loss\n0,0.5,1.0\n1,0.65,0.8\n"
    run_folder.drop_partial_last_row(str(tmp_path / "none.csv"))


HEADER = "epoch,accuracy,loss,val_accuracy\r\n"


def _row(epoch, value=0.5):
    return f"{epoch},{value},{1 - value},{value}\r\n"


@pytest.mark.parametrize(
    "damage, resumed_at",
    [
        (HEADER + _row(0) + _row(1) + _row(1, 0.6) + _row(2), 3),  # an older restart appended epoch 1 again
        (HEADER + _row(0) + _row(1) + _row(2), 2),  # killed after epoch 2's row, before its backup
        (HEADER + _row(0) + _row(1) + _row(2) + _row(2) + _row(3), 2),  # both, and a later epoch
        (HEADER + _row(0) + _row(1) + "2,0.5", 2),  # killed while writing epoch 2's row
        (HEADER + _row(0) + "1,0.5,0.5,0.5\r\n1,0.", 2),  # a partial row after a whole one of the same epoch
        (HEADER + _row(1) + _row(0) + _row(1), 2),  # out of order
        (HEADER + _row(0) + "1,0.5,0.5\r\n" + "x,0.5,0.5,0.5\r\n" + "1,0.5,NaN,garbage\r\n", 1),  # garbled
        (HEADER + "1,0.5,0.5,\u00b2\r\n" + "\u00b2,0.5,0.5,0.5\r\n" + _row(0), 1),  # not ASCII digits
        (HEADER + _row(0) + _row(0), 0),  # resumed at the start: no epoch is kept
        ("epoch,accur", 0),  # killed while writing the header
        ("", 0),
        (HEADER, 0),
    ],
)
def test_a_resumed_run_rewrites_history_to_each_completed_epoch_once(tmp_path, damage, resumed_at):
    path = tmp_path / "history.csv"
    path.write_bytes(damage.encode())
    log = run_folder.HistoryLog(str(path))
    log.on_train_begin()
    assert path.read_bytes() == damage.encode()  # nothing is rewritten before the resumed epoch is known
    for epoch in range(resumed_at, resumed_at + 2):
        log.on_epoch_begin(epoch)
        log.on_epoch_end(epoch, {"accuracy": 0.9, "loss": 0.1, "val_accuracy": 0.8})
    log.on_train_end()
    with open(path, newline="") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(resumed_at + 2))  # each epoch once, in order, the new ones after the old
    rows = run_folder.read_history(str(path))
    assert [r["val_accuracy"] for r in rows[resumed_at:]] == [0.8, 0.8]
    assert all(np.isfinite(list(r.values())).all() for r in rows)
    assert sorted(os.listdir(tmp_path)) == ["history.csv"]  # no temporary file left beside it


def test_rewritten_history_keeps_the_last_whole_row_and_its_text(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HEADER + _row(0, 0.25) + _row(1, 0.5) + _row(1, 0.75) + _row(2))
    run_folder.rewrite_history(str(path), 2)
    assert path.read_bytes() == (HEADER + _row(0, 0.25) + _row(1, 0.75)).encode()
    whole = path.read_bytes()
    run_folder.rewrite_history(str(path), 5)  # nothing to change: the file is left as it is
    assert path.read_bytes() == whole
    run_folder.rewrite_history(str(tmp_path / "none.csv"), 3)
    assert not (tmp_path / "none.csv").exists()


# ------------------------------------------------------------------------------------------------------------------
# Bad input through the command line: a clear message, exit code 2, and no training


def test_bad_input_on_the_command_line(tmp_path, folder, capsys, monkeypatch):
    empty = tmp_path / "empty" / "cls"
    empty.mkdir(parents=True)
    one_class = make_class_folder(str(tmp_path / "one_class"), classes=("cat",), per_class=12, size=(36, 36))
    # `keras-dla train` in this process (the same `main` the command runs): these fail before any device is set up.
    monkeypatch.delenv("TF_CONFIG", raising=False)
    cases = [
        (["--dataset", "no_such_dataset_xyz"], "Unknown dataset"),
        (["--dataset", str(tmp_path / "empty")], "No images"),
        (["--dataset", one_class], "A classifier needs at least 2 classes; the data set has 1 (cat)"),
        (["--model", "dla35"], "Unknown model"),
    ]
    for extra, message in cases:
        code, out, err = keras_dla_here(capsys, ["train", *TINY, "--output", str(tmp_path / "run"), *extra])
        assert code == 2, err[-2000:]
        assert message in err and "Received:" in err
        assert "Epoch 1/" not in out
    monkeypatch.setenv("TF_CONFIG", "{'cluster': []}")
    code, _, err = keras_dla_here(
        capsys, ["train", *TINY, "--dataset", folder, "--strategy", "multiworker", "--output", str(tmp_path / "run")]
    )
    assert code == 2 and "TF_CONFIG does not parse" in err
    assert not (tmp_path / "run").exists()
    # `--devices 2` splits the CPU before TensorFlow starts: a fresh process each.
    cases = [
        (["--dataset", folder, "--devices", "2", "--batch-size", "7"], "divisible by the 2 replicas"),
        (["--dataset", folder, "--devices", "2", "--jit"], "cannot run over 2 logical CPU devices"),
    ]
    for extra, message in cases:
        result = keras_dla(["train", *TINY, "--output", str(tmp_path / "run"), *extra])
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and "Received:" in result.stderr
        assert "Epoch 1/" not in result.stdout


def test_a_new_run_that_fails_leaves_no_run_folder(tmp_path, folder, capsys, monkeypatch):
    # Failures after the checks (weights that do not load, an image that does not decode mid-fit) get one
    # sentence, and the new run's folder is removed: a later run with other settings is not refused because of it.
    from keras_dla import DLA

    text = tmp_path / "text.weights.h5"
    text.write_text("not weights")
    other = str(tmp_path / "imagenet_head.weights.h5")
    DLA(**tiny_architecture(), weights=None, input_shape=(32, 32, 3), classes=1000).save_weights(other)
    damaged = shutil.copytree(folder, tmp_path / "damaged")
    for image in damaged.glob("*/*.png"):  # every one, so the first batch has one whatever the shuffle
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    renamed = shutil.copytree(folder, tmp_path / "renamed")
    (renamed / "dog" / "003.png").write_text("not an image")
    cases = [
        (["--dataset", folder, "--weights", str(text)], "not in the HDF5 format"),
        (["--dataset", folder, "--weights", other], "1 layer(s) did not fit: fc. For example fc/kernel has shape"),
        (
            ["--dataset", str(damaged)],
            f"decoded during training (Invalid PNG. Failed to initialize decoder): {damaged}/cat/000.png.",
        ),
        (["--dataset", str(renamed)], "Not a JPEG, PNG, GIF or BMP image (by its first bytes; empty, or another"),
    ]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for extra, message in cases:  # in this process: no case needs a fresh one
        output = tmp_path / "run"
        command = ["train", *TINY, "--epochs", "1", "--steps-per-epoch", "2", "--output", str(output), *extra]
        code, _, err = keras_dla_here(capsys, command)
        assert code == 2, err[-2000:]
        assert message in err and "Traceback" not in err, err[-2000:]
        assert not output.exists()
    assert "renamed/dog/003.png" in err  # the file is named


def _dense_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=1, verbose=0)  # builds the optimizer's variables
    return model


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["kernel", "bias", "momentum"])
def test_weights_that_are_not_finite_are_never_written(tmp_path, capsys, value, where):
    model = _dense_model()
    finite = run_folder.FiniteWeights()
    best = run_folder.BestWeights(str(tmp_path / "best.weights.h5"), "val_accuracy", "max", finite=finite)
    backup = run_folder.FiniteBackup(str(tmp_path / "backup"), finite, double_checkpoint=True)
    for callback in (best, backup):
        callback.set_model(model)
    best.on_epoch_end(0, {"val_accuracy": 0.5})
    backup.on_epoch_end(0)
    kept = {name: (tmp_path / name).read_bytes() for name in ("best.weights.h5", "backup/latest.weights.h5")}
    assert run_folder.non_finite_variable(model) is None and finite.skipped == []

    dense = model.layers[0]
    variable = {"kernel": dense.kernel, "bias": dense.bias}.get(where)
    if variable is None:
        variable = next(v for v in model.optimizer.variables if "momentum" in v.path and v.shape == (2, 1))
    poisoned = np.array(keras.ops.convert_to_numpy(variable))
    poisoned.flat[-1] = value
    variable.assign(poisoned)
    assert run_folder.non_finite_variable(model) == variable.path
    for epoch in (1, 2):  # better epochs: each would have been written
        best.on_epoch_end(epoch, {"val_accuracy": 0.5 + epoch / 10})
        backup.on_epoch_end(epoch)
    assert best.best == 0.5  # the finite weights stay the best ones
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept
    assert not (tmp_path / "backup" / "latest.weights.h5.bkp").exists()
    assert finite.skipped == ["best.weights.h5", "the backup"] * 2
    out = capsys.readouterr().out
    assert out.count("the weights hold a NaN or an infinite value") == 1 and variable.path in out


def test_best_weights_are_replaced_only_by_better_complete_files(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "best.weights.h5")
    best = run_folder.BestWeights(path, "val_accuracy", "max")
    best.set_model(model)
    for epoch, accuracy in enumerate([0.5, 0.4, 0.7, float("nan"), 0.6]):
        model.layers[0].kernel.assign([[float(epoch)], [0.0]])
        best.on_epoch_end(epoch, {"val_accuracy": accuracy})
    model.load_weights(path)
    assert best.best == 0.7 and model.layers[0].kernel.numpy()[0, 0] == 2.0  # the weights of epoch 2

    def fail_midway(filepath, **kwargs):
        open(filepath, "wb").write(b"half")
        raise KeyboardInterrupt

    model.save_weights = fail_midway
    with pytest.raises(KeyboardInterrupt):
        best.on_epoch_end(5, {"val_accuracy": 0.9})
    model.load_weights(path)  # still the complete file of epoch 2
    assert model.layers[0].kernel.numpy()[0, 0] == 2.0
    assert os.listdir(tmp_path) == ["best.weights.h5"]  # the interrupted file is removed
    lower = run_folder.BestWeights(str(tmp_path / "loss.weights.h5"), "val_loss", "min", best=0.3)  # as restarted
    lower.set_model(model)
    lower.on_epoch_end(0, {"val_loss": 0.35})
    assert lower.best == 0.3 and not os.path.exists(tmp_path / "loss.weights.h5")


@pytest.mark.parametrize("changes", [dict(epochs=7), dict(lr=0.5, model="dla34"), dict(task="segmentation"), {}])
def test_a_folder_without_a_backup_takes_any_settings(tmp_path, changes):
    output = attempt_folder(str(tmp_path / "run"), epochs=3, lr=0.01, model="dla46_c")
    config = TrainConfig(output=output, **{"epochs": 3, "lr": 0.01, "model": "dla46_c", **changes})
    assert check_resumable(config) is True  # nothing to resume: the attempt binds nothing
    open(os.path.join(output, "notes.txt"), "w").write("mine")
    run_folder.discard_attempt(output)
    assert sorted(os.listdir(output)) == ["backup", "notes.txt"]  # the attempt's files go, the user's stay


@pytest.mark.parametrize("backup", ["training_metadata.json", "latest.weights.h5", "latest.weights.h5.bkp"])
def test_a_folder_with_a_backup_resumes_only_its_settings(tmp_path, backup):
    output = attempt_folder(str(tmp_path / "run"), backup_files=[backup], epochs=3)
    assert check_resumable(TrainConfig(output=output, epochs=3)) is False
    assert check_resumable(TrainConfig(output=output, epochs=3, verbose=0, devices=2)) is False
    with pytest.raises(ValueError, match=r"other settings \(epochs\).*Received: \{'epochs': 4\}"):
        check_resumable(TrainConfig(output=output, epochs=4))
    assert check_resumable(TrainConfig(output=str(tmp_path / "new"))) is False


@pytest.mark.parametrize("content", ["{", "[1, 2]", "\udcff"])
def test_a_damaged_config_json_beside_a_backup_is_one_sentence(tmp_path, content):
    output = attempt_folder(str(tmp_path / "run"), backup_files=["training_metadata.json"])
    with open(os.path.join(output, "config.json"), "w", errors="surrogateescape") as f:
        f.write(content)
    with pytest.raises(ValueError, match=r"config.json (is damaged|holds no run settings).*Received: output="):
        check_resumable(TrainConfig(output=output))


def test_run_directory_removes_what_a_kill_left_mid_write(tmp_path):
    whole = files.temporary_beside(str(tmp_path / "best.weights.h5"))  # as a SIGKILL during the write leaves it
    open(tmp_path / "history.csv", "w").write("epoch\n")
    run_folder.RunDirectory(str(tmp_path))
    assert not os.path.exists(whole) and sorted(os.listdir(tmp_path)) == ["backup", "history.csv"]
