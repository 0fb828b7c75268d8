"""`keras-dla demo`: train a DLA on real Fashion-MNIST, evaluate on the 10,000 test images, export and check.

With `--task segmentation`, DLA-Up on "Fashion-MNIST scenes" (composed 64x64 canvases of real garments).
The output folder receives report.md / report.json (accuracy, timings, export parity) and pictures.
"""

import argparse

# tf.data pipelines, SavedModel and TFLite: run on the TensorFlow backend (see keras_dla.cli).
NEEDS_TENSORFLOW = True


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults, except `None` (the help text then says what the default is, per task)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


# keras_dla.demo.DEFAULTS, as far as `--help` states them, repeated here (a test keeps them equal) so that
# building the parser does not import the demo's TensorFlow modules.
HELP_DEFAULTS = {
    "classification": dict(model="dla46_c", epochs=10, batch_size=256, lr=8e-3, image_size=32),
    "segmentation": dict(model="dla46_cup", epochs=7, batch_size=32, lr=2e-3, image_size=64),
}


def register(subparsers):
    cls, seg = HELP_DEFAULTS["classification"], HELP_DEFAULTS["segmentation"]
    parser = subparsers.add_parser(
        "demo",
        help="a real run on real data in minutes: train, evaluate, export, check",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--task", choices=("classification", "segmentation"), default="classification")
    parser.add_argument("--output", default="dla_demo", help="output folder (a killed demo resumes there)")
    parser.add_argument(
        "--model",
        default=None,
        help=f"a DLA variant or an architecture .json file, as for `keras-dla train`; default: {cls['model']} "
        f"(classification), {seg['model']} (segmentation)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"default: {cls['epochs']} (classification), {seg['epochs']} (segmentation)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"global batch size (default {cls['batch_size']} / {seg['batch_size']})",
    )
    parser.add_argument("--lr", type=float, default=None, help=f"default: {cls['lr']:g} / {seg['lr']:g}")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"input size (default {cls['image_size']}) or scene crop ({seg['image_size']})",
    )
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N examples only")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test examples only")
    parser.add_argument("--devices", type=int, default=None, help="split the CPU into N logical devices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"), help="progress output")
    parser.set_defaults(func=run)


def run(args):
    from keras_dla.demo import run_demo

    report = run_demo(
        args.output,
        task=args.task,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        devices=args.devices,
        seed=args.seed,
        verbose=args.verbose if args.verbose == "auto" else int(args.verbose),
    )
    if args.task == "classification":
        figure = f"test accuracy {100 * report['test_accuracy']:.2f}%"
    else:
        figure = f"mean IoU {100 * report['mean_iou']:.2f}%"
    parity = ", ".join(f"{name} max abs diff {p['max_abs_diff']:.2g}" for name, p in report["export"].items())
    print(
        f"{report['model']} on {report['dataset']}: {figure} on {report['test_examples']} test examples "
        f"in {report['timings']['total_s']} s; {parity}. Report: {args.output}/report.md"
    )
    return 0
