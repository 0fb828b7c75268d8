"""`keras-dla convert`, `predict` and `list`, run in-process through the real argument parser."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
import torch
from PIL import Image
from torchvision import transforms

import keras_dla
from keras_dla.cli import main
from keras_dla.cli import predict as predict_command
from keras_dla.models.imagenet import MEAN, STD, imagenet_classes
from keras_dla.weights import cache, sources
from tests.reference import authors_state_dict, make_timm_model, timm_outputs

VARIANT = "dla46x_c"
SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An authors'-layout legacy .pth of a timm dla46x_c with random weights, and the timm model."""
    model = make_timm_model(VARIANT)
    state = authors_state_dict(model, VARIANT)
    path = tmp_path_factory.mktemp("ckpt") / f"{VARIANT}-authors.pth"
    torch.save(
        collections.OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in state.items()),
        path,
        _use_new_zipfile_serialization=False,
    )
    return path, model


@pytest.fixture(autouse=True)
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home"


@pytest.mark.parametrize("command", ["convert", "predict", "list"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: keras-dla {command}" in capsys.readouterr().out


def test_convert_output_loads_back_with_identical_outputs(checkpoint, tmp_path, capsys):
    path, timm_model = checkpoint
    output = tmp_path / "out" / f"{VARIANT}.weights.h5"
    assert main(["convert", str(path), "--model", VARIANT, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"into {output}" in printed and "1000 classes" in printed
    # The authors' dead `project` layer (level4 of this variant) is named with the reason.
    assert "level4.project.0.weight" in printed and "level4.project.1.running_var" in printed
    assert "dead in the authors' code" in printed
    assert "BatchNorm step counter" in printed
    assert [p for p in output.parent.iterdir()] == [output]  # no temporary file left

    images = np.random.default_rng(1).standard_normal((2, SIZE, SIZE, 3)).astype("float32")
    from_h5 = keras_dla.DLA46XC(weights=str(output), input_shape=(SIZE, SIZE, 3))
    from_pth = keras_dla.DLA46XC(weights=str(path), input_shape=(SIZE, SIZE, 3))
    np.testing.assert_array_equal(from_h5.predict(images, verbose=0), from_pth.predict(images, verbose=0))
    logits, _ = timm_outputs(timm_model, images)
    expected = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(from_h5.predict(images, verbose=0), expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "dla35", "--output", "x.weights.h5"], "Received: --model dla35"),
        (["--model", VARIANT, "--output", "x.h5"], "Received: --output x.h5"),
    ],
)
def test_convert_bad_arguments(checkpoint, argv, message, capsys):
    assert main(["convert", str(checkpoint[0]), *argv]) == 2
    assert message in capsys.readouterr().err


def test_convert_a_folder_or_a_missing_checkpoint(tmp_path, capsys):
    output = str(tmp_path / "x.weights.h5")
    assert main(["convert", str(tmp_path), "--model", "dla34", "--output", output]) == 2
    assert "The checkpoint is a folder" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "none.pth"), "--model", "dla34", "--output", output]) == 2
    assert "No such checkpoint" in capsys.readouterr().err


def test_convert_a_keras_weights_file_and_predict_with_an_unknown_suffix(tmp_path, capsys):
    keras_file = tmp_path / "model.weights.h5"
    keras_file.write_bytes(b"")
    output = str(tmp_path / "x.weights.h5")
    assert main(["convert", str(keras_file), "--model", VARIANT, "--output", output]) == 2
    assert "is a Keras .weights.h5 file already" in capsys.readouterr().err
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    (tmp_path / "weights.h5").write_bytes(b"")
    assert main(["predict", str(image), "--model", VARIANT, "--weights", str(tmp_path / "weights.h5")]) == 2
    assert "a Keras .weights.h5 file or a PyTorch checkpoint (.bin, .pt, .pth, .safetensors)" in capsys.readouterr().err


def test_convert_to_an_output_that_cannot_be_made(checkpoint, tmp_path, capsys):
    (tmp_path / "afile").write_bytes(b"")
    (tmp_path / "dir.weights.h5").mkdir()
    for output, message in [
        ("afile/x.weights.h5", "afile is a file, not a folder"),
        ("dir.weights.h5", "dir.weights.h5 is an existing folder; give a file path"),
    ]:
        assert main(["convert", str(checkpoint[0]), "--model", VARIANT, "--output", str(tmp_path / output)]) == 2
        assert message in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["afile", "dir.weights.h5"]


def test_convert_keeps_an_existing_output_unless_told_to_replace_it(checkpoint, tmp_path, capsys):
    output = tmp_path / "x.weights.h5"
    output.write_bytes(b"kept")
    argv = ["convert", str(checkpoint[0]), "--model", VARIANT, "--output", str(output)]
    assert main(argv) == 2
    assert "--output exists; pass --overwrite" in capsys.readouterr().err
    assert output.read_bytes() == b"kept"
    assert main([*argv, "--overwrite"]) == 0
    assert keras_dla.DLA46XC(weights=str(output), input_shape=(SIZE, SIZE, 3)).count_params() > 0
    assert sorted(os.listdir(tmp_path)) == ["x.weights.h5"]


def test_convert_a_checkpoint_of_another_variant_fails_clearly(checkpoint, tmp_path, capsys):
    assert main(["convert", str(checkpoint[0]), "--model", "dla34", "--output", str(tmp_path / "x.weights.h5")]) == 2
    assert "another DLA variant" in capsys.readouterr().err
    assert not (tmp_path / "x.weights.h5").exists()


def test_list_shows_every_variant_and_the_cache(keras_home, capsys):
    models = keras_home / "models"
    models.mkdir(parents=True)
    (models / f"dla34-ba72cf86{cache.CACHE_SUFFIX}").write_bytes(b"")
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows) == list(keras_dla.MODEL_CONFIGS)
    assert rows["dla34"].split() == ["dla34", "15,742,104", "3.07", "74.632", "imagenet"]
    assert rows["dla169"].split() == ["dla169", "53,389,720", "11.60", "78.702", "-"]
    assert lines[-1] == f"cache: {models}"


def _write_image(path, height, width):
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200
    image = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype("uint8")
    tf.io.write_file(str(path), tf.io.encode_png(image))
    return path


def test_eval_preprocessing_matches_torchvision(tmp_path):
    # The authors' evaluation: Resize(256) (PIL bilinear) + CenterCrop(224), on an odd-sized landscape image.
    path = _write_image(tmp_path / "image.png", 301, 403)
    ours = predict_command.load_image(str(path))
    theirs = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(Image.open(path).convert("RGB"))
    theirs = np.asarray(theirs, dtype="float32")
    assert ours.shape == theirs.shape == (224, 224, 3)
    difference = np.abs(ours - theirs)
    assert difference.mean() < 1.0 and difference.max() <= 8  # resampling round-off, in 8-bit levels


def test_predict_prints_top5_names_and_probabilities(checkpoint, tmp_path, capsys):
    path, timm_model = checkpoint
    image = _write_image(tmp_path / "cat.png", 260, 300)
    assert main(["predict", str(image), "--model", VARIANT, "--weights", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{image}:" and len(lines) == 6

    # The same top-5 as timm on the torchvision-preprocessed image.
    pipeline = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    with torch.no_grad():
        probabilities = torch.softmax(timm_model(pipeline(Image.open(image).convert("RGB"))[None]), dim=1)[0].numpy()
    classes = imagenet_classes()
    for rank, (line, index) in enumerate(zip(lines[1:], np.argsort(probabilities)[::-1][:5], strict=True), 1):
        wnid, name = classes[index]
        assert line.startswith(f"  {rank}. {name}") and line.endswith(f"({wnid})")
        assert float(line.split()[-2]) == pytest.approx(probabilities[index], rel=0.05, abs=1e-4)


def test_predict_goes_through_many_images_a_batch_at_a_time(checkpoint, tmp_path, capsys, monkeypatch):
    images = [str(_write_image(tmp_path / f"{i}.png", 230 + 7 * i, 250)) for i in range(5)]
    argv = ["predict", *images, "--model", VARIANT, "--weights", str(checkpoint[0]), "--top", "2"]
    assert main(argv) == 0
    together = capsys.readouterr().out
    monkeypatch.setattr(predict_command, "BATCH", 2)  # batches of 2, 2 and 1
    assert main(argv) == 0
    assert capsys.readouterr().out == together
    assert together.splitlines()[::3] == [f"{path}:" for path in images]
    # A missing file anywhere in the list is refused before the model is built and anything is printed.
    assert main([*argv[:3], str(tmp_path / "gone.png"), *argv[3:]]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "no such file. Received: " + str(tmp_path / "gone.png") in captured.err


@pytest.mark.parametrize(
    "name, message",
    [
        ("broken.jpg", "Cannot read the image: Unknown image file format. One of JPEG"),
        ("missing.jpg", "Cannot read the image: no such file."),
        ("folder", "Cannot read the image: this is a folder"),
    ],
)
def test_predict_unreadable_image(checkpoint, tmp_path, capsys, name, message):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "folder").mkdir()
    path = str(tmp_path / name)
    assert main(["predict", path, "--weights", str(checkpoint[0]), "--model", VARIANT]) == 2
    error = capsys.readouterr().err
    assert message in error and error.rstrip().endswith(f"Received: {path}")
    assert "function_node" not in error and "[Op:" not in error


def test_predict_reports_a_bad_image_and_classifies_the_others(checkpoint, tmp_path, capsys, monkeypatch):
    images = [str(_write_image(tmp_path / f"{i:02d}.png", 230 + i, 250)) for i in range(32)]
    (tmp_path / "07.png").write_bytes(b"not an image")  # no image header at all
    (tmp_path / "19.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)  # a PNG signature, then garbage
    tf.io.write_file(str(tmp_path / "30.png"), tf.io.encode_png(np.zeros((1, 20000, 3), "uint8")))  # too elongated
    bad = {images[7], images[19], images[30]}
    argv = ["predict", *images, "--model", VARIANT, "--weights", str(checkpoint[0]), "--top", "1"]
    for batch in (32, 5):  # within one batch, and across batches
        monkeypatch.setattr(predict_command, "BATCH", batch)
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out.splitlines()[::2] == [f"{path}:" for path in images if path not in bad]  # in order
        errors = [line for line in err.splitlines() if line.startswith("keras-dla predict:")]
        assert [line.rsplit("Received: ", 1)[1] for line in errors] == [images[7], images[19], images[30]]
        assert all(line.startswith("keras-dla predict: error: Cannot read the image") for line in errors)
        assert "Traceback" not in err and "function_node" not in err


def _png(height, width):
    """A PNG header of any size (valid chunk CRC), with a tiny body: the size check comes before decoding."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def _encoded(fmt, height, width):
    buffer = __import__("io").BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("wide.png", lambda: _encoded("PNG", 1, 20000), "at 20000x1 pixels its long side is more than 64 times"),
        ("tall.png", lambda: _encoded("PNG", 20000, 1), "at 1x20000 pixels its long side"),
        ("wide.jpg", lambda: _encoded("JPEG", 8, 4000), "at 4000x8 pixels"),
        ("wide.gif", lambda: _encoded("GIF", 2, 5000), "at 5000x2 pixels"),
        ("tall.bmp", lambda: _encoded("BMP", 3000, 3), "at 3x3000 pixels"),
        ("huge.png", lambda: _png(100_000, 100_000), "100000x100000 pixels is more than the 64 megapixels"),
        ("huge_wide.png", lambda: _png(30_000, 3_000_000), "3000000x30000 pixels is more than the 64 megapixels"),
        ("long.png", lambda: _png(100, 6401), "at 6401x100 pixels"),
        ("empty.png", lambda: _png(0, 300), "its header gives a size of 300x0 pixels"),
    ],
)
def test_predict_refuses_by_decoded_size_before_decoding(tmp_path, name, make, message, monkeypatch):
    path = tmp_path / name
    path.write_bytes(make())

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(tf.io, "decode_image", no_decoding)
    with pytest.raises(ValueError, match="Received: ") as caught:
        predict_command.load_image(str(path))
    assert message in str(caught.value) and str(caught.value).endswith(f"Received: {path}")
    if "megapixels" not in message and "header gives" not in message:
        assert "would make it 256x" in str(caught.value)


def test_predict_takes_images_up_to_the_bounds(tmp_path):
    for height, width in ((3, 192), (192, 3), (250, 16000)):  # ratios of 64 and under
        path = tmp_path / f"{height}x{width}.png"
        path.write_bytes(_encoded("PNG", height, width))
        assert predict_command.load_image(str(path)).shape == (224, 224, 3)


def _release_script():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "convert_all.py")
    spec = importlib.util.spec_from_file_location("convert_all", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_release_script_converts_a_folder_of_checkpoints(checkpoint, tmp_path):
    import hashlib
    import json

    path, timm_model = checkpoint
    data = path.read_bytes()
    name = f"{VARIANT}-{hashlib.sha256(data).hexdigest()[:8]}.pth"  # an upstream-style name with its hash
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / name).write_bytes(data)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    unreachable = sources.Source(f"http://127.0.0.1:9/{name}", name, hashlib.sha256(data).hexdigest()[:8], "authors")
    entry = sources.Pretrained(VARIANT, "imagenet", (unreachable,))
    script = _release_script()

    with pytest.warns(sources.WeightsWarning, match="sha256 mismatch"):
        with pytest.raises(ValueError, match="No verified checkpoint"):
            script.convert_all(tmp_path / "release-bad", [entry], checkpoints=tmp_path / "bad", log=lambda _: None)
    assert not (tmp_path / "release-bad" / "manifest.json").exists()

    manifest = script.convert_all(tmp_path / "release", [entry], checkpoints=tmp_path / "checkpoints")
    assert json.loads((tmp_path / "release" / "manifest.json").read_text()) == manifest
    record = manifest[VARIANT]
    output = tmp_path / "release" / record["file"]
    assert record["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    assert record["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert "level4.project.0.weight" in record["dropped_keys"]
    assert record["params"] == sources.PRETRAINED[VARIANT]["imagenet"].params

    images = np.random.default_rng(3).standard_normal((1, SIZE, SIZE, 3)).astype("float32")
    released = keras_dla.DLA46XC(weights=str(output), input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    logits, _ = timm_outputs(timm_model, images)
    np.testing.assert_allclose(released.predict(images, verbose=0), logits, rtol=1e-3, atol=1e-4)
