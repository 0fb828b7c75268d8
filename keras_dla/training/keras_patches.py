"""Two patches of Keras 3's TensorFlow trainer, which `train` applies under MultiWorkerMirroredStrategy only.

Keras' TF trainer (`keras/src/backend/tensorflow/trainer.py`) reduces values across replicas in two ways that
the collective ops of MultiWorkerMirroredStrategy refuse, so a multi-worker `fit` fails before or at its first
step without them:

- `build_on_local_batch(model, strategy)` replaces one model's `_maybe_symbolic_build`, which builds the metrics
  from a data batch that it first all-reduces eagerly;
- `mean_scalars_across_workers()` replaces the trainer module's `reduce_per_replica`, which averages each
  replica's scalar logs along an axis 0 they do not have.

Each leaves Keras as it is when the function it replaces is missing (a Keras without that step), and every other
strategy to Keras' own code.
"""

import keras
import tensorflow as tf


def build_on_local_batch(model, strategy):
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


def mean_scalars_across_workers():
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
