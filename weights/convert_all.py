"""Converts the authors' ImageNet checkpoints of every DLA variant into Keras files, with a sha256 manifest.

The output folder is ready to publish as a release mirror: one `<variant>_imagenet.weights.h5` per variant
(Keras `model.save_weights` of the full classifier, 1000 classes, softmax) and `manifest.json` giving, per
variant, the file, its sha256 and size, and the verified checkpoint it came from.

Checkpoints come from a folder holding them under their upstream names (`--checkpoints`, read offline), or
are downloaded through keras_dla's own sources and verification (`--download`, into $KERAS_HOME/models).
Each one is verified against the sha256 (prefix) of `keras_dla.weights.sources.PRETRAINED` before it is read.

    python weights/convert_all.py --checkpoints ~/dla-checkpoints --output release/
    python weights/convert_all.py --download --output release/ --variants dla34 dla60
"""

import argparse
import json
import os
import sys

import numpy as np


def convert_all(output, entries, *, checkpoints=None, download=False, log=print):
    """Converts each `Pretrained` entry's first verified checkpoint; writes and returns the manifest.

    Args:
        output: the folder to write the Keras files and `manifest.json` into.
        entries: `Pretrained` entries (`keras_dla.weights.sources.PRETRAINED[variant]["imagenet"]` ...).
        checkpoints: a folder of checkpoints under their upstream names, or None.
        download: whether to download what the folder (and the cache) lack.
        log: where progress lines go.

    Returns:
        The manifest: `{variant: {"file", "sha256", "bytes", "source", "source_file", "source_sha256",
        "dropped_keys", "params"}}`.
    """
    from keras_dla.cli.convert import convert_to_file
    from keras_dla.models.dla import DLA
    from keras_dla.weights import pretrained
    from keras_dla.weights.download import sha256_of

    os.makedirs(output, exist_ok=True)
    manifest = {}
    for entry in entries:
        path, source = pretrained.fetch_checkpoint(entry, mirror=checkpoints or "", download=download)
        model = DLA(entry.variant, weights=None, input_shape=(None, None, 3))
        _, dropped = pretrained.convert_checkpoint(entry.variant, path, model)
        filename = f"{entry.variant}_{entry.tag}.weights.h5"
        convert_to_file(model, os.path.join(output, filename))
        manifest[entry.variant] = {
            "file": filename,
            "sha256": sha256_of(os.path.join(output, filename)),
            "bytes": os.path.getsize(os.path.join(output, filename)),
            "source": source.url,
            "source_file": source.filename,
            "source_sha256": sha256_of(path),
            "dropped_keys": sorted(dropped),
            # Trainable values, as timm and the table count them (BatchNorm statistics are not parameters).
            "params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        }
        log(f"{entry.variant}: {filename} sha256 {manifest[entry.variant]['sha256']} from {source.filename}")
    with open(os.path.join(output, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder for the Keras files and manifest.json")
    parser.add_argument("--checkpoints", help="folder holding the checkpoints under their upstream names")
    parser.add_argument("--download", action="store_true", help="download what the folder and cache lack")
    parser.add_argument("--variants", nargs="+", help="only these variants (default: all twelve)")
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.download:
        parser.error("give --checkpoints FOLDER, --download, or both")

    from keras_dla.weights.sources import PRETRAINED

    variants = args.variants or list(PRETRAINED)
    unknown = sorted(set(variants) - set(PRETRAINED))
    if unknown:
        parser.error(f"unknown variants {unknown}; expected some of {list(PRETRAINED)}")
    convert_all(
        args.output,
        [PRETRAINED[v]["imagenet"] for v in variants],
        checkpoints=args.checkpoints,
        download=args.download,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
