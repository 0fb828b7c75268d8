"""The `keras-dla` command line: one module per sub-command, each with `register(subparsers)`.

A sub-command module defines `register(subparsers)`, which adds its parser and sets `func` (called with
the parsed arguments, returning an exit code). The sub-commands' own modules (training, data, export) are
imported inside `func`. A module that sets `NEEDS_TENSORFLOW = True` (tf.data pipelines, SavedModel and TFLite)
runs on the TensorFlow backend whatever `KERAS_BACKEND` the shell sets: the command starts itself again with
`KERAS_BACKEND=tensorflow`.
"""

import argparse
import importlib
import os
import sys

# Sub-command modules of keras_dla.cli, in the order `--help` lists them.
COMMANDS = [
    "info",
    "list",
    "convert",
    "predict",
    "train",
    "demo",
    "export",
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-dla",
        description="Deep Layer Aggregation (DLA) models for Keras: weights, prediction, training, export.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"keras_dla.cli.{name}").register(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if _needs_tensorflow(args.command):
        _restart_on_tensorflow(args.command, sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        # Bad input gets one sentence, not a traceback.
        print(f"keras-dla {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # A path the checks did not foresee (permissions, a full disk, a file where a folder was wanted):
        # the operating system's own sentence names the path.
        print(f"keras-dla {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"keras-dla {args.command}: interrupted", file=sys.stderr)
        return 130


def _needs_tensorflow(command):
    return getattr(importlib.import_module(f"keras_dla.cli.{command}"), "NEEDS_TENSORFLOW", False)


def _restart_on_tensorflow(command, argv):
    """Runs `keras-dla <argv>` again with KERAS_BACKEND=tensorflow, unless Keras already runs on TensorFlow."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    print(f"keras-dla {command}: runs on the TensorFlow backend (KERAS_BACKEND is {backend!r})", file=sys.stderr)
    sys.stdout.flush()
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    os.execve(sys.executable, [sys.executable, "-m", "keras_dla.cli", *argv], env)


if __name__ == "__main__":
    sys.exit(main())
