"""What every exporter traces: the model's one image input, the model behind a uint8 input when asked, and the
`tf.TensorSpec` of its serving signature.

`keras_dla.export.tensorflow_formats` (SavedModel, TFLite) and `keras_dla.export.onnx_openvino` (ONNX, OpenVINO)
hand `export_model(...)` and `input_signature(...)` to Keras' own exporters, which trace the model with TensorFlow.
"""

import keras

from keras_dla import checks
from keras_dla.export.preprocessing import resolve_preprocess
from keras_dla.export.sidecar import INPUT_NAME


class Preprocess(keras.layers.Layer):
    """Casts uint8 pixels to float32 and applies `fn`: the preprocessing a uint8-input artefact carries."""

    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, x):
        return self.fn(keras.ops.cast(x, "float32"))


def single_input_shape(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"Export takes a Keras model. Received: model of type {type(model).__name__}")
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        raise ValueError(
            "The model has no defined inputs yet; build it on an `keras.Input` (or call it once) before exporting. "
            f"Received: model {model.name!r}"
        )
    if len(inputs) != 1:
        raise ValueError(
            f"Export supports models with exactly one image input. Received: a model with {len(inputs)} inputs"
        )
    return tuple(inputs[0].shape)


def require_tensorflow(format_name):
    """SavedModel and TFLite are TensorFlow's formats: on another backend, say which way works."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"{format_name} export runs on the TensorFlow backend. Save the weights (`model.save_weights("
            f"'model.weights.h5')`) and export them from a process with KERAS_BACKEND=tensorflow "
            f"(`keras-dla export` does this whatever KERAS_BACKEND is set). Received: backend {backend!r}"
        )


def static_shape(model, input_size, batch_size):
    """The full input shape `(batch, height, width, channels)` of the exported signature."""
    batch_size = checks.positive_int("batch_size", batch_size, optional=True)
    shape = single_input_shape(model)
    if len(shape) != 4:
        raise ValueError(f"Export expects a model taking 4D images (batch, H, W, C). Received: input shape {shape}")
    height, width, channels = shape[1:]
    if input_size is not None:
        if (
            not isinstance(input_size, (tuple, list))
            or len(input_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_size)
        ):
            raise ValueError(
                "`input_size` should be a pair of positive integers (height, width). "
                f"Received: input_size={input_size!r}"
            )
        for built, wanted in zip((height, width), input_size, strict=True):
            if built is not None and built != wanted:
                raise ValueError(
                    f"The model was built for a static input of {shape[1:3]}; build it with `input_shape=(None, None, "
                    f"{channels})` or the wanted size to export another. Received: input_size={tuple(input_size)}"
                )
        height, width = input_size
    if channels is None:
        raise ValueError(f"Export needs a model with a known channel count. Received: input shape {shape}")
    return (batch_size, height, width, channels)


def export_model(model, shape, uint8_input, preprocess, output_name=None):
    """`(model to hand to model.export, its input dtype)`: `model` itself, or `model` behind a uint8 preprocessing
    input, and with its one output under the key `output_name` when that is given.

    A SavedModel signature and the TFLite signature converted from it name a dict output by its keys and a bare
    one `output_0` (Keras' `ExportArchive`); ONNX and OpenVINO tensors are renamed after their conversion.
    """
    dtype = "uint8" if uint8_input else model.inputs[0].dtype
    named = output_name is not None and len(model.outputs) == 1
    if not uint8_input and not named:
        return model, dtype
    if uint8_input and preprocess == "imagenet" and shape[-1] != 3:
        raise ValueError(
            f"preprocess='imagenet' normalises RGB images; the model takes {shape[-1]} channel(s). Pass "
            f"preprocess='unit', 'fashion_mnist', 'none' or a callable. Received: preprocess={preprocess!r}"
        )
    inputs = keras.Input(batch_shape=shape, dtype=dtype, name=INPUT_NAME)
    x = Preprocess(resolve_preprocess(preprocess), name="preprocess")(inputs) if uint8_input else inputs
    outputs = model(x)
    if named:
        outputs = {output_name: outputs}
    return keras.Model(inputs, outputs, name=f"{model.name}_uint8" if uint8_input else f"{model.name}_serving"), dtype


def input_signature(shape, dtype):
    """The `tf.TensorSpec` of the exported input, named `images` (`keras_dla.export.sidecar.INPUT_NAME`)."""
    import tensorflow as tf

    return [tf.TensorSpec(shape, tf.as_dtype(dtype), name=INPUT_NAME)]
