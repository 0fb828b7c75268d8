"""How the weights are updated: the authors' learning-rate schedules and the optimizer.

ucbdrive/dla `classify.py` divides the learning rate by 10 every 30 of its 120 ImageNet epochs ("step");
`segment.py` decays it as (1 - progress)^0.9 ("poly"); "cosine" is the half-cosine decay to 0. Both scripts
train with SGD, momentum 0.9 and weight decay 1e-4 (`keras_dla.training.config` defaults); AdamW is offered for
short runs. Keras applies the weight decay of both decoupled from the gradient.
"""

import math

import keras
from keras import ops

from keras_dla import checks
from keras_dla.training.choices import SCHEDULES

POLY_POWER = 0.9
STEP_FACTOR = 0.1
STEPS_PER_DECAY = 4  # the step schedule divides the run in 4: x0.1 every 30 of the authors' 120 ImageNet epochs


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
    kind = checks.one_of("schedule", kind, SCHEDULES, what="schedule")
    return AuthorsSchedule(kind, lr, total_steps, step_every)


def make_optimizer(config, learning_rate):
    """`config.optimizer`: SGD with momentum (the authors') or AdamW; both with Keras' decoupled weight decay."""
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
    return keras.optimizers.SGD(learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)
