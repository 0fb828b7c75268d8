"""What a training run depends on: `TrainConfig`, its checks, the steps of an epoch and when a run folder resumes.

`validate(config)` runs before anything is built (it needs no data and no devices); `check_resumable(config)`
compares the settings with those of the run folder `config.output` holds.
"""

import dataclasses
import json
import os

from keras_dla import checks
from keras_dla.models.dla import MIN_INPUT_SIZE, MODEL_CONFIGS, resolve_architecture
from keras_dla.training import run_folder
from keras_dla.training.choices import AUGMENTS, OPTIMIZERS, SCHEDULES, STRATEGIES, TASKS

DOWN_RATIOS = (2, 4, 8, 16)  # DLA-Up's output strides
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; `keras-dla train` fills it from its flags."""

    task: str = "classification"
    model: str = "dla34"  # a variant (`dla34`, `dla34up`) or a JSON file of architecture arguments
    dataset: str = "fashion_mnist"
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 64  # global: split over the replicas
    lr: float | None = None  # default: `default_lr`
    schedule: str | None = None  # default: "step" (classification), "poly" (segmentation)
    weights: str = "none"  # "none" | "imagenet" | a weights file
    output: str = "runs/dla"
    strategy: str = "auto"
    devices: int | None = None
    mixed_precision: bool = False
    jit: bool = False
    steps_per_execution: int = 1  # train steps per graph call: fewer calls, less per-step overhead
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


ARCHITECTURE_SUFFIX = ".json"  # `--model my_dla.json`: a file of `keras_dla.DLA`'s architecture arguments


def classification_models():
    return sorted(MODEL_CONFIGS)


def is_architecture_file(model):
    """Whether `model` names a JSON file of architecture arguments rather than a variant."""
    return str(model).endswith(ARCHITECTURE_SUFFIX)


def read_architecture(path):
    """The architecture arguments (levels, channels, block, ...) of `keras_dla.DLA` in the JSON file `path`, checked.

    For segmentation they are DLA-Up's backbone. For example `{"levels": [1, 1, 1, 2, 1, 1], "channels":
    [8, 16, 16, 32, 32, 64], "block": "basic"}`; the arguments left out take DLA-34's values.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(
            f"`model` should be a DLA variant name or an existing JSON file of architecture arguments ({e.strerror})."
            f" Received: model={path!r}"
        ) from None
    try:
        architecture = json.loads(text)
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as e:
        raise ValueError(f"The architecture file does not parse as JSON ({e}). Received: model={path!r}") from None
    if not isinstance(architecture, dict):
        raise ValueError(
            "The architecture file should hold a JSON object of `keras_dla.DLA`'s architecture arguments (levels, "
            f"channels, block, ...). Received: model={path!r}"
        )
    try:
        resolve_architecture(**architecture)  # unknown keys and bad values: one sentence each
    except (TypeError, ValueError) as e:
        raise ValueError(f"{e} (the architecture file {path})") from None
    return architecture


def architecture_of(model):
    """What the builders take for `model`: `{"variant": name}` for a variant (`dla34`, `dla34up`), or the
    architecture arguments of a JSON file."""
    if is_architecture_file(model):
        return read_architecture(model)
    return {"variant": backbone_of(model)}


def segmentation_models():
    """DLA-Up names: `<backbone>up` for each DLA backbone (e.g. `dla34up`)."""
    return [f"{name}up" for name in classification_models()]


def backbone_of(model):
    """The DLA backbone of a segmentation model name: `dla34up` and `dla34` both name `dla34`."""
    return model[: -len("up")] if model.endswith("up") else model


def default_lr(config):
    """The learning rate when `config.lr` is None: the authors' linear scaling with the batch size for SGD
    (0.1 per 256 images for classification, 0.01 per 16 for segmentation), 1e-3 per 128 images for AdamW."""
    if config.optimizer == "adamw":
        return 1e-3 * config.batch_size / 128
    if config.task == "classification":
        return 0.1 * config.batch_size / 256
    return 0.01 * config.batch_size / 16


def default_schedule(config):
    """The schedule when `config.schedule` is None: the authors' step (classification) or poly (segmentation)."""
    return config.schedule or ("step" if config.task == "classification" else "poly")


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
    """Argument checks that need no data and no devices; raise before anything is built.

    Returns a copy of `config` with its numbers and flags as Python's own types (NumPy's are accepted), so that
    config.json can hold it.
    """
    checks.one_of("task", config.task, TASKS, what="task")
    if is_architecture_file(config.model):
        read_architecture(config.model)
    elif not (config.task == "segmentation" and config.model in classification_models()):  # a backbone name
        names = classification_models() if config.task == "classification" else segmentation_models()
        checks.one_of("model", config.model, names, what=f"model for {config.task}")
    checked = {}
    for field in ("epochs", "batch_size", "steps_per_execution"):
        checked[field] = checks.positive_int(field, getattr(config, field))
    for field in ("steps_per_epoch", "validation_steps", "limit", "backup_every", "image_size", "devices", "classes"):
        checked[field] = checks.positive_int(field, getattr(config, field), optional=True)
    if checked["steps_per_epoch"] and checked["steps_per_epoch"] % checked["steps_per_execution"]:
        raise ValueError(
            "`steps_per_epoch` should be a multiple of `steps_per_execution` (Keras runs whole graph calls). "
            f"Received: steps_per_epoch={config.steps_per_epoch}, steps_per_execution={config.steps_per_execution}"
        )
    if config.image_size is not None and config.image_size < MIN_INPUT_SIZE:
        raise ValueError(
            f"`image_size` should be at least {MIN_INPUT_SIZE} (DLA downsamples by 32). "
            f"Received: image_size={config.image_size}"
        )
    if config.lr is not None:
        checked["lr"] = checks.real("lr", config.lr, low=0, low_open=True)
    checked["label_smoothing"] = checks.real("label_smoothing", config.label_smoothing, low=0, high=1, high_open=True)
    if config.label_smoothing and config.task != "classification":
        raise ValueError(
            f"`label_smoothing` applies to classification only. Received: label_smoothing={config.label_smoothing!r}"
        )
    checked["momentum"] = checks.real("momentum", config.momentum, low=0, high=1)
    checked["weight_decay"] = checks.real("weight_decay", config.weight_decay, low=0)
    checked["down_ratio"] = checks.one_of("down_ratio", config.down_ratio, DOWN_RATIOS)
    for field in ("mixed_precision", "jit"):
        checked[field] = checks.flag(field, getattr(config, field))
    if config.schedule is not None:
        checks.one_of("schedule", config.schedule, SCHEDULES, what="schedule")
    if config.augment is not None:
        checks.one_of("augment", config.augment, AUGMENTS[config.task], what=f"augmentation for {config.task}")
    checks.one_of("optimizer", config.optimizer, OPTIMIZERS, what="optimizer")
    checks.one_of("strategy", config.strategy, STRATEGIES, what="strategy")
    if config.weights not in ("none", "imagenet") and not os.path.isfile(str(config.weights)):
        raise ValueError(
            f"`weights` should be 'none', 'imagenet' or an existing weights file. Received: weights={config.weights!r}"
        )
    checks.check_output(config.output, "folder", what="`output`")
    return dataclasses.replace(config, **checked)


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
