"""`keras-dla info`: versions of keras_dla and its backends, and the variants it builds.

The versions are those installed (package metadata) and the backend is the one Keras would run on, so the
command imports neither Keras nor TensorFlow.
"""

from importlib import metadata

NEEDS_KERAS = False  # see keras_dla.cli

# The distributions whose versions `info` prints, after keras_dla's and Keras'.
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def register(subparsers):
    parser = subparsers.add_parser("info", help="print versions and the DLA variants available")
    parser.set_defaults(func=run)


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(args):
    from keras_dla import __version__
    from keras_dla.cli import keras_backend
    from keras_dla.models.configs import MODEL_CONFIGS

    backends = ", ".join(f"{name} {_version(package)}" for name, package in BACKEND_PACKAGES.items())
    print(f"keras_dla {__version__}, keras {_version('keras')} ({keras_backend()}), {backends}")
    for variant, config in MODEL_CONFIGS.items():
        print(f"  {variant:16s} levels={config['levels']} channels={config['channels']} block={config['block']}")
    return 0
