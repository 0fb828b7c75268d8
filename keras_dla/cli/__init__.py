"""The `keras-dla` command line: one module per sub-command, each with `register(subparsers)`.

A sub-command module defines `register(subparsers)`, which adds its parser and sets `func` (called with
the parsed arguments, returning an exit code). The sub-commands' own modules (training, data, export) are
imported inside `func`; TensorFlow itself comes with the `keras_dla` package, so `--help` takes a few seconds.
"""

import argparse
import importlib
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


if __name__ == "__main__":
    sys.exit(main())
