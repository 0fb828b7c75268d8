"""Training DLA classifiers and DLA-Up segmenters with `model.fit` under a `tf.distribute` strategy or, on JAX
and PyTorch, a `keras.distribution`.

`train(TrainConfig(...))` is what `keras-dla train` runs. Its phases, each a function here: check every argument
(`keras_dla.training.config`) and pick the strategy (`keras_dla.training.distribute`); load the data and check it
against the batch size and the replicas; build and compile the model inside the strategy's scope (the optimizer
and schedule of `keras_dla.training.schedules`, the losses of `keras_dla.training.losses`); fit it with the
callbacks of `keras_dla.training.run_folder`, which make the run resumable and write its folder, turning the
failures a user can fix into one sentence; and write the final figures.
"""

import dataclasses
import json
import os

import keras
import tensorflow as tf

from keras_dla import checks, files
from keras_dla.models.dla import DLA
from keras_dla.training import datasets, distribute, keras_patches, losses, run_folder, schedules
from keras_dla.training.config import (
    architecture_of,
    check_resumable,
    default_lr,
    default_schedule,
    epoch_steps,
    is_architecture_file,
    validate,
)
from keras_dla.weights import convert

# The validation figure that chooses the best epoch (DIR/best.weights.h5), per task; higher is better.
MONITORS = {"classification": "val_accuracy", "segmentation": "val_mean_iou"}


def build_classifier(model, classes, input_shape, weights):
    """A DLA classifier with a `classes`-way softmax; `model` is a variant or an architecture file
    (`config.architecture_of`), `weights` "none", "imagenet" or a file."""
    architecture = architecture_of(model)
    name = os.path.splitext(os.path.basename(model))[0] if is_architecture_file(model) else model
    backbone_weights = None if weights == "none" or str(weights).endswith(".weights.h5") else weights
    if backbone_weights is not None and input_shape[-1] != 3:
        raise ValueError(
            f"Pretrained backbones expect RGB images; the data set has {input_shape[-1]} channel(s). "
            f"Received: weights={weights!r}"
        )
    if backbone_weights == "imagenet" and classes == 1000:
        net = DLA(**architecture, weights="imagenet", input_shape=input_shape, name=name)
    elif backbone_weights is not None:
        # The ImageNet (or converted) backbone with a new `fc` for this data set's classes.
        base = DLA(**architecture, include_top=False, pooling="avg", weights=backbone_weights, input_shape=input_shape)
        x = keras.layers.Dense(classes, name="fc")(base.output)
        x = keras.layers.Activation("softmax", dtype="float32", name="predictions")(x)
        net = keras.Model(base.input, x, name=name)
    else:
        net = DLA(**architecture, weights=None, input_shape=input_shape, classes=classes, name=name)
    if str(weights).endswith(".weights.h5"):
        convert.load_weights(net, weights)  # a file that does not fit gets one sentence, not Keras' dump
    return net


def build_segmenter(model, classes, input_shape, weights, down_ratio):
    """A DLA-Up model (`keras_dla.models.dla_up.DLAUp`) on the DLA backbone of `model`: `dla34up` or `dla34`, or an
    architecture file (`config.architecture_of`)."""
    try:
        from keras_dla.models.dla_up import DLAUp
    except ImportError as e:
        raise ValueError(
            f"Segmentation needs keras_dla.models.dla_up, which this installation lacks. Received: model={model!r}"
        ) from e
    backbone_weights = None if weights == "none" or str(weights).endswith(".weights.h5") else weights
    architecture = architecture_of(model)
    net = DLAUp(
        backbone=architecture.get("variant", architecture),
        classes=classes,
        down_ratio=down_ratio,
        weights=backbone_weights,
        input_shape=input_shape,
    )
    if str(weights).endswith(".weights.h5"):
        convert.load_weights(net, weights)  # a file that does not fit gets one sentence, not Keras' dump
    return net


def _outputs_probabilities(model):
    """Whether a model ends in a softmax (else it returns logits or log-probabilities)."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


@dataclasses.dataclass
class Data:
    """The train and validation pipelines of a run, their `datasets.DataInfo`s, and the input size."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    info: datasets.DataInfo
    validation_info: datasets.DataInfo
    size: int


def check_replicas(config, strategy, tf_config):
    """Refuses what the strategy cannot run: XLA over logical CPU devices, a batch that does not split evenly."""
    replicas = strategy.num_replicas_in_sync
    on_tensorflow = keras.backend.backend() == "tensorflow"
    if on_tensorflow and config.jit and tf_config is None and replicas > 1 and not distribute.has_gpu():
        # XLA compiles the whole replicated step for the first logical CPU device, which then cannot read the
        # other replicas' variables (TensorFlow fails mid-fit with "Trying to access resource ... from device").
        raise ValueError(
            f"--jit (XLA) cannot run over {replicas} logical CPU devices: use --devices 1 (or GPUs) with --jit, "
            f"or drop --jit. Received: jit=True, devices={config.devices}"
        )
    if config.batch_size % replicas:
        raise ValueError(
            f"The global batch size should be divisible by the {replicas} replicas. "
            f"Received: batch_size={config.batch_size}"
        )


def input_size(config):
    """`config.image_size`, or by default 32 for Fashion-MNIST, 64 for its scenes, else 224 (classification) or
    512 (segmentation)."""
    if config.image_size:
        return config.image_size
    if config.task == "classification":
        return 32 if config.dataset == "fashion_mnist" else 224
    return 64 if config.dataset == "fashion_mnist_scenes" else 512


def load_data(config, distributed):
    """The train and validation splits of `config.dataset`, checked against the batch and the config.

    With `distributed` (several replicas or workers), a partial last validation batch is dropped: replicas must
    see equal shares of every batch.
    """
    size = input_size(config)
    if config.task == "classification":
        load = datasets.classification_data
        data_args = dict(image_size=size, recipe=config.augment)
    else:
        load = datasets.segmentation_data
        data_args = dict(crop_size=size, classes=config.classes, recipe=config.augment)
    common = dict(batch_size=config.batch_size, seed=config.seed, data_dir=config.data_dir, limit=config.limit)
    train_ds, info = load(config.dataset, split="train", **data_args, **common)
    val_ds, val_info = load(config.dataset, split="validation", drop_remainder=distributed, **data_args, **common)
    if distributed and 0 < val_info.num_examples < config.batch_size:
        raise ValueError(
            f"The validation split has {val_info.num_examples} examples, fewer than one global batch. "
            f"Received: batch_size={config.batch_size}"
        )
    if config.task == "classification" and config.classes is not None and config.classes != info.num_classes:
        raise ValueError(f"The data set has {info.num_classes} classes. Received: classes={config.classes}")
    if not config.steps_per_epoch and not info.num_examples:
        raise ValueError(
            "The size of the data set is unknown (tensorflow-datasets has not prepared it): give --steps-per-epoch. "
            "Received: steps_per_epoch=None"
        )
    return Data(train_ds, val_ds, info, val_info, size)


def compiled_model(config, info, size, total_steps, steps_per_execution):
    """The model of `config`, compiled with its loss, metrics, optimizer and schedule over `total_steps`.

    Call it inside the strategy's scope, so that the variables are made for its replicas.
    """
    input_shape = (size, size, info.channels)
    if config.task == "classification":
        model = build_classifier(config.model, info.num_classes, input_shape, config.weights)
        loss = losses.SparseSmoothedCrossentropy(config.label_smoothing)
        metrics = ["accuracy"]
    else:
        model = build_segmenter(config.model, info.num_classes, input_shape, config.weights, config.down_ratio)
        loss, metrics = losses.segmentation_loss_and_metrics(info.num_classes, not _outputs_probabilities(model))
    lr = config.lr or default_lr(config)
    schedule = schedules.learning_rate_schedule(default_schedule(config), lr, total_steps)
    model.compile(
        optimizer=schedules.make_optimizer(config, schedule),
        loss=loss,
        metrics=metrics,
        jit_compile=jit_compile(config),
        steps_per_execution=steps_per_execution,
    )
    return model


def jit_compile(config):
    """Keras' `jit_compile` for `config`: XLA with `--jit` on TensorFlow (its graphs run without), always on JAX
    (without it, Keras runs JAX's train step eagerly, op by op), `torch.compile` with `--jit` on PyTorch."""
    return True if keras.backend.backend() == "jax" else bool(config.jit)


def undecodable_image_error(error, config, data):
    """The one-sentence ValueError for an image that failed to decode mid-fit, naming the damaged files found."""
    reason = checks.op_error_reason(error)
    image_files = data.info.files + data.validation_info.files
    damaged, checked = datasets.find_undecodable(image_files)
    if damaged:
        where = f": {damaged}"
    elif image_files:
        where = f"; a damaged file that starts like an image? The first {checked} of {len(image_files)} decode"
    else:
        where = "; a damaged file that starts like an image?"
    return ValueError(
        f"An image of the data set could not be decoded during training ({reason}){where}. "
        f"Received: dataset={config.dataset!r}"
    )


def fit_in_folder(model, config, data, run_dir, steps, fresh):
    """`model.fit` with the run folder's callbacks; returns the History and the NaN watcher.

    A fit that fails leaves a fresh folder only when it holds something to resume; a bad mask label or an
    undecodable image becomes a ValueError that says which.
    """
    try:
        callbacks, nan = run_folder.make_callbacks(run_dir, MONITORS[config.task], "max", config.backup_every)
        if run_dir.chief:
            files.write_text(run_dir.path("config.json"), json.dumps(dataclasses.asdict(config), indent=2))
        history = model.fit(
            data.train,
            epochs=config.epochs,
            steps_per_epoch=steps,
            validation_data=data.validation,
            validation_steps=config.validation_steps,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # the pipelines shuffle; Keras 3.15 warns that its default True is ignored for tf.data
        )
    except BaseException as e:
        if fresh:
            run_dir.discard_if_unresumable()
        mask_error = datasets.mask_label_error(e, config.dataset)
        if mask_error is not None:
            raise ValueError(mask_error) from e
        if isinstance(e, tf.errors.InvalidArgumentError) and "Decode" in e.message:
            raise undecodable_image_error(e, config, data) from e
        raise
    return history, nan


def summary(config, strategy, multiworker, history, nan, run_dir):
    """The final figures of a run (all its epochs, resumed ones included, from DIR/history.csv)."""
    if multiworker:
        strategy_name = "MultiWorkerMirroredStrategy"
    elif isinstance(strategy, distribute.KerasDistribution):
        strategy_name = strategy.name
    else:
        strategy_name = type(strategy).__name__
    monitor = MONITORS[config.task]
    rows = run_folder.read_history(run_dir.path("history.csv"))
    return {
        "task": config.task,
        "model": config.model,
        "dataset": config.dataset,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": strategy_name,
        "backend": keras.backend.backend(),
        "epochs_completed": len(rows),
        "epochs_this_run": len(history.epoch),
        "final": rows[-1] if rows else {},
        "best": {monitor: max((r[monitor] for r in rows if monitor in r), default=None)},
        "stopped": nan.message,
    }


def train(config):
    """Trains as `config` (a `TrainConfig`) says; returns a dict of the final figures (also in DIR/run.json).

    Every check (names, numbers, data, labels, TF_CONFIG, batch size vs. replicas) happens before the first
    step. A run whose DIR holds a backup resumes from it; a run that had finished trains no further epoch.
    The dict also holds the trained model as `"model_object"`.
    """
    config = validate(config)
    strategy, tf_config = distribute.make_strategy(config.strategy, config.devices)
    check_replicas(config, strategy, tf_config)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16" if distribute.has_gpu() else "mixed_bfloat16")

    multiworker = tf_config is not None
    data = load_data(config, distributed=multiworker or strategy.num_replicas_in_sync > 1)
    steps, steps_per_execution = epoch_steps(config, data.info.num_examples)
    unresumed = check_resumable(config)
    fresh = not os.path.lexists(config.output)
    with strategy.scope():
        model = compiled_model(config, data.info, data.size, steps * config.epochs, steps_per_execution)
    if multiworker:
        keras_patches.build_on_local_batch(model, strategy)
        keras_patches.mean_scalars_across_workers()

    # The run folder is made only now, after every check and the model build (a bad weights file included).
    run_dir = run_folder.RunDirectory(config.output, tf_config, distribute.is_chief(tf_config))
    if unresumed and run_dir.chief:
        run_folder.discard_attempt(run_dir.output)
    history, nan = fit_in_folder(model, config, data, run_dir, steps, fresh)

    result = summary(config, strategy, multiworker, history, nan, run_dir)
    if run_dir.chief:
        if not nan.message and nan.finite.allows(model, "final.weights.h5"):
            run_folder.save_weights_atomically(model, run_dir.path("final.weights.h5"))
        files.write_text(run_dir.path("run.json"), json.dumps(result, indent=2))
    run_dir.cleanup()
    if nan.message:
        raise FloatingPointError(nan.message)
    result["model_object"] = model
    return result
