"""keras.applications-style functions for the named variants (`keras_dla.DLA34`, `keras_dla.DLA34Up`, ...).

One factory for the classifiers and DLA-Up: `builder(build, variant, function, docstring, parameters)` makes a
function named `function` whose signature is `parameters` (so `help()` and `inspect.signature` show the
keras.applications arguments with this variant's defaults) and which calls `build(variant, **arguments)`.
"""

import inspect


def builder(build, variant, function, docstring, parameters, *, attribute="variant"):
    """A function `function(**parameters)` that returns `build(variant, **arguments)`.

    Args:
        build: the generic builder (`keras_dla.DLA`, `keras_dla.DLAUp`), called with the variant name first.
        variant: the variant's name (a key of `MODEL_CONFIGS`), also set as the function's attribute `attribute`
            (`DLA34.variant`, by which `keras_dla.register_weights(DLA34, ...)` knows the variant;
            `DLA34Up.backbone`).
        function: the function's name (`"DLA34"`).
        docstring: its docstring.
        parameters: its arguments and their defaults, in order (positional use follows this order, as in
            keras.applications).
    """
    signature = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value) for name, value in parameters]
    )

    def make(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{function}() {e}") from None
        bound.apply_defaults()
        return build(variant, **bound.arguments)

    make.__name__ = make.__qualname__ = function
    make.__doc__ = docstring
    make.__signature__ = signature
    make.__module__ = build.__module__
    setattr(make, attribute, variant)
    return make
