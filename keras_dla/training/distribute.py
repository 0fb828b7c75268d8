"""Where a training run runs: the devices, and the strategy that spreads the batches over them.

On TensorFlow a `tf.distribute` strategy (one device, MirroredStrategy over the local GPUs or logical CPU devices,
or MultiWorkerMirroredStrategy from `TF_CONFIG`, whose every field is checked first); on JAX
`keras.distribution.DataParallel` over the local devices, the CPU split into host devices where there is no GPU;
on PyTorch one device. `make_strategy` returns the strategy and the parsed TF_CONFIG.
"""

import contextlib
import json
import os

import keras
import tensorflow as tf

from keras_dla import checks
from keras_dla.training.choices import STRATEGIES


def configure_devices(devices):
    """`--devices N`: the first N GPUs, or the CPU split into N logical devices where there is no GPU.

    Must run before TensorFlow initialises its devices (before any tensor is made).
    """
    if devices is None:
        return
    devices = checks.positive_int("devices", devices)
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
                # Each replica runs its ops on its own share of the cores, all replicas at once, rather than
                # every replica's ops queueing for one pool of threads over all the cores.
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
    devices = checks.positive_int("devices", devices, optional=True)
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
    name = checks.one_of("strategy", name, STRATEGIES, what="strategy")
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
