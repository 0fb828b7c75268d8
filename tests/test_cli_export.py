"""`keras-dla export`: DLA classifiers with weights files, DLA-Up, saved .keras models, int8 from a folder of
real images, and the refusals (exit code 2, one sentence, no file)."""

import os
import re
import zipfile

import keras
import numpy as np
import pytest

from keras_dla import cli, export
from keras_dla.export import runtime
from keras_dla.models import dla
from keras_dla.training import fashion_mnist
from keras_dla.training.images import load_images
from tests.test_export import TOLERANCE, images, tiny_model, trained_looking


def run_cli(capsys, *args):
    code = cli.main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def parities(out):
    """The max abs differences and agreements the command printed, one per parity line."""
    diffs = [float(v) for v in re.findall(r"max abs diff ([0-9.e+-]+)", out)]
    agreements = [float(v) / 100 for v in re.findall(r"agreement ([0-9.]+)%", out)]
    return diffs, agreements


def test_classifier_with_a_weights_file(capsys, tmp_path):
    model = dla.DLA("dla46x_c", weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    trained_looking(model, 32)
    weights = tmp_path / "trained.weights.h5"
    model.save_weights(weights)
    output = tmp_path / "dla.tflite"

    code, out, err = run_cli(
        capsys, "--model", "dla46x_c", "--weights", weights, "--format", "tflite", "--input-size", 32, 32,
        "--classes", 10, "--logits", "--samples", 4, "--output", output,
    )  # fmt: skip
    assert code == 0, err
    diffs, agreements = parities(out)
    assert len(diffs) == 1 and diffs[0] <= TOLERANCE and agreements == [1.0]
    assert "MiB" in out and "ms exported" in out
    # The file computes what the model with those weights computes (not a freshly initialised one).
    report = export.verify_export(model, output, images(3), latency_runs=1)
    assert report.max_abs_diff <= TOLERANCE


def test_dla_up_saved_model(capsys, tmp_path):
    output = tmp_path / "dla34up"
    code, out, err = run_cli(
        capsys, "--model", "dla34up", "--weights", "none", "--format", "saved_model", "--input-size", 64, 64,
        "--classes", 5, "--logits", "--samples", 2, "--output", output,
    )  # fmt: skip
    assert code == 0, err
    diffs, agreements = parities(out)
    assert "pixel agreement" in out
    assert diffs[0] <= TOLERANCE and agreements[0] >= 0.999
    assert os.path.isfile(output / "saved_model.pb")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras_model")
    model = tiny_model()
    model.save(folder / "tiny.keras")
    return model, folder / "tiny.keras"


def test_int8_from_a_folder_of_real_images_with_uint8_input(capsys, tmp_path, keras_file):
    model, path = keras_file
    folder = tmp_path / "images"
    folder.mkdir()
    _, (garments, _) = fashion_mnist.load_data()
    for i, garment in enumerate(garments[:24]):
        keras.utils.save_img(folder / f"{i:02d}.png", np.repeat(garment[:, :, None], 3, axis=-1), scale=False)
    output = tmp_path / "tiny_int8.tflite"

    code, out, err = run_cli(
        capsys, "--model", path, "--weights", "none", "--format", "tflite", "--quantize", "int8",
        "--representative", folder, "--calibration-steps", 16, "--samples", 8, "--uint8-input",
        "--preprocess", "unit", "--input-size", 28, 28, "--output", output,
    )  # fmt: skip
    assert code == 0, err
    assert "parity on 8 real images" in out and "parity on 8 random images" in out
    interpreter = runtime.tflite_interpreter(str(output), None)
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert any(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())
    # On the garments the command held out of calibration, the int8 model follows the float one.
    pixels = load_images(folder, (28, 28), count=24)[-8:]
    report = export.verify_export(model, output, pixels, preprocess="unit", latency_runs=1)
    assert report.max_rel_diff <= 0.1, report.summary()
    assert report.top1_agreement >= 7 / 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "coreml"], "should be one of saved_model, tflite, onnx, openvino. Received: --format coreml"),
        (["--format", "onnx"], "--format onnx writes a .onnx file. Received: --output"),
        (["--format", "onnx", "--quantize", "float16"], "does not apply to --format onnx"),
        (["--format", "onnx", "--integer-io"], "--integer-io applies to --format tflite only"),
        (["--format", "tflite", "--quantize", "int4"], "Received: --quantize int4"),
        (["--format", "saved_model", "--quantize", "float16"], "does not apply to --format saved_model"),
        (["--format", "tflite", "--quantize", "int8"], "pass --representative"),
        (["--format", "tflite", "--integer-io"], "--integer-io needs --quantize int8"),
        (["--format", "tflite", "--representative", "no_such_set", "--quantize", "int8"], "'no_such_set'"),
    ],
)
def test_bad_arguments(capsys, tmp_path, keras_file, args, message):
    output = tmp_path / "out.tflite"
    code, out, err = run_cli(
        capsys, "--model", keras_file[1], "--weights", "none", "--input-size", 8, 8, "--output", output, *args
    )
    assert code == 2
    assert message in err and err.startswith("keras-dla export: error: ")
    assert os.listdir(tmp_path) == []


def test_unknown_model_and_weights(capsys, tmp_path):
    code, _, err = run_cli(capsys, "--model", "dla35", "--weights", "none", "--format", "tflite", "--output", "x")
    assert code == 2 and "Received: --model dla35" in err
    code, _, err = run_cli(
        capsys, "--model", "dla34", "--weights", tmp_path / "missing.h5", "--format", "tflite", "--output", "x"
    )
    assert code == 2 and "Received: --weights" in err
    assert os.listdir(tmp_path) == []


def test_files_that_are_not_what_they_say(capsys, tmp_path, keras_file):
    # A text file named .keras, a text file among the calibration images, an output inside a file: one sentence
    # each, naming the file, and nothing written.
    (tmp_path / "text.keras").write_text("not a model")
    code, _, err = run_cli(
        capsys,
        "--model",
        tmp_path / "text.keras",
        "--weights",
        "none",
        "--format",
        "saved_model",
        "--output",
        tmp_path / "o",
    )
    assert code == 2 and "Not a Keras .keras file (those are zip archives)" in err

    folder = tmp_path / "calibration"
    folder.mkdir()
    (folder / "bad.jpg").write_text("not an image")
    code, _, err = run_cli(
        capsys, "--model", keras_file[1], "--weights", "none", "--format", "saved_model", "--input-size", 8, 8,
        "--representative", folder, "--output", tmp_path / "o",
    )  # fmt: skip
    assert code == 2 and f"Cannot read the image {folder / 'bad.jpg'}: UnidentifiedImageError" in err

    (tmp_path / "afile").write_bytes(b"")
    code, _, err = run_cli(
        capsys, "--model", keras_file[1], "--weights", "none", "--format", "tflite", "--input-size", 8, 8,
        "--output", tmp_path / "afile" / "x.tflite",
    )  # fmt: skip
    assert code == 2 and "Cannot create --output" in err and "afile is a file, not a folder" in err
    assert sorted(os.listdir(tmp_path)) == ["afile", "calibration", "text.keras"]


def _zip(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"notes.txt": "hello"}, "it has no config.json and no model.weights.h5 or model.weights.npz"),
        ({"config.json": '{"class_name": "Functional"}'}, "it has no model.weights.h5 or model.weights.npz"),
        ({"model.weights.h5": b"", "metadata.json": "{}"}, "it has no config.json (Keras saves"),
        ({"config.json": "not json", "model.weights.h5": b""}, "its config.json is not a Keras model configuration"),
        ({"config.json": "[1, 2]", "model.weights.h5": b""}, "its config.json is not a Keras model configuration"),
        ({"config.json": '{"config": {}}', "model.weights.h5": b""}, "not a Keras model configuration"),
        ({"config.json": '{"class_name": 3}', "model.weights.h5": b""}, "not a Keras model configuration"),
        ({"config.json": b"\xff\xfe\x00", "model.weights.h5": b""}, "not a Keras model configuration"),
        (
            {"config.json": '{"class_name": "NoSuchModel", "config": {}}', "model.weights.h5": b"not hdf5"},
            "Cannot load the saved model (",
        ),
    ],
)
def test_zip_files_that_are_not_keras_archives(capsys, tmp_path, entries, message):
    path = _zip(tmp_path / "model.keras", entries)
    code, out, err = run_cli(
        capsys, "--model", path, "--weights", "none", "--format", "saved_model", "--output", tmp_path / "o"
    )
    assert code == 2 and message in err and f"Received: --model {path}" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]


def test_files_given_as_a_saved_model_that_are_not_one(capsys, tmp_path, keras_file):
    whole = keras_file[1].read_bytes()
    cases = [
        ("cut.keras", whole[: len(whole) // 2], "An incomplete .keras file: it starts as a zip archive"),
        ("cut_end.keras", whole[:-10], "An incomplete .keras file"),
        ("random.keras", np.random.default_rng(0).bytes(5000), "Not a Keras .keras file (those are zip archives)"),
        ("empty.keras", b"", "Not a Keras .keras file (those are zip archives)"),
        ("text.h5", b"not an HDF5 file", "Cannot load the saved model ("),
        ("model.txt", b"a model?", "A saved model should be a .keras file (or a legacy .h5 model)"),
    ]
    for name, content, message in cases:
        (tmp_path / name).write_bytes(content)
        common = ["--weights", "none", "--format", "saved_model", "--output", tmp_path / "o"]
        code, _, err = run_cli(capsys, "--model", tmp_path / name, *common)
        assert code == 2 and message in err and f"Received: --model {tmp_path / name}" in err, (name, err)
        assert err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_overwrite(capsys, tmp_path, keras_file):
    model, path = keras_file
    output = tmp_path / "tiny.tflite"
    output.write_bytes(b"keep me")
    common = ["--model", path, "--weights", "none", "--format", "tflite", "--input-size", 8, 8, "--output", output]
    code, _, err = run_cli(capsys, *common)
    assert code == 2 and "pass --overwrite" in err
    assert output.read_bytes() == b"keep me"

    code, out, err = run_cli(capsys, *common, "--overwrite", "--samples", 2)
    assert code == 0, err
    assert parities(out)[0][0] <= TOLERANCE
    assert export.verify_export(model, output, num_random=2, latency_runs=1).max_abs_diff <= TOLERANCE
    assert sorted(os.listdir(tmp_path)) == ["tiny.tflite", "tiny.tflite.json"]


def test_onnx_and_openvino_print_their_contract(capsys, tmp_path):
    for fmt, name in (("onnx", "m.onnx"), ("openvino", "m.xml")):
        output = tmp_path / name
        code, out, err = run_cli(
            capsys, "--model", "dla46_c", "--weights", "none", "--format", fmt, "--input-size", 32, 32,
            "--classes", 3, "--samples", 2, "--output", output,
        )  # fmt: skip
        assert code == 0, err
        assert f"contract ({output}.json):" in out
        assert "input 'images': float32 [None, 32, 32, 3] (NHWC): RGB pixels in [0, 255], then (x - mean) / std" in out
        assert "output 'probabilities': probabilities [None, 3] over 3 classes (0, 1, 2)" in out
        diffs, agreements = parities(out)
        assert diffs[0] <= TOLERANCE and agreements == [1.0]


def test_onnx_and_openvino_int8_from_real_images(capsys, tmp_path):
    folder = tmp_path / "garments"
    folder.mkdir()
    _, (garments, _) = fashion_mnist.load_data()
    for i, garment in enumerate(garments[:12]):
        keras.utils.save_img(folder / f"{i:02d}.png", np.repeat(garment[:, :, None], 3, axis=-1), scale=False)
    for fmt, name, scheme in (("onnx", "q.onnx", "ONNX Runtime QDQ"), ("openvino", "q.xml", "NNCF")):
        output = tmp_path / name
        code, out, err = run_cli(
            capsys, "--model", "dla46_c", "--weights", "none", "--format", fmt, "--quantize", "int8",
            "--representative", folder, "--input-size", 32, 32, "--classes", 3, "--calibration-steps", 8,
            "--samples", 4, "--output", output,
        )  # fmt: skip
        assert code == 0, err
        assert "parity on 4 real images" in out and "quantization: " in out
        assert f"int8 static, {scheme}" in out
