"""benchmarks/: the FLOP count the ceilings rest on, the ratios and outputs of the report, and the helpers of the
other scripts."""

import importlib.util
import json
import os

import pytest

import keras_dla

_BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


performance = _load("performance")
kernel_time = _load("kernel_time")
flip_tta_accuracy = _load("flip_tta_accuracy")
winograd = _load("winograd")


def test_flops_match_the_published_multiply_adds():
    # timm's model card gives DLA-34 3.07 GMACs and DLA-169 11.6 GMACs at 224x224.
    assert performance.model_flops(keras_dla.DLA34(weights=None)) / 2e9 == pytest.approx(3.07, rel=0.01)
    assert performance.model_flops(keras_dla.DLA169(weights=None)) / 2e9 == pytest.approx(11.6, rel=0.01)


def test_a_training_step_is_three_products_but_the_images_gradient():
    model = keras_dla.DLA34(weights=None)
    stem = 2 * 224 * 224 * 7 * 7 * 3 * 16  # dla.py's base_layer: 7x7, 3 to 16 channels, stride 1
    assert performance.train_flops(model) == 3 * performance.model_flops(model) - stem


def test_timed_models_fold_to_nonzero_biases_as_trained_ones_do():
    import argparse

    import numpy as np

    from keras_dla.export import inference

    model, build_s = performance._keras_model(argparse.Namespace(model="dla46_c", size=64))
    assert build_s > 0
    folded = inference.fold_batch_norms(model)
    # Every folded convolution; the classifier (fc) keeps its own, zero-initialised bias.
    biases = [x.bias.numpy() for x in folded.layers if getattr(x, "bias", None) is not None and x.name != "fc"]
    assert len(biases) > 40 and all(np.abs(b).max() > 1e-3 for b in biases)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(folded(x), model(x, training=False), atol=1e-4)


def test_time_call_takes_the_median_after_warmup():
    calls = []
    performance.time_call(lambda: calls.append(1), min_calls=5, min_seconds=0, warmup=2)
    assert len(calls) == 7


def _results():
    rates = lambda a, b: {"1": a, "8": b}  # noqa: E731  (JSON keys are strings)
    return {
        "matmul_gflops": {"float32": 100.0, "bfloat16": 200.0, "int8": 400.0},
        "threads": 2,
        "size": 224,
        "batches": [1, 8],
        "date": "2026-11-27",
        "machine": {"cpu": "test CPU"},
        "models": {
            "dla34": {
                "keras_inference": {"flops": 5e9, "build_s": 1.0, "rates": {"keras_dla fast": rates(10.0, 20.0)}},
                "keras_bf16": {"rates": {"keras_dla fast bf16": rates(15.0, 30.0)}},
                "keras_openvino": {"rates": {"keras_dla openvino int8": rates(50.0, 70.0)}},
                "keras_train": {"train_step_s": 2.0, "train_flops": 1e9, "peak_rss_mib": 100},
                "keras_train_bf16": {"train_step_s": 1.0, "train_flops": 1e9, "peak_rss_mib": 100},
                "timm_inference": {"build_s": 0.5, "rates": {"timm eager": rates(5.0, 10.0)}},
                "timm_train": {"train_step_s": 4.0, "peak_rss_mib": 90},
                "timm_train_bf16": {"train_step_s": 4.0, "peak_rss_mib": 90},
                "onnxruntime": {"rates": {"onnxruntime": rates(20.0, 40.0), "onnxruntime int8": rates(40.0, 80.0)}},
                "openvino": {"rates": {"openvino fp32": rates(25.0, 30.0), "openvino bf16": rates(30.0, 60.0)}},
                "tflite": None,  # a job that failed
            }
        },
    }


def test_ratios_limits_and_outputs(tmp_path, capsys):
    results = _results()
    results["inference"] = performance.rows_of(results, [1, 8])
    results["best"] = performance.best_rows(results["inference"])
    results["training"] = performance.train_rows(results)
    row = {(r["path"], r["batch"]): r for r in results["inference"]}
    fast8 = row["keras_dla fast", 8]
    assert (fast8["who"], fast8["precision"]) == ("keras_dla", "float32")
    assert fast8["vs_timm"] == pytest.approx(2.0)
    assert fast8["vs_best_peer"] == pytest.approx(0.5)  # ONNX Runtime's 40 beats OpenVINO's 30 at batch 8
    assert row["keras_dla fast", 1]["vs_best_peer"] == pytest.approx(10.0 / 25.0)  # OpenVINO's 25 at batch 1
    assert fast8["of_limit"] == pytest.approx(20.0 / (100e9 / 5e9))  # limit: 20 images/s
    bf16 = row["keras_dla fast bf16", 8]
    assert bf16["vs_best_peer"] == pytest.approx(0.5) and bf16["of_limit"] == pytest.approx(30.0 / 40.0)
    assert row["keras_dla openvino int8", 8]["vs_best_peer"] == pytest.approx(70.0 / 80.0)
    assert row["onnxruntime int8", 1]["of_limit"] == pytest.approx(40.0 / 80.0)
    best = {(b["precision"], b["batch"]): b for b in results["best"]}
    assert best["int8", 1]["ratio"] == pytest.approx(50.0 / 40.0) and best["int8", 1]["peer_path"] == "onnxruntime int8"
    assert best["float32", 8]["keras_dla_path"] == "keras_dla fast" and len(best) == 6
    train = {r["precision"]: r for r in results["training"]}
    assert train["float32"]["vs_timm"] == pytest.approx(2.0) and train["bfloat16"]["vs_timm"] == pytest.approx(4.0)
    assert train["float32"]["keras_dla_images_per_s"] == pytest.approx(8.0)
    # The float32 limit: 100 GFLOP/s over 1 GFLOP a training image, 100 images/s; bfloat16's 200 is 50x timm's 4.
    assert train["float32"]["limit_images_per_s"] == pytest.approx(100.0)
    assert train["float32"]["keras_dla_of_limit"] == pytest.approx(0.08)
    assert train["float32"]["timm_of_limit"] == pytest.approx(0.04)
    assert train["bfloat16"]["at_limit_vs_timm"] == pytest.approx(200.0 / 4.0)
    performance.print_tables(results)
    out = capsys.readouterr().out
    assert "keras_dla fast" in out and "bfloat16 200 GFLOP/s" in out
    performance.plot(results, str(tmp_path / "chart.png"))
    assert os.path.getsize(tmp_path / "chart.png") > 1000
    (tmp_path / "performance.json").write_text(json.dumps(results))  # what main() writes
    performance.main(["--report", str(tmp_path / "performance.json")])  # its tables and chart again, from the file
    assert "keras_dla's fastest path against the fastest peer" in capsys.readouterr().out
    assert os.path.getsize(tmp_path / "performance.png") > 1000


def test_rounds_alternate_and_report_medians(monkeypatch):
    calls = []
    step = {"keras_train": [2.0, 9.0, 3.0], "timm_train": [4.0, None, 5.0]}  # None: the job failed that round

    def fake_worker(job, model, args):
        calls.append(job)
        if job == "matmul":
            return {"gflops": 100.0 + len(calls), "by_size": {"1024": 1.0}}
        seconds = step[job][sum(c == job for c in calls) - 1]
        return None if seconds is None else {"train_step_s": seconds, "rates": {"x": {"8": float(len(calls))}}}

    monkeypatch.setattr(performance, "run_worker", fake_worker)
    args = performance.parse_args(["--models", "dla34", "--rounds", "3", "--skip", *_OTHER_JOBS])
    results = performance.collect(args)
    forward = ["matmul", "keras_train", "timm_train"]
    assert calls == forward + forward[::-1] + forward
    jobs = results["models"]["dla34"]
    assert jobs["keras_train"]["train_step_s"] == 3.0  # median of 2, 9, 3
    assert jobs["timm_train"]["train_step_s"] == 4.5  # median of 4 and 5: the failed round is left out
    assert jobs["keras_train"]["rates"]["x"]["8"] == 5.0  # calls 2, 5, 8
    assert results["matmul_gflops"] == 106.0  # calls 1, 6, 7
    assert len(results["per_round"]) == 3 and results["per_round"][1]["models"]["dla34"]["timm_train"] is None


_OTHER_JOBS = [j for j in performance.WORKERS if j not in ("matmul", "keras_train", "timm_train")]


def test_kernel_time_sums_onednn_lines_between_call_markers():
    conv = "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,fwd,src dst,,alg,mb1_ic3,{}"
    pool = "onednn_verbose,v1,primitive,exec,cpu,pooling,jit:avx512_core,fwd,src dst,,alg,mb1ic32,{}"
    lines = [
        conv.format(9.0),  # warm-up, outside the markers
        "KERNEL_TIME_CALL",
        conv.format(1.5),
        "onednn_verbose,v1,primitive,create:cache_hit,cpu,convolution,brg,fwd,src,,alg,mb1,0.01",
        pool.format(0.25),
        conv.format(2.0),
        "KERNEL_TIME_CALL 0.005",
        "KERNEL_TIME_CALL",
        pool.format(1.0),
        "KERNEL_TIME_CALL 0.002",
    ]
    calls = kernel_time.kernel_times(lines)
    assert calls == [(5.0, {"convolution": 3.5, "pooling": 0.25}), (2.0, {"pooling": 1.0})]


def test_per_conv_reads_the_last_call_and_counts_flops():
    line = "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,fwd,src dst,,alg,{},{}"
    stem = "mb1_ic3oc16_ih224oh224kh7sh1dh0ph3_iw224ow224kw7sw1dw0pw3"
    grouped = "mb2_g32ic128oc128_ih28oh14kh3sh2dh0ph1_iw28ow14kw3sw2dw0pw1"
    lines = [
        "KERNEL_TIME_CALL",
        line.format(stem, 5.0),
        "KERNEL_TIME_CALL 0.01",
        "KERNEL_TIME_CALL",
        line.format(stem, 1.0),
        line.format(grouped, 0.5),
        line.format(grouped, 1.5),
        "onednn_verbose,v1,primitive,exec,cpu,pooling,jit,fwd,src,,alg,mb1ic32,9.0",
        "KERNEL_TIME_CALL 0.01",
    ]
    stem_flops = 2 * 16 * 224 * 224 * 3 * 7 * 7
    grouped_flops = 2 * 2 * 128 * 14 * 14 * 128 * 3 * 3 / 32
    assert kernel_time.conv_flops(stem) == stem_flops and kernel_time.conv_flops(grouped) == grouped_flops
    assert kernel_time.per_conv(lines) == [
        (grouped, 2, 2.0, 2 * grouped_flops / 2.0 / 1e6),
        (stem, 1, 1.0, stem_flops / 1.0 / 1e6),
    ]


def test_bad_arguments_are_refused():
    for argv in (["--models", "resnet50"], ["--threads", "0"], ["--batches", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            performance.parse_args(argv)


def test_flip_averaging_mirrors_the_width_and_adds_the_softmax_outputs():
    import keras
    import numpy as np

    # Class 0 reads columns 0 and 1, class 1 reads column 3. The garment (label 0) scores 4 vs 5 as it is, wrongly,
    # and 9 vs 4 mirrored left-right; the summed softmax outputs pick class 0. Mirroring the height instead would
    # leave the image (constant along columns) and the wrong answer unchanged.
    kernel = np.zeros((4, 4, 2), "float32")
    kernel[:, 0:2, 0] = 1.0
    kernel[:, 3, 1] = 1.0
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")])
    model.layers[-1].set_weights([kernel.reshape(16, 2), np.zeros(2, "float32")])
    image = np.zeros((1, 4, 4, 1), "float32")
    image[0, :, 0], image[0, :, 2], image[0, :, 3] = 1.0, 1.0, 1.25
    plain, flipped = flip_tta_accuracy.flip_tta_predictions(model, image)
    assert (plain.tolist(), flipped.tolist()) == ([1], [0])


def test_flip_tta_script_prints_both_accuracies_and_draws_the_confusion_matrix(tmp_path, monkeypatch, capsys):
    # Trained-from-nothing weights on the first 500 real test images: the accuracies printed must be the ones of the
    # predictions, and the matrix the single view's.
    import keras
    import numpy as np

    from keras_dla.training import datasets, fit

    weights = str(tmp_path / "model.weights.h5")
    fit.build_classifier("dla46_c", 10, (32, 32, 1), None).save_weights(weights)
    real = datasets.classification_data
    monkeypatch.setattr(datasets, "classification_data", lambda *a, **k: real(*a, **k, limit=500))
    drawn = {}
    monkeypatch.setattr(flip_tta_accuracy.plots, "plot_confusion", lambda m, names, path: drawn.update(m=m, path=path))
    flip_tta_accuracy.main([weights, "dla46_c", "32", "--confusion", str(tmp_path / "c.png")])

    model = fit.build_classifier("dla46_c", 10, (32, 32, 1), weights)
    test, _ = real("fashion_mnist", split="validation", batch_size=250, image_size=32, limit=500)
    images, labels = (np.concatenate(p) for p in zip(*[(a.numpy(), b.numpy()) for a, b in test], strict=True))
    plain, flipped = flip_tta_accuracy.flip_tta_predictions(model, images)
    out = capsys.readouterr().out
    assert (
        f"500 test images; accuracy {np.mean(plain == labels):.4f} single view, {np.mean(flipped == labels):.4f}" in out
    )
    np.testing.assert_array_equal(drawn["m"], np.bincount(labels * 10 + plain, minlength=100).reshape(10, 10))
    assert drawn["path"] == str(tmp_path / "c.png")
    keras.backend.clear_session()


def test_flip_tta_script_refuses_a_size_of_zero(capsys):
    with pytest.raises(SystemExit):
        flip_tta_accuracy.parse_args(["w.weights.h5", "dla46_c", "0"])
    assert "image size should be positive" in capsys.readouterr().err


@pytest.mark.parametrize("height, width", [(6, 6), (7, 5)])
def test_winograd_convolution_equals_the_direct_one(height, width):
    # Odd sides exercise the padding to whole 2x2 tiles and the crop back.
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, height, width, 3)).astype("float32")
    kernel = rng.standard_normal((3, 3, 3, 5)).astype("float32")
    bias = rng.standard_normal(5).astype("float32")
    got = winograd.winograd_conv(
        tf.constant(x),
        tf.constant(winograd.transformed_kernel(kernel)),
        tf.constant(bias),
        tf.constant(winograd.input_transform_filter(3)),
        tf.constant(winograd.output_transform_matrix()),
    ).numpy()
    want = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME") + bias).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_winograd_refuses_a_batch_of_zero(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["winograd.py", "--batches", "0"])
    with pytest.raises(SystemExit):
        winograd.main()
    assert "should be positive" in capsys.readouterr().err
