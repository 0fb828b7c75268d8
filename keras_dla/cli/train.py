"""`keras-dla train`: train a DLA classifier or DLA-Up segmenter with model.fit, on any Keras backend.

Started again with the same command, a killed run resumes from the last epoch it completed (OUTPUT/backup).
"""

import argparse

# keras_dla.training.choices imports nothing, so building the parser imports neither TensorFlow nor Keras.
from keras_dla.training.choices import AUGMENTS, OPTIMIZERS, SCHEDULES, STRATEGIES, TASKS


def register(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train a DLA classifier or DLA-Up segmenter (resumable, distributed)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--task", choices=TASKS, default="classification")
    parser.add_argument(
        "--model",
        default="dla34",
        help="a DLA variant (dla34, dla46_c, ...; dla34up for DLA-Up), or a .json file of keras_dla.DLA's architecture "
        'arguments, e.g. {"levels": [1, 1, 1, 2, 1, 1], "channels": [8, 16, 16, 32, 32, 64]} (the backbone for DLA-Up)',
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="fashion_mnist | fashion_mnist_scenes | a tensorflow-datasets name | a folder "
        "(class sub-folders, or the list-file format for segmentation); default: the embedded set of the task",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the train split")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size, split over the replicas")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.1*batch/256 (cls), 0.01*batch/16 (seg)")
    parser.add_argument("--schedule", choices=SCHEDULES, default=None, help="default: step (cls), poly (seg)")
    parser.add_argument("--weights", default="none", help="none | imagenet | a weights file")
    parser.add_argument("--output", default="runs/dla", help="run folder (backup, best weights, logs, curves)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto")
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="use N GPUs, or split the CPU into N devices (TensorFlow, JAX; PyTorch: 1)",
    )
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument(
        "--jit",
        action="store_true",
        help="compile the train step with XLA (TensorFlow; on JAX it always is)",
    )
    parser.add_argument(
        "--steps-per-execution", type=int, default=1, help="train steps per graph call (less per-step overhead)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="input size (cls) or crop size (seg)")
    parser.add_argument(
        "--augment",
        choices=sorted({recipe for recipes in AUGMENTS.values() for recipe in recipes}),
        default=None,
        help="augmentation: imagenet, small, small-erasing (small + random erasing) or flip (classification), flip "
        "(segmentation: no scale or rotation); default: the authors'",
    )
    parser.add_argument("--classes", type=int, default=None, help="classes of a list-file folder")
    parser.add_argument("--down-ratio", type=int, default=2, choices=(2, 4, 8, 16), help="DLA-Up output stride")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd (momentum), the authors'; or adamw")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="decoupled, as Keras applies it")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="classification only")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--data-dir", default=None, help="tensorflow-datasets data folder, or the Fashion-MNIST files")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N examples of each split")
    parser.add_argument("--validation-steps", type=int, default=None)
    parser.add_argument("--backup-every", type=int, default=None, help="also back up every N steps")
    parser.add_argument("--verbose", default="auto", choices=("auto", "0", "1", "2"))
    parser.set_defaults(func=run)


def config_from_args(args):
    from keras_dla.training.config import TrainConfig

    dataset = args.dataset or ("fashion_mnist" if args.task == "classification" else "fashion_mnist_scenes")
    return TrainConfig(
        task=args.task,
        model=args.model,
        dataset=dataset,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        weights=args.weights,
        output=args.output,
        strategy=args.strategy,
        devices=args.devices,
        mixed_precision=args.mixed_precision,
        jit=args.jit,
        steps_per_execution=args.steps_per_execution,
        image_size=args.image_size,
        classes=args.classes,
        down_ratio=args.down_ratio,
        seed=args.seed,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        data_dir=args.data_dir,
        limit=args.limit,
        augment=args.augment,
        validation_steps=args.validation_steps,
        backup_every=args.backup_every,
        verbose=args.verbose if args.verbose == "auto" else int(args.verbose),
    )


def run(args):
    from keras_dla.training import fit

    config = config_from_args(args)
    try:
        result = fit.train(config)
    except FloatingPointError as e:
        print(f"keras-dla train: {e}")
        return 3
    final = {k: round(v, 4) for k, v in result["final"].items() if k != "epoch"}
    print(
        f"{result['epochs_completed']}/{config.epochs} epochs done ({result['epochs_this_run']} in this run) "
        f"on {result['replicas']} replica(s) with {result['strategy']}; last epoch: {final}; "
        f"weights: {config.output}/final.weights.h5 (last epoch), {config.output}/best.weights.h5 (best epoch)"
    )
    return 0
