"""Training DLA classifiers and DLA-Up segmenters with `model.fit` under a `tf.distribute` strategy or, on JAX and
PyTorch, a `keras.distribution`.

`train(TrainConfig(...))` is what `keras-dla train` runs: it picks the strategy (on TensorFlow one device,
MirroredStrategy over the local GPUs or logical CPUs, or MultiWorkerMirroredStrategy from `TF_CONFIG`; on JAX
`keras.distribution.DataParallel` over the local devices, the CPU split into host devices where there is no
GPU; on PyTorch one device), checks every argument and the
data before anything trains, builds and compiles the model inside the strategy's scope (SGD with momentum 0.9 and
weight decay 1e-4, the authors' learning-rate schedules), and fits it with the callbacks of
`keras_dla.training.run_folder`, which make the run resumable and write its folder.
"""

import contextlib
import dataclasses
import json
import math
import os

import keras
import tensorflow as tf
from keras import ops

from keras_dla import checks, files
from keras_dla.models.dla import DLA, MIN_INPUT_SIZE, MODEL_CONFIGS
from keras_dla.training import datasets, run_folder
from keras_dla.weights import convert

STRATEGIES = ("auto", "mirrored", "multiworker", "one-device")
SCHEDULES = ("step", "poly", "cosine")
OPTIMIZERS = ("sgd", "adamw")  # sgd: the authors' (with momentum); adamw: short runs. Keras decouples weight decay
TASKS = ("classification", "segmentation")
# Augmentation recipes per task; None is each task's default (the authors': see `keras_dla.training.datasets`).
# Segmentation's "flip" drops the random scale and rotation (the crop and flip stay), for short runs as the demo's.
AUGMENTS = {"classification": ("imagenet", "small", "small-erasing", "flip"), "segmentation": ("flip",)}
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
POLY_POWER = 0.9
STEP_FACTOR = 0.1
STEPS_PER_DECAY = 4  # the step schedule divides the run in 4: x0.1 every 30 of the authors' 120 ImageNet epochs


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; `keras-dla train` fills it from its flags."""

    task: str = "classification"
    model: str = "dla34"
    dataset: str = "fashion_mnist"
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 64  # global: split over the replicas
    lr: float | None = None  # default: 0.1 * batch / 256 (classification), 0.01 * batch / 16 (segmentation)
    schedule: str | None = None  # default: "step" (classification), "poly" (segmentation)
    weights: str = "none"  # "none" | "imagenet" | a weights file
    output: str = "runs/dla"
    strategy: str = "auto"
    devices: int | None = None
    mixed_precision: bool = False
    jit: bool = False
    steps_per_execution: int = 1  # train steps per tf.function call: fewer calls, less per-step overhead
    image_size: int | None = None  # classification input / segmentation crop; default per data set
    classes: int | None = None  # only needed by a list-file folder without `classes` in info.json
    down_ratio: int = 2
    seed: int = 0
    optimizer: str = "sgd"  # "sgd" (the authors', with `momentum`) or "adamw"
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    label_smoothing: float = 0.0  # classification only
    data_dir: str | None = None
    limit: int | None = None  # use only the first examples of each split
    augment: str | None = None  # a recipe of AUGMENTS[task]; None: the default of the task and data set
    validation_steps: int | None = None
    backup_every: int | None = None  # also back up every N steps (default: every epoch)
    verbose: int | str = "auto"


# ----------------------------------------------------------------------------------------------------------------
# Devices and strategies


def configure_devices(devices):
    """`--devices N`: the first N GPUs, or the CPU split into N logical devices where there is no GPU.

    Must run before TensorFlow initialises its devices (before any tensor is made).
    """
    if devices is None:
        return
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"`devices` should be a positive integer. Received: devices={devices!r}")
    gpus = tf.config.list_physical_devices("GPU")
    try:
        if gpus:
            if devices > len(gpus):
                raise ValueError(f"Only {len(gpus)} GPUs are visible. Received: devices={devices}")
            tf.config.set_visible_devices(gpus[:devices], "GPU")
        else:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
            if devices > 1:
                # Each replica runs its ops on its own share of the cores, all replicas at once: on 2 cores,
                # 2 single-threaded replicas trained DLA-46-C up to 1.5x faster than one on both (noisy timings).
                tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // devices))
                tf.config.threading.set_inter_op_parallelism_threads(devices)
    except RuntimeError as e:
        if len(_local_devices()) != devices:
            raise ValueError(
                f"TensorFlow had started before the devices could be set up ({e}). Received: devices={devices}"
            ) from e


def _local_devices():
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


# The jobs of a multi-worker cluster: the workers (a chief among them or not) and an evaluator beside them.
TF_CONFIG_JOBS = ("chief", "worker", "evaluator")
TRAINING_JOBS = ("chief", "worker")


def _shown(value, limit=300):
    """`repr(value)`, cut to `limit` characters: a message quotes what it refuses, not a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_address(value):
    """Whether `value` is a 'host:port' string with a port number (IPv6 hosts in brackets: '[::1]:2222')."""
    if not isinstance(value, str):
        return False
    host, _, port = value.rpartition(":")
    return bool(host) and port.isascii() and port.isdigit() and 0 < int(port) < 65536


def _tf_config_problem(config):
    """What is wrong with a parsed TF_CONFIG, as the end of a sentence; None when it is a cluster and a task."""
    if not isinstance(config, dict):
        return "should be a JSON object with 'cluster' and 'task'"
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        return "should hold a 'cluster' and a 'task' object"
    unknown = sorted(set(cluster) - set(TF_CONFIG_JOBS))
    if unknown:
        jobs = list(TF_CONFIG_JOBS)
        return f"'s cluster has job(s) {unknown}, which MultiWorkerMirroredStrategy does not run (its jobs: {jobs})"
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            return f"'s cluster should list each job's tasks as 'host:port' strings; its {job!r} is {_shown(addresses)}"
    if not any(cluster.get(job) for job in TRAINING_JOBS):
        return "'s cluster has no 'worker' or 'chief'"
    if len(cluster.get("chief", [])) > 1:
        return "'s cluster has more than one 'chief'"
    addresses = [a for job in cluster.values() for a in job]
    if len(set(addresses)) != len(addresses):
        return "'s cluster lists an address twice"
    kind, index = task.get("type"), task.get("index")
    if not isinstance(kind, str) or kind not in cluster:
        return f"'s task should have a 'type' among the cluster's jobs {sorted(cluster)}, not {_shown(kind)}"
    if kind not in TRAINING_JOBS:
        return f"'s task type {kind!r} does not train; keras-dla train runs as a {' or a '.join(TRAINING_JOBS)}"
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        return f"'s task should have an 'index' (a number) into the cluster's {kind!r} list, not {_shown(index)}"
    return None


def parse_tf_config(text=None):
    """The parsed `TF_CONFIG` (cluster and task), or a ValueError that says in one sentence what is wrong with it.

    TF_CONFIG is `{"cluster": {"worker": ["host:port", ...], "chief": [...]}, "task": {"type": "worker",
    "index": 0}}` (TensorFlow's multi-worker guide); every field of that structure is checked.
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable. Received: TF_CONFIG=None")
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ValueError(f"TF_CONFIG does not parse as JSON ({reason}). Received: TF_CONFIG={_shown(text)}") from None
    problem = _tf_config_problem(config)
    if problem:
        separator = "" if problem.startswith("'s") else " "
        raise ValueError(f"TF_CONFIG{separator}{problem}. Received: TF_CONFIG={_shown(text)}")
    return config


def is_chief(tf_config):
    """Chief: the 'chief' task, or worker 0 of a cluster without one."""
    if tf_config is None:
        return True
    task, cluster = tf_config["task"], tf_config["cluster"]
    return task["type"] == "chief" or (task["type"] == "worker" and task["index"] == 0 and "chief" not in cluster)


class KerasDistribution:
    """JAX's and PyTorch's counterpart of a `tf.distribute` strategy, as far as `train` uses one.

    On JAX with more than one device, `keras.distribution.DataParallel` over `devices` is set (Keras then splits
    every batch over them and averages the gradients); the model needs no scope.
    """

    def __init__(self, devices):
        self.devices = devices
        self.name = "DataParallel" if len(devices) > 1 else "OneDevice"
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    @property
    def num_replicas_in_sync(self):
        return len(self.devices)

    def scope(self):
        return contextlib.nullcontext()


def _jax_devices(devices):
    """The first `devices` local JAX devices; on a CPU, the host split into that many devices first."""
    if devices is not None and (not isinstance(devices, int) or devices < 1):
        raise ValueError(f"`devices` should be a positive integer. Received: devices={devices!r}")
    if devices and devices > 1:
        # Read when JAX starts its CPU client, which no keras_dla import does: a GPU machine ignores it.
        flag = f"--xla_force_host_platform_device_count={devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import jax

    local = jax.local_devices()
    if devices and devices > len(local):
        raise ValueError(
            f"JAX sees {len(local)} device(s) (on a CPU, JAX had started before the host could be split). "
            f"Received: devices={devices}"
        )
    return local[: devices or len(local)]


def _keras_distribution(name, devices):
    backend = keras.backend.backend()
    if name == "multiworker" or (name == "auto" and os.environ.get("TF_CONFIG")):
        raise ValueError(
            "Multi-worker training runs on the TensorFlow backend (MultiWorkerMirroredStrategy, TF_CONFIG); run "
            f"with KERAS_BACKEND=tensorflow. Received: KERAS_BACKEND={backend!r}"
        )
    if backend == "jax":
        local = _jax_devices(devices)
        return KerasDistribution(local[:1] if name == "one-device" else local)
    if devices not in (None, 1):
        raise ValueError(
            f"On the {backend} backend keras-dla train runs on one device; use KERAS_BACKEND=jax or tensorflow "
            f"for several. Received: devices={devices}"
        )
    return KerasDistribution([f"{backend}:0"])


def has_gpu():
    """Whether the backend Keras runs on sees a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.local_devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def make_strategy(name="auto", devices=None):
    """The strategy and the parsed TF_CONFIG (None unless multi-worker).

    On TensorFlow a `tf.distribute` strategy: `"auto"` is multi-worker when TF_CONFIG is set, else MirroredStrategy
    over every local GPU (or every logical CPU device when there is no GPU). On JAX and PyTorch a
    `KerasDistribution`: every local device (`devices` of them) on JAX, one device on PyTorch.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy; expected one of {STRATEGIES}. Received: strategy={name!r}")
    if keras.backend.backend() != "tensorflow":
        return _keras_distribution(name, devices), None
    if name == "auto":
        name = "multiworker" if os.environ.get("TF_CONFIG") else "mirrored"
    tf_config = parse_tf_config() if name == "multiworker" else None
    configure_devices(devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy(), tf_config
    local = _local_devices()
    if name == "one-device":
        return tf.distribute.OneDeviceStrategy(local[0]), None
    if len(local) > 1 and "GPU" not in local[0]:
        # Logical CPU devices: all-reduce by copying to one device (NCCL is for GPUs).
        return tf.distribute.MirroredStrategy(local, cross_device_ops=tf.distribute.ReductionToOneDevice()), None
    return tf.distribute.MirroredStrategy(local), None


# ----------------------------------------------------------------------------------------------------------------
# Schedules


@keras.saving.register_keras_serializable(package="keras_dla")
class AuthorsSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The authors' per-step learning rates: step (x0.1 every quarter), poly (power 0.9) or cosine."""

    def __init__(self, kind, lr, total_steps, step_every=None):
        self.kind, self.lr, self.total_steps = kind, float(lr), int(total_steps)
        self.step_every = int(step_every or max(self.total_steps // STEPS_PER_DECAY, 1))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        progress = ops.minimum(step / float(self.total_steps), 1.0)
        if self.kind == "step":
            return self.lr * ops.power(STEP_FACTOR, ops.floor(step / float(self.step_every)))
        if self.kind == "poly":
            return self.lr * ops.power(1.0 - progress, POLY_POWER)
        return self.lr * 0.5 * (1.0 + ops.cos(math.pi * progress))

    def get_config(self):
        return dict(kind=self.kind, lr=self.lr, total_steps=self.total_steps, step_every=self.step_every)


def learning_rate_schedule(kind, lr, total_steps, step_every=None):
    """A `LearningRateSchedule` of the authors: `"step"`, `"poly"` or `"cosine"` over `total_steps`."""
    if kind not in SCHEDULES:
        raise ValueError(f"Unknown schedule; expected one of {SCHEDULES}. Received: schedule={kind!r}")
    return AuthorsSchedule(kind, lr, total_steps, step_every)


# ----------------------------------------------------------------------------------------------------------------
# Models, losses, metrics


def classification_models():
    return sorted(MODEL_CONFIGS)


def segmentation_models():
    """DLA-Up names: `<backbone>up` for each DLA backbone (e.g. `dla34up`)."""
    return [f"{name}up" for name in classification_models()]


def _backbone_of(model):
    return model[: -len("up")] if model.endswith("up") else model


def epoch_steps(config, num_examples):
    """`(train steps per epoch, steps per graph call)`: an epoch is a whole number of graph calls.

    Keras runs `steps_per_execution` steps per call, so an epoch of 187 steps at 10 per call would run 190 and
    end the learning-rate schedule early. Without `steps_per_epoch`, an epoch is the number of whole batches
    rounded down to a multiple of `steps_per_execution` (the data are shuffled and repeated, so no example is
    left out for good), or all of them in one call when there are fewer.
    """
    per_call = config.steps_per_execution
    if config.steps_per_epoch:
        return config.steps_per_epoch, per_call
    steps = max(num_examples // config.batch_size, 1)
    if steps < per_call:
        return steps, steps
    return steps - steps % per_call, per_call


def validate(config):
    """Argument checks that need no data and no TensorFlow devices; raise before anything is built."""
    if config.task not in TASKS:
        raise ValueError(f"Unknown task; expected one of {TASKS}. Received: task={config.task!r}")
    names = classification_models() if config.task == "classification" else segmentation_models()
    if config.model not in names and not (config.task == "segmentation" and config.model in classification_models()):
        raise ValueError(f"Unknown model for {config.task}; expected one of {names}. Received: model={config.model!r}")
    for field in ("epochs", "batch_size"):
        value = getattr(config, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{field}` should be a positive integer. Received: {field}={value!r}")
    if not isinstance(config.steps_per_execution, int) or config.steps_per_execution < 1:
        raise ValueError(
            "`steps_per_execution` should be a positive integer. "
            f"Received: steps_per_execution={config.steps_per_execution!r}"
        )
    for field in ("steps_per_epoch", "validation_steps", "limit", "backup_every", "image_size"):
        value = getattr(config, field)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"`{field}` should be a positive integer. Received: {field}={value!r}")
    if config.steps_per_epoch and config.steps_per_epoch % config.steps_per_execution:
        raise ValueError(
            "`steps_per_epoch` should be a multiple of `steps_per_execution` (Keras runs whole graph calls). "
            f"Received: steps_per_epoch={config.steps_per_epoch}, steps_per_execution={config.steps_per_execution}"
        )
    if config.lr is not None and not (isinstance(config.lr, (int, float)) and config.lr > 0):
        raise ValueError(f"`lr` should be a positive number. Received: lr={config.lr!r}")
    if config.schedule is not None and config.schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule; expected one of {SCHEDULES}. Received: schedule={config.schedule!r}")
    if not (isinstance(config.label_smoothing, (int, float)) and 0 <= config.label_smoothing < 1):
        raise ValueError(f"`label_smoothing` should be in [0, 1). Received: label_smoothing={config.label_smoothing!r}")
    if config.label_smoothing and config.task != "classification":
        raise ValueError(
            f"`label_smoothing` applies to classification only. Received: label_smoothing={config.label_smoothing!r}"
        )
    if config.augment is not None and config.augment not in AUGMENTS.get(config.task, ()):
        raise ValueError(
            f"Unknown augmentation for {config.task}; expected one of {AUGMENTS.get(config.task)}. "
            f"Received: augment={config.augment!r}"
        )
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer; expected one of {OPTIMIZERS}. Received: optimizer={config.optimizer!r}")
    if config.strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy; expected one of {STRATEGIES}. Received: strategy={config.strategy!r}")
    if config.weights not in ("none", "imagenet") and not os.path.isfile(str(config.weights)):
        raise ValueError(
            f"`weights` should be 'none', 'imagenet' or an existing weights file. Received: weights={config.weights!r}"
        )
    if config.down_ratio not in (2, 4, 8, 16):
        raise ValueError(f"`down_ratio` should be 2, 4, 8 or 16. Received: down_ratio={config.down_ratio!r}")
    if config.image_size is not None and config.image_size < MIN_INPUT_SIZE:
        raise ValueError(
            f"`image_size` should be at least {MIN_INPUT_SIZE} (DLA downsamples by 32). "
            f"Received: image_size={config.image_size}"
        )
    if not (isinstance(config.momentum, (int, float)) and 0 <= config.momentum <= 1):
        raise ValueError(f"`momentum` should be in [0, 1]. Received: momentum={config.momentum!r}")
    if not (isinstance(config.weight_decay, (int, float)) and config.weight_decay >= 0):
        raise ValueError(f"`weight_decay` should be 0 or more. Received: weight_decay={config.weight_decay!r}")
    checks.check_output(config.output, "folder", what="`output`")


@keras.saving.register_keras_serializable(package="keras_dla")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels smoothed towards the uniform distribution by `label_smoothing`.

    Keras' `SparseCategoricalCrossentropy` has no label smoothing; this is `categorical_crossentropy` of the
    smoothed one-hot labels, and with `label_smoothing=0` the sparse cross-entropy itself.
    """

    def __init__(self, label_smoothing=0.0, from_logits=False, name="sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        labels = ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred)[:-1])
        return keras.losses.categorical_crossentropy(
            ops.one_hot(labels, classes, dtype=y_pred.dtype),
            y_pred,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "from_logits": self.from_logits}


def build_classifier(model, classes, input_shape, weights):
    """A DLA classifier with a `classes`-way softmax; `weights` is "none", "imagenet" or a file."""
    backbone_weights = None if weights == "none" or str(weights).endswith(".weights.h5") else weights
    if backbone_weights is not None and input_shape[-1] != 3:
        raise ValueError(
            f"Pretrained backbones expect RGB images; the data set has {input_shape[-1]} channel(s). "
            f"Received: weights={weights!r}"
        )
    if backbone_weights == "imagenet" and classes == 1000:
        net = DLA(model, weights="imagenet", input_shape=input_shape)
    elif backbone_weights is not None:
        # The ImageNet (or converted) backbone with a new `fc` for this data set's classes.
        base = DLA(model, include_top=False, pooling="avg", weights=backbone_weights, input_shape=input_shape)
        x = keras.layers.Dense(classes, name="fc")(base.output)
        x = keras.layers.Activation("softmax", dtype="float32", name="predictions")(x)
        net = keras.Model(base.input, x, name=model)
    else:
        net = DLA(model, weights=None, input_shape=input_shape, classes=classes)
    if str(weights).endswith(".weights.h5"):
        convert.load_weights(net, weights)  # a file that does not fit gets one sentence, not Keras' dump
    return net


def build_segmenter(model, classes, input_shape, weights, down_ratio):
    """A DLA-Up model (`keras_dla.models.dla_up.DLAUp`) on the DLA backbone named by `model` (`dla34up` or `dla34`)."""
    try:
        from keras_dla.models.dla_up import DLAUp
    except ImportError as e:
        raise ValueError(
            f"Segmentation needs keras_dla.models.dla_up, which this installation lacks. Received: model={model!r}"
        ) from e
    backbone_weights = None if weights == "none" or str(weights).endswith(".weights.h5") else weights
    net = DLAUp(
        backbone=_backbone_of(model),
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


def segmentation_loss_and_metrics(classes, from_logits):
    """`keras_dla.training.segmentation`'s 255-ignoring cross-entropy and mean IoU, and the labelled-pixel accuracy."""
    from keras_dla.training import segmentation

    loss = segmentation.SegmentationCrossEntropy(from_logits=from_logits)
    return loss, [segmentation.SegmentationMeanIoU(classes, name="mean_iou"), _pixel_accuracy()]


def _pixel_accuracy():
    def pixel_accuracy(y_true, y_pred):
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        valid = ops.cast(ops.not_equal(y_true, 255), "float32")
        hit = ops.cast(ops.equal(y_true, ops.cast(ops.argmax(y_pred, axis=-1), "int32")), "float32")
        return ops.sum(hit * valid) / ops.maximum(ops.sum(valid), 1.0)

    return keras.metrics.MeanMetricWrapper(pixel_accuracy, name="pixel_accuracy")


# ----------------------------------------------------------------------------------------------------------------
# The run


# Settings that may change between a run and its restart: they do not change what is trained (the batch size is
# global, so a run may resume on another number of devices).
RESTART_FREE = (
    "verbose",
    "output",
    "backup_every",
    "validation_steps",
    "data_dir",
    "devices",
    "strategy",
    "jit",
    "steps_per_execution",
)


def check_resumable(config):
    """A run folder resumes only the run that made it: other settings there are an error, before training.

    Returns whether the folder holds an attempt with nothing to resume (a config.json but no backup: killed
    before its first backup): any settings are then accepted, and `train` discards what the attempt left.
    """
    path = os.path.join(config.output, "config.json")
    if not os.path.isfile(path):
        return False
    if not run_folder.has_backup(config.output):
        return True
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"The output folder's config.json is damaged ({e}), so its run cannot be resumed; choose another "
            f"--output. Received: output={config.output!r}"
        ) from None
    if not isinstance(previous, dict):
        raise ValueError(
            "The output folder's config.json holds no run settings, so its run cannot be resumed; choose another "
            f"--output. Received: output={config.output!r}"
        )
    current = dataclasses.asdict(config)
    changed = {k: v for k, v in current.items() if k not in RESTART_FREE and previous.get(k, v) != v}
    if changed:
        raise ValueError(
            f"The output folder holds a run with other settings ({', '.join(sorted(changed))}); restart it with "
            f"the same command or choose another --output. Received: {changed}"
        )
    return False


def _build_on_local_batch(model, strategy):
    """Works around Keras 3's TF trainer under MultiWorkerMirroredStrategy.

    Before the first step, `fit` and `evaluate` build the metrics symbolically from one data batch that they first
    all-reduce eagerly (`strategy.reduce("MEAN", batch)`), which the collective ops of MultiWorkerMirroredStrategy
    refuse ("Attempt to convert a value (PerReplica...) to a Tensor"). The build needs only shapes and dtypes, so
    this instance builds from one replica's local batch instead.
    """
    original = getattr(model, "_maybe_symbolic_build", None)
    if original is None:  # a Keras without the step this works around
        return

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(local, next(batches))
                break
        return original(data_batch=data_batch)

    model._maybe_symbolic_build = build


def _mean_scalars_across_workers():
    """Works around Keras 3's TF trainer under MultiWorkerMirroredStrategy, second part.

    The train and test steps average each replica's logs with `strategy.reduce("MEAN", value, axis=0)` in
    multi-worker mode, and the logs are scalars, which have no axis 0 ("Invalid reduction dimension 0 for input
    with 0 dimensions"). This replaces that one case with a reduction over replicas only (`axis=None`); every
    other reduction, and every other strategy, goes to Keras' own function.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = getattr(tf_trainer, "reduce_per_replica", None)
    is_multi_worker = getattr(tf_trainer, "_collective_all_reduce_multi_worker", None)
    if original is None or is_multi_worker is None or getattr(original, "keras_dla_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.keras_dla_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def make_optimizer(config, learning_rate):
    """`config.optimizer`: SGD with momentum (the authors') or AdamW; both with Keras' decoupled weight decay."""
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
    return keras.optimizers.SGD(learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)


def default_lr(config):
    if config.optimizer == "adamw":
        return 1e-3 * config.batch_size / 128
    if config.task == "classification":
        return 0.1 * config.batch_size / 256
    return 0.01 * config.batch_size / 16


def train(config):
    """Trains as `config` says; returns a dict of the final figures (also written to DIR/run.json).

    Every check (names, numbers, data, labels, TF_CONFIG, batch size vs. replicas) happens before the first
    step. A run whose DIR holds a backup resumes from it; a run that had finished trains no further epoch.
    """
    validate(config)
    strategy, tf_config = make_strategy(config.strategy, config.devices)
    replicas = strategy.num_replicas_in_sync
    on_tensorflow = keras.backend.backend() == "tensorflow"
    if on_tensorflow and config.jit and tf_config is None and replicas > 1 and not has_gpu():
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
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16" if has_gpu() else "mixed_bfloat16")

    multiworker = tf_config is not None
    if config.task == "classification":
        size = config.image_size or (32 if config.dataset == "fashion_mnist" else 224)
        load = datasets.classification_data
        data_args = dict(image_size=size, recipe=config.augment)
        monitor = "val_accuracy"
    else:
        size = config.image_size or (64 if config.dataset == "fashion_mnist_scenes" else 512)
        load = datasets.segmentation_data
        data_args = dict(crop_size=size, classes=config.classes)
        if config.augment == "flip":
            data_args.update(scale=None, max_rotation=0.0)
        monitor = "val_mean_iou"
    common = dict(batch_size=config.batch_size, seed=config.seed, data_dir=config.data_dir, limit=config.limit)
    train_ds, info = load(config.dataset, split="train", **data_args, **common)
    # Replicas must see equal shares of every batch: a partial last validation batch is dropped when distributed.
    distributed = multiworker or replicas > 1
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
    steps, steps_per_execution = epoch_steps(config, info.num_examples)
    schedule_name = config.schedule or ("step" if config.task == "classification" else "poly")
    lr = config.lr or default_lr(config)
    unresumed = check_resumable(config)
    fresh = not os.path.lexists(config.output)

    with strategy.scope():
        input_shape = (size, size, info.channels)
        if config.task == "classification":
            model = build_classifier(config.model, info.num_classes, input_shape, config.weights)
            loss = SparseSmoothedCrossentropy(config.label_smoothing)
            metrics = ["accuracy"]
        else:
            model = build_segmenter(config.model, info.num_classes, input_shape, config.weights, config.down_ratio)
            loss, metrics = segmentation_loss_and_metrics(info.num_classes, not _outputs_probabilities(model))
        schedule = learning_rate_schedule(schedule_name, lr, steps * config.epochs)
        optimizer = make_optimizer(config, schedule)
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            jit_compile=bool(config.jit),
            steps_per_execution=steps_per_execution,
        )
    if multiworker:
        _build_on_local_batch(model, strategy)
        _mean_scalars_across_workers()

    # The run folder is made only now, after every check and the model build (a bad weights file included).
    run_dir = run_folder.RunDirectory(config.output, tf_config, is_chief(tf_config))
    if unresumed and run_dir.chief:
        run_folder.discard_attempt(run_dir.output)
    try:
        callbacks, nan = run_folder.make_callbacks(run_dir, monitor, "max", config.backup_every)
        if run_dir.chief:
            files.write_text(run_dir.path("config.json"), json.dumps(dataclasses.asdict(config), indent=2))
        history = model.fit(
            train_ds,
            epochs=config.epochs,
            steps_per_epoch=steps,
            validation_data=val_ds,
            validation_steps=config.validation_steps,
            callbacks=callbacks,
            verbose=config.verbose,
        )
    except BaseException as e:
        if fresh:
            run_dir.discard_if_unresumable()
        mask_error = datasets.mask_label_error(e, config.dataset)
        if mask_error is not None:
            raise ValueError(mask_error) from e
        if isinstance(e, tf.errors.InvalidArgumentError) and "Decode" in e.message:
            reason = checks.op_error_reason(e)
            image_files = info.files + val_info.files
            damaged, checked = datasets.find_undecodable(image_files)
            if damaged:
                where = f": {damaged}"
            elif image_files:
                where = f"; a damaged file that starts like an image? The first {checked} of {len(image_files)} decode"
            else:
                where = "; a damaged file that starts like an image?"
            raise ValueError(
                f"An image of the data set could not be decoded during training ({reason}){where}. "
                f"Received: dataset={config.dataset!r}"
            ) from e
        raise
    rows = run_folder.read_history(run_dir.path("history.csv"))
    result = {
        "task": config.task,
        "model": config.model,
        "dataset": config.dataset,
        "replicas": replicas,
        "strategy": "MultiWorkerMirroredStrategy"
        if multiworker
        else (strategy.name if isinstance(strategy, KerasDistribution) else type(strategy).__name__),
        "backend": keras.backend.backend(),
        "epochs_completed": len(rows),
        "epochs_this_run": len(history.epoch),
        "final": rows[-1] if rows else {},
        "best": {monitor: max((r[monitor] for r in rows if monitor in r), default=None)},
        "stopped": nan.message,
    }
    if run_dir.chief:
        if not nan.message and nan.finite.allows(model, "final.weights.h5"):
            run_folder.save_weights_atomically(model, run_dir.path("final.weights.h5"))
        files.write_text(run_dir.path("run.json"), json.dumps(result, indent=2))
    run_dir.cleanup()
    if nan.message:
        raise FloatingPointError(nan.message)
    result["model_object"] = model
    return result
