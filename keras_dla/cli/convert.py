"""`keras-dla convert`: a PyTorch checkpoint (authors' or timm layout) -> a Keras `.weights.h5` file."""

import os


def register(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert a PyTorch DLA checkpoint into a Keras .weights.h5 file",
        description=(
            "Convert a PyTorch DLA checkpoint (.pth in the zip or legacy format, .safetensors; the authors' or "
            "timm's layout) into a Keras .weights.h5 file, read without PyTorch. Every checkpoint key is "
            "either loaded or listed with the reason it was dropped. The output loads with "
            "keras_dla.<Model>(weights=OUTPUT) built with the same include_top and classes."
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the PyTorch checkpoint to convert")
    parser.add_argument("--model", required=True, help="the DLA variant, e.g. dla34 (see `keras-dla list`)")
    parser.add_argument("--output", required=True, help="the Keras weights file to write (must end in .weights.h5)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.set_defaults(func=run)


def run(args):
    from keras_dla import checks
    from keras_dla.models.dla import BUILDERS, MODEL_CONFIGS
    from keras_dla.weights import pretrained

    if args.model not in MODEL_CONFIGS:
        raise ValueError(
            f"Unknown DLA variant; expected one of {', '.join(MODEL_CONFIGS)}. Received: --model {args.model}"
        )
    if not args.output.endswith(".weights.h5"):
        raise ValueError(f"Keras weights files must end in .weights.h5. Received: --output {args.output}")
    checks.check_output(args.output, "file", what="--output")
    if os.path.lexists(args.output) and not args.overwrite:
        raise ValueError(f"--output exists; pass --overwrite to replace it. Received: --output {args.output}")
    if os.path.isdir(args.checkpoint):
        raise ValueError(f"The checkpoint is a folder; give the .pth or .safetensors file. Received: {args.checkpoint}")
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"No such checkpoint: {args.checkpoint}")
    if args.checkpoint.endswith(".weights.h5"):
        raise ValueError(
            "The checkpoint is a Keras .weights.h5 file already: load it with keras_dla.<Model>(weights=PATH) or "
            f"--weights PATH; convert reads PyTorch checkpoints. Received: {args.checkpoint}"
        )
    # Built with the checkpoint's classifier: its class count, or none.
    model, dropped = pretrained.convert_checkpoint(args.model, args.checkpoint, BUILDERS[args.model])
    summary = convert_to_file(model, args.output)
    fc = next((layer for layer in model.layers if layer.name == "fc"), None)
    head = f"{fc.units} classes" if fc is not None else "no classifier (include_top=False)"
    print(f"Converted {args.checkpoint} into {args.output}: {args.model}, {head}, {summary}")
    if dropped:
        print(f"Dropped {len(dropped)} checkpoint keys that have no Keras weight by design:")
        by_reason = {}
        for key, reason in dropped.items():
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            print(f"  {len(keys)} key(s): {reason}:")
            for key in sorted(keys):
                print(f"    {key}")
    else:
        print("Dropped no checkpoint keys.")
    return 0


def convert_to_file(model, output):
    """Saves `model`'s weights atomically to `output` (.weights.h5), with their checksum; returns a one-line summary.

    What a killed conversion left beside `output` (`files.remove_stale`) is removed first.
    """
    import numpy as np

    from keras_dla import files
    from keras_dla.weights import checksum, download

    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    files.remove_stale(directory, suffix="." + os.path.basename(output))
    checksum.save_weights(model, output)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return f"{trainable:,} parameters, sha256 {download.sha256_of(output)}"
