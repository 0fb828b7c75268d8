"""Argument checks shared by the builders, data, training and export: a bad value costs one sentence.

- `positive_int(name, value)`: a positive integer (NumPy's too) as a Python int, or a ValueError naming `name`.
- `flag(name, value)`: True or False (NumPy's too) as a Python bool; `"no"` or `0` are refused rather than
  taken by their truth value.
- `one_of(name, value, choices)`: `value` when it is one of `choices`, or a ValueError that lists them.
- `real(name, value, low=..., high=...)`: a finite real number (NumPy's too) in a range, as a Python float.
- `check_output(path, kind)` refuses, with the path named, an output that cannot be made: a file where a folder
  is wanted or the other way round, a parent that is a file, a folder that cannot be written. It creates nothing.
- `check_finite(name, values)` refuses, naming `name` and the images, a float batch holding a NaN or an
  infinity: no model's answer to those means anything, and TensorFlow's fused graphs can even return finite scores.
- `op_error_reason(error)`: the reason in a TensorFlow op error, without the function, op and tf.data pipeline
  names wrapped around it, which mean nothing to someone who passed a file.
"""

import numbers
import os
import re

import numpy as np

KINDS = ("file", "folder")


def positive_int(name, value, *, optional=False):
    """`value` as a Python int when it is a positive integer (NumPy's too), else a ValueError naming `name`.

    With `optional=True`, None is accepted and returned as it is.
    """
    if optional and value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
        return int(value)
    wanted = "None or a positive integer" if optional else "a positive integer"
    raise ValueError(f"`{name}` should be {wanted}. Received: {name}={value!r}")


def flag(name, value):
    """`value` as a Python bool when it is True or False (NumPy's bools too), else a ValueError naming `name`."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"`{name}` should be True or False. Received: {name}={value!r}")


def one_of(name, value, choices, *, what=None):
    """The choice `value` equals (NumPy's scalars too), else a ValueError naming `name` and listing the choices.

    Args:
        name: the argument, as the message names it (`Received: name=value`).
        value: the value given.
        choices: the values accepted.
        what: how the message starts, "Unknown {what}; expected one of ..." (e.g. `"schedule"`); by default
            "`name` should be one of ...".
    """
    choices = tuple(choices)
    for choice in choices:
        if _same(value, choice):
            return choice
    start = f"Unknown {what}; expected" if what else f"`{name}` should be"
    raise ValueError(f"{start} one of {choices}. Received: {name}={value!r}")


def _same(value, choice):
    """`value == choice`, except that a bool equals only a bool (`True == 1` in Python) and an array nothing."""
    if isinstance(value, (bool, np.bool_)) != isinstance(choice, bool):
        return False
    try:
        return bool(value == choice)
    except (TypeError, ValueError):  # an array, whose comparison has no single truth value
        return False


def real(name, value, *, low=None, high=None, low_open=False, high_open=False):
    """`value` as a Python float when it is a finite real number (NumPy's too, not a bool) within the bounds.

    Args:
        name: the argument, as the message names it.
        value: the value given.
        low, high: the bounds, None for none.
        low_open, high_open: whether the bound itself is refused (`low_open=True, low=0`: a positive number).
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and np.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return float(value)
    if low is not None and high is not None:
        wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        wanted = ("a positive number" if low == 0 else f"more than {low:g}") if low_open else f"{low:g} or more"
    elif high is not None:
        wanted = f"less than {high:g}" if high_open else f"{high:g} or less"
    else:
        wanted = "a finite number"
    raise ValueError(f"`{name}` should be {wanted}. Received: {name}={value!r}")


def _nearest_existing(path):
    """The longest prefix of the absolute `path` that exists (the folder a `makedirs` would start from)."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


def check_output(path, kind, *, what="output"):
    """Raises ValueError when `path` cannot become an output `kind` ("file" or "folder"); returns it as given.

    Args:
        path: the output path.
        kind: `"file"` (written or replaced as a whole) or `"folder"` (created, or written into when it exists).
        what: how the path is named in the message (a flag such as `"--output"`, or `"output"`).
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` should be one of {KINDS}. Received: kind={kind!r}")
    path = os.fspath(path)
    if not path:
        raise ValueError(f"An {what} path is needed. Received: {what} {path!r}")
    full = os.path.abspath(path)
    if kind == "folder" and os.path.lexists(full) and not os.path.isdir(full):
        raise ValueError(f"{what} {path} is a file, not a folder; give a folder.")
    if kind == "file" and os.path.isdir(full):
        raise ValueError(f"{what} {path} is an existing folder; give a file path.")
    existing = _nearest_existing(full if kind == "folder" else os.path.dirname(full))
    if not os.path.isdir(existing):
        raise ValueError(f"Cannot create {what} {path}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"Cannot write {what} {path}: no permission to write in {existing}.")
    return path


def check_finite(name, values, *, what="image"):
    """Raises ValueError when the float array `values`, a batch of `what`s along its first axis, holds a NaN or
    an infinity; the message names `name`, the first items that do, and how many values of each kind.

    Integer and boolean arrays pass as they are (they cannot hold either).
    """
    values = np.asarray(values)
    if values.dtype.kind not in "fc" or np.isfinite(values).all():
        return
    batch = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(-1, 1)
    items = np.flatnonzero(~np.isfinite(batch).all(axis=1))
    shown = ", ".join(str(i) for i in items[:5]) + (", ..." if len(items) > 5 else "")
    plural = "s" if len(items) > 1 else ""
    kinds = f"{np.isnan(values).sum()} NaN, {np.isposinf(values).sum()} +inf, {np.isneginf(values).sum()} -inf"
    raise ValueError(
        f"`{name}` holds values that are not finite ({kinds}) in {what}{plural} {shown} of {len(batch)}: no "
        f"model's answer to them means anything, so none is computed; replace or drop them. Received: {name} "
        f"of shape {values.shape}"
    )


def op_error_reason(error):
    """`error.message` of a `tf.errors.OpError` cut to its reason, e.g. "Invalid PNG. Failed to initialize decoder".

    Eager ops wrap it in "{{function_node ...}} ... [Op:DecodeImage] name: "; tf.data adds "Error in user-defined
    function passed to MapDataset:1 transformation with iterator: Iterator::Root::ParallelMapV2: " and the graph
    node on a second line.
    """
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S).strip()
    text = text.splitlines()[0] if text else ""
    text = re.sub(r"^Error in user-defined function passed to .*? with iterator: \S+: ", "", text)
    return text.strip().rstrip(".") or "no reason given"
