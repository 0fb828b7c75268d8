"""Building a model whose weights are loaded next, without drawing the random values the load overwrites.

Inside `loaded_next()`, the layers created through `call` make their kernels and biases as zeros, while keeping
their own initializers, so that `get_config` and the saved files are what a randomly initialized build gives. On
JAX this is most of a build's time: each kernel shape compiles its own random-number program. The builders enter
it only when every weight is then loaded from a file or the pretrained cache (a load that leaves any weight
unfilled raises, so no zero is ever left in a returned model).
"""

import contextlib
import contextvars

import numpy as np
from keras import ops

_LOADED_NEXT = contextvars.ContextVar("keras_dla_loaded_next", default=False)
_INITIALIZERS = ("kernel_initializer", "bias_initializer")


@contextlib.contextmanager
def loaded_next(enabled=True):
    """While active (and `enabled`), `call` creates the random-initialized variables as zeros."""
    token = _LOADED_NEXT.set(_LOADED_NEXT.get() or bool(enabled))
    try:
        yield
    finally:
        _LOADED_NEXT.reset(token)


def _zeros(shape, dtype=None):
    try:
        return np.zeros(shape, dtype=dtype)  # no device program to compile
    except TypeError:  # a dtype NumPy lacks (bfloat16 without ml_dtypes)
        return ops.zeros(shape, dtype=dtype)


def call(layer, x):
    """`layer(x)`, creating the layer's weights as zeros inside `loaded_next()`."""
    if not _LOADED_NEXT.get():
        return layer(x)
    kept = {name: getattr(layer, name) for name in _INITIALIZERS if hasattr(layer, name)}
    for name in kept:
        setattr(layer, name, _zeros)
    try:
        return layer(x)
    finally:
        for name, initializer in kept.items():
            setattr(layer, name, initializer)
