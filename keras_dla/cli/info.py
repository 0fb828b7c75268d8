"""`keras-dla info`: versions of keras_dla and its backends, and the variants it builds."""


def register(subparsers):
    parser = subparsers.add_parser("info", help="print versions and the DLA variants available")
    parser.set_defaults(func=run)


def run(args):
    import keras
    import tensorflow as tf

    import keras_dla

    print(
        f"keras_dla {keras_dla.__version__}, keras {keras.__version__} ({keras.backend.backend()}), "
        f"tensorflow {tf.__version__}"
    )
    for variant, config in keras_dla.MODEL_CONFIGS.items():
        print(f"  {variant:16s} levels={config['levels']} channels={config['channels']} block={config['block']}")
    return 0
