"""The fastest documented inference path: batch norm folded into the convolutions.

A trained DLA spends a large share of its CPU inference time in batch norm: Keras 3 computes it as separate
multiply and add passes over every feature map. In inference a batch norm is an affine map per channel, so it
folds exactly into the convolution before it (scaled kernel, new bias), and (on TensorFlow) the graph optimiser then
fuses each convolution with its bias, residual add and ReLU into a single oneDNN call.

    model = keras_dla.DLA34(weights="imagenet")
    fast = keras_dla.inference_model(model)   # same outputs within float32 rounding, no BatchNormalization left
    probabilities = fast.predict(images)      # or fast(images), or fast.serve(images) at a fixed signature

On TensorFlow `serve` is a frozen graph, on JAX a jitted function, on PyTorch a call without autograd.
`benchmarks/performance.py` measures this path against `model.predict`, TFLite, timm and ONNX Runtime.
"""

import contextlib
import sys

import keras
import numpy as np
from keras.src.models.functional import Functional
from keras.src.utils import module_utils

from keras_dla import checks
from keras_dla.models import fast_paths


def _producer(layer):
    """The layer whose output is the (single) input of `layer`'s only call, or None."""
    if len(layer._inbound_nodes) != 1:
        return None
    inputs = layer._inbound_nodes[0].input_tensors
    if len(inputs) != 1:
        return None
    return inputs[0]._keras_history.operation


def foldable_pairs(model):
    """{batch-norm layer name: conv layer} for every Conv2D whose only consumer is a channel-axis batch norm."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        conv = _producer(layer)
        if not isinstance(conv, keras.layers.Conv2D) or len(conv._outbound_nodes) != 1 or len(conv._inbound_nodes) != 1:
            continue
        channel_axis = -1 if conv.data_format == "channels_last" else 1
        axis = layer.axis if isinstance(layer.axis, int) else None
        if axis is None or axis % 4 != channel_axis % 4:
            continue
        pairs[layer.name] = conv
    return pairs


def _folded_weights(conv, bn):
    """Kernel and bias of `conv` followed by `bn` in inference mode, computed in float64."""
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float64)
    bias = keras.ops.convert_to_numpy(conv.bias).astype(np.float64) if conv.use_bias else 0.0
    mean = keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
    variance = keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
    gamma = keras.ops.convert_to_numpy(bn.gamma).astype(np.float64) if bn.scale else 1.0
    beta = keras.ops.convert_to_numpy(bn.beta).astype(np.float64) if bn.center else 0.0
    scale = gamma / np.sqrt(variance + bn.epsilon)
    dtype = conv.kernel.dtype
    return (kernel * scale).astype(dtype), ((bias - mean) * scale + beta).astype(dtype)


def _is_functional(model):
    return isinstance(model, Functional) and not isinstance(model, keras.Sequential)


def _check_functional(model, caller):
    if not _is_functional(model):
        raise ValueError(
            f"`{caller}` needs a functional keras Model (as the keras_dla builders return). "
            f"Received: model={type(model).__name__}"
        )


@contextlib.contextmanager
def _tensorflow_left_unimported():
    """Copies layer configs without importing TensorFlow on the JAX and PyTorch backends.

    Keras' `serialize_keras_object` (keras/src/saving/serialization_lib.py) asks `tf.available` (a lazy import of
    TensorFlow) before testing a value for `tf.TensorShape` / `tf.DType` / `tf.TypeSpec`, so every `get_config`
    imports TensorFlow wherever it is installed. While TensorFlow is not imported no value can be one of its
    types, so the answer "not available" changes no config; it is given only for the duration of the copy.
    """
    lazy = module_utils.tensorflow
    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules or lazy._available is not None:
        yield
        return
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = None


def fold_batch_norms(model):
    """A copy of the functional `model` with every foldable batch norm merged into the Conv2D before it.

    The copy has the same layer names (less the folded batch norms), inputs and outputs; the folded convolutions
    gain a bias. It computes what `model(x, training=False)` computes, up to float rounding. Nested functional
    models (a DLA-Up's backbone) are folded too. Other layers keep their weights. Every layer is a plain Keras one,
    with the TensorFlow fast paths attached (`keras_dla.models.fast_paths`), as keras_dla's builders make them.
    """
    return _fold(model, policy=None, outermost=True)


def _output_layers(model):
    return {tensor._keras_history.operation.name for tensor in keras.tree.flatten(model.outputs)}


def _computes(layer):
    """Whether `layer` is a Keras layer with a dtype policy of its own (not an input or an op such as `take`)."""
    return isinstance(layer, keras.layers.Layer) and not isinstance(layer, keras.layers.InputLayer)


def _fold(model, policy, outermost):
    """`fold_batch_norms`; with `policy` ("mixed_bfloat16") every layer computes under it, except, in the
    outermost model, the layers that produce its outputs, which keep their own dtype (float32 outputs)."""
    _check_functional(model, "fold_batch_norms")
    pairs = foldable_pairs(model)
    folded_convs = {conv.name: bn_name for bn_name, conv in pairs.items()}
    keep_dtype = _output_layers(model) if outermost else set()

    def clone(layer):
        if _is_functional(layer):
            return _fold(layer, policy, outermost=False)
        config = layer.get_config()
        if layer.name in folded_convs:
            config["use_bias"] = True
            config["bias_initializer"] = "zeros"
        if policy is not None and _computes(layer) and layer.name not in keep_dtype:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if layer.name in pairs:  # a folded batch norm: its convolution already applies it
            return args[0]
        return layer(*args, **kwargs)

    with _tensorflow_left_unimported():
        folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    originals = {layer.name: layer for layer in model.layers}
    for layer in folded.layers:
        if not layer.weights:  # input layers (renamed by the clone when auto-named), activations, adds
            continue
        source = originals[layer.name]
        if layer.name in folded_convs:
            layer.set_weights(list(_folded_weights(source, originals[folded_convs[layer.name]])))
        elif not isinstance(layer, keras.Model):
            layer.set_weights(source.get_weights())
    return fast_paths.attach(folded)


DTYPES = ("float32", "bfloat16")


def inference_model(model, *, dtype="float32", jit_compile=False):
    """The fastest documented inference path for a keras_dla model: `model` with its batch norms folded.

    Args:
        model: a functional keras_dla model (classifier, backbone or DLA-Up), trained or with pretrained weights.
        dtype: `"float32"`, or `"bfloat16"` to compute in bfloat16 inside (Keras' `mixed_bfloat16` policy: the
            weights stay float32 and every layer casts them; the layers that give the outputs compute in float32),
            with float32 inputs and outputs. Worth it where the CPU has bfloat16 arithmetic (AVX-512 BF16, AMX) or
            on a GPU; elsewhere it is emulated and slower than float32.
        jit_compile: compile `predict` (and on TensorFlow `serve`) with XLA. On a CPU TensorFlow's oneDNN graph
            path is the faster (docs/performance.md), so the default is False; on a GPU XLA usually wins. JAX
            always compiles `serve`.

    Returns:
        A new `keras.Model` with the same inputs, outputs and layer names less the folded batch norms, compiled
        for `predict`. Its `serve` attribute is the lowest-overhead call of the backend over a batch of any size,
        with the weights taken as constants (a snapshot taken here: later changes to the model's weights do not
        reach it), returning backend tensors: on TensorFlow a graph with the weights frozen in, as SavedModel
        export would trace it; on JAX a jitted function; on PyTorch the model called without autograd.
    """
    jit_compile = checks.flag("jit_compile", jit_compile)
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` should be one of {', '.join(map(repr, DTYPES))}. Received: dtype={dtype!r}")
    _check_functional(model, "inference_model")
    folded = _fold(model, policy="mixed_bfloat16" if dtype == "bfloat16" else None, outermost=True)
    folded.compile(jit_compile=jit_compile)
    folded.trainable = False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        folded.serve = _tensorflow_serve(folded, jit_compile)
    elif backend == "jax":
        folded.serve = _jax_serve(folded)
    elif backend == "torch":
        folded.serve = _torch_serve(folded)
    else:
        raise ValueError(f"`inference_model` supports the tensorflow, jax and torch backends. Received: {backend!r}")
    return folded


def _check_inputs(inputs, shapes):
    """Raises unless `inputs` are one array per model input, each of a compatible shape."""
    if len(inputs) != len(shapes):
        raise ValueError(f"`serve` takes {len(shapes)} input(s). Received: {len(inputs)}")
    for x, shape in zip(inputs, shapes, strict=True):
        got = tuple(x.shape)
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got, strict=True)):
            raise ValueError(f"`serve` takes inputs of shape {shape} (None: any size). Received: shape {got}")


def _input_shapes(model):
    return [(None,) + tuple(t.shape[1:]) for t in model.inputs]


def _jax_serve(folded):
    import jax

    shapes = _input_shapes(folded)
    dtypes = [t.dtype for t in folded.inputs]
    trainable = [v.value for v in folded.trainable_variables]
    non_trainable = [v.value for v in folded.non_trainable_variables]

    @jax.jit
    def run(*inputs):
        outputs, _ = folded.stateless_call(
            trainable, non_trainable, inputs[0] if len(inputs) == 1 else list(inputs), training=False
        )
        return outputs

    def serve(*inputs):
        _check_inputs(inputs, shapes)
        return run(*(jax.numpy.asarray(x, dtype) for x, dtype in zip(inputs, dtypes, strict=True)))

    return serve


def _torch_serve(folded):
    import torch

    shapes = _input_shapes(folded)
    dtypes = [t.dtype for t in folded.inputs]

    def serve(*inputs):
        _check_inputs(inputs, shapes)
        tensors = [keras.ops.convert_to_tensor(x, dtype) for x, dtype in zip(inputs, dtypes, strict=True)]
        with torch.inference_mode():
            return folded(tensors[0] if len(tensors) == 1 else tensors, training=False)

    return serve


def _tensorflow_serve(folded, jit_compile):
    import tensorflow as tf

    specs = [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype) for t in folded.inputs]
    traced = tf.function(
        lambda *inputs: folded(inputs[0] if len(inputs) == 1 else list(inputs), training=False),
        input_signature=specs,
        jit_compile=jit_compile,
        autograph=False,
    )
    return _frozen(traced.get_concrete_function())


def _frozen(concrete):
    """`concrete` with its variables turned into constants, called like a function of the model's inputs.

    With constant kernels TensorFlow's oneDNN convolutions keep their kernels in oneDNN's own layout between
    calls instead of reordering every kernel at every call (faster at every batch size, most at batch 1).
    """
    import tensorflow as tf

    # Not in TensorFlow's public API; it is what SavedModel-to-TFLite conversion freezes graphs with.
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete)
    structure, specs = concrete.structured_outputs, frozen.inputs

    def serve(*inputs):
        if len(inputs) != len(specs):
            raise ValueError(f"`serve` takes {len(specs)} input(s). Received: {len(inputs)}")
        tensors = [tf.convert_to_tensor(x, spec.dtype) for x, spec in zip(inputs, specs, strict=True)]
        for tensor, spec in zip(tensors, specs, strict=True):
            if not tensor.shape.is_compatible_with(spec.shape):
                raise ValueError(
                    f"`serve` takes inputs of shape {tuple(spec.shape.as_list())} (None: any size). "
                    f"Received: shape {tuple(tensor.shape)}"
                )
        outputs = frozen(*tensors)
        return tf.nest.pack_sequence_as(structure, tf.nest.flatten(outputs))

    return serve
