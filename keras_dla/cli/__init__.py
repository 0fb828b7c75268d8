"""The `keras-dla` command line: one module per sub-command, each with `register(subparsers)`.

A sub-command module defines `register(subparsers)`, which adds its parser and sets `func` (called with
the parsed arguments, returning an exit code). Building the parsers imports neither Keras nor TensorFlow, so
`--help` answers at once: the sub-commands' own modules (training, data, export) are imported inside `func`.
A module that sets `NEEDS_TENSORFLOW = True` (tf.data pipelines, SavedModel and TFLite) runs on the TensorFlow
backend whatever `KERAS_BACKEND` the shell sets: the command starts itself again with `KERAS_BACKEND=tensorflow`.

TensorFlow's and LiteRT's C++ logging is kept out of a command's output unless `keras-dla --verbose`:
`TF_CPP_MIN_LOG_LEVEL` is set to 3 (unless the shell sets it) before Keras and its backend are imported, and while
the command runs, what C++ code writes to stderr (file descriptor 2) passes through `native_logs_removed`, which
drops the log lines that no setting silences (XLA's CUDA probe as TensorFlow loads, before the level applies;
LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." as an interpreter starts) and passes the rest
on as it comes. A command that sets `NEEDS_KERAS = False` (`info`, `list`) imports neither. The library leaves the
user's logging alone.
"""

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import re
import sys
import threading

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
# 3: TensorFlow's C++ code logs fatal errors only: no INFO or WARNING lines such as cpu_feature_guard's, nor the
# ERROR line of the CUDA probe on a machine without a GPU driver ("failed call to cuInit"). What fails reaches the
# user as a Python exception.
QUIET_TF_CPP_LOG_LEVEL = "3"
# Lines of C++ logging that TensorFlow (absl's and its own formats) and LiteRT (its minimal logger's "INFO: ...",
# "WARNING: ..." and "VERBOSE: ..."; its errors reach the user as Python exceptions too, and stay) write to stderr.
NATIVE_LOG_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] "
    r"|(INFO|WARNING|VERBOSE): "
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$)"
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-dla",
        description="Deep Layer Aggregation (DLA) models for Keras: weights, prediction, training, export.",
    )
    parser.add_argument(
        "--verbose",
        dest="show_backend_logs",
        action="store_true",
        help="show TensorFlow's and LiteRT's C++ log lines (hidden by default); give it before COMMAND",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"keras_dla.cli.{name}").register(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.show_backend_logs:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_LOG_LEVEL)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if _needs_tensorflow(args.command):
        _restart_on_tensorflow(args.command, sys.argv[1:] if argv is None else argv)
    quiet = not args.show_backend_logs and _needs_keras(args.command)
    try:
        with native_logs_removed() if quiet else contextlib.nullcontext():
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


def keras_backend():
    """The backend Keras runs on, or will when imported, read as Keras reads it (without importing Keras)."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    if "KERAS_HOME" in os.environ:
        home = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(os.path.expanduser(home), "keras.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = {}
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend if isinstance(backend, str) and backend else "tensorflow"


def _flush_c_stdio():
    """Flushes the C library's output streams, so that what C++ code buffered reaches its file descriptor now."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to load by that name (not POSIX): nothing buffered to push
        pass


def _forward(source, target):
    """Copies the lines read from file descriptor `source` to `target`, less native log lines, until end of file."""
    pending = b""
    while True:
        chunk = os.read(source, 1 << 16)
        if chunk:
            *lines, pending = (pending + chunk).split(b"\n")
            lines = [line + b"\n" for line in lines]
        else:
            lines, pending = ([pending] if pending else []), b""
        kept = b"".join(line for line in lines if not NATIVE_LOG_LINE.match(line.decode("utf-8", errors="replace")))
        try:
            if kept:
                os.write(target, kept)
        except OSError:  # stderr went away (a closed pipe): nothing more can be shown
            return
        if not chunk:
            return


@contextlib.contextmanager
def native_logs_removed():
    """Passes on to stderr what is written to it (file descriptor 2) during the block, less native log lines.

    C++ code writes to the descriptor itself, below `sys.stderr`: the descriptor is pointed at a pipe, which a
    thread reads line by line and forwards, as it comes, to where stderr went before. The C library's buffered
    streams are flushed before the descriptor is pointed back, so that nothing written in the block comes after it.
    """
    sys.stderr.flush()
    _flush_c_stdio()
    saved = os.dup(2)
    source, sink = os.pipe()
    os.dup2(sink, 2)
    os.close(sink)
    forwarder = threading.Thread(target=_forward, args=(source, saved), name="native-log-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        _flush_c_stdio()
        os.dup2(saved, 2)  # the pipe's last writer closes: the thread reads to its end and stops
        forwarder.join(timeout=10)
        if not forwarder.is_alive():  # else a child process still holds the pipe: the thread keeps both open
            os.close(source)
            os.close(saved)


def _needs_keras(command):
    return getattr(importlib.import_module(f"keras_dla.cli.{command}"), "NEEDS_KERAS", True)


def _needs_tensorflow(command):
    return getattr(importlib.import_module(f"keras_dla.cli.{command}"), "NEEDS_TENSORFLOW", False)


def _restart_on_tensorflow(command, argv):
    """Runs `keras-dla <argv>` again with KERAS_BACKEND=tensorflow, unless Keras already runs on TensorFlow."""
    backend = keras_backend()
    if backend == "tensorflow":
        return
    print(f"keras-dla {command}: runs on the TensorFlow backend (KERAS_BACKEND is {backend!r})", file=sys.stderr)
    sys.stdout.flush()
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    os.execve(sys.executable, [sys.executable, "-m", "keras_dla.cli", *argv], env)


if __name__ == "__main__":
    sys.exit(main())
