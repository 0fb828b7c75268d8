"""`keras_dla.checks`: positive integers, and outputs that cannot be made (refused, path named, nothing created)."""

import os

import numpy as np
import pytest

from keras_dla import checks


def test_outputs_that_can_be_made(tmp_path):
    (tmp_path / "existing").mkdir()
    (tmp_path / "weights.h5").write_bytes(b"old")
    for path, kind in [
        (tmp_path / "new" / "deeper" / "run", "folder"),
        (tmp_path / "existing", "folder"),
        (tmp_path / "new" / "model.tflite", "file"),
        (tmp_path / "weights.h5", "file"),  # replaced as a whole
    ]:
        assert checks.check_output(path, kind) == str(path)
    assert sorted(os.listdir(tmp_path)) == ["existing", "weights.h5"]  # nothing created


@pytest.mark.parametrize(
    "relative, kind, message",
    [
        ("afile", "folder", "afile is a file, not a folder; give a folder"),
        ("afile/run", "folder", "Cannot create --output .*afile/run: .*afile is a file, not a folder"),
        ("afile/x/model.tflite", "file", "Cannot create --output .*model.tflite: .*afile is a file, not a folder"),
        ("adir", "file", "adir is an existing folder; give a file path"),
    ],
)
def test_outputs_that_cannot_be_made(tmp_path, relative, kind, message):
    (tmp_path / "afile").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    with pytest.raises(ValueError, match=message):
        checks.check_output(tmp_path / relative, kind, what="--output")
    assert sorted(os.listdir(tmp_path)) == ["adir", "afile"]


def test_a_folder_that_cannot_be_written_in(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root may write anywhere: answer as the kernel would for anyone else
        monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(locked))
    for relative, kind in [("locked/model.tflite", "file"), ("locked/run", "folder"), ("locked/a/b", "folder")]:
        with pytest.raises(ValueError, match=f"Cannot write --output .*{relative}: no permission to write in {locked}"):
            checks.check_output(tmp_path / relative, kind, what="--output")
    assert checks.check_output(tmp_path / "free" / "run", "folder") == str(tmp_path / "free" / "run")
    locked.chmod(0o700)
    assert os.listdir(locked) == []


def test_bad_kind_and_empty_path():
    with pytest.raises(ValueError, match="`kind` should be one of"):
        checks.check_output("x", "archive")
    with pytest.raises(ValueError, match="path is needed"):
        checks.check_output("", "file")


def test_positive_int():
    assert checks.positive_int("steps", 3) == 3
    assert type(checks.positive_int("steps", np.int64(3))) is int
    assert checks.positive_int("steps", None, optional=True) is None
    for value in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"`steps` should be a positive integer. Received: steps="):
            checks.positive_int("steps", value)
    with pytest.raises(ValueError, match=r"`limit` should be None or a positive integer. Received: limit=0"):
        checks.positive_int("limit", 0, optional=True)


def test_flag():
    assert checks.flag("overwrite", True) is True and checks.flag("overwrite", np.bool_(False)) is False
    for value in ("no", "False", 0, 1, None):
        with pytest.raises(ValueError, match=r"`overwrite` should be True or False. Received: overwrite="):
            checks.flag("overwrite", value)


def test_op_error_reason_keeps_the_reason_of_eager_and_tf_data_errors(tmp_path):
    import tensorflow as tf

    damaged = str(tmp_path / "damaged.png")
    with open(damaged, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(tf.errors.InvalidArgumentError) as eager:
        tf.io.decode_image(tf.io.read_file(damaged))
    decoded = tf.data.Dataset.from_tensor_slices([damaged]).map(
        lambda p: tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
    )
    pipeline = tf.data.Dataset.zip((decoded, tf.data.Dataset.range(1))).prefetch(1)  # "Zip[0]" in its name
    with pytest.raises(tf.errors.InvalidArgumentError) as in_data:
        list(pipeline)
    assert "::Zip[0]::" in in_data.value.message and "function_node" in eager.value.message
    for error in (eager.value, in_data.value):
        assert checks.op_error_reason(error) == "Invalid PNG. Failed to initialize decoder"
    assert checks.op_error_reason(tf.errors.InvalidArgumentError(None, None, "")) == "no reason given"
