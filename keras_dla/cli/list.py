"""`keras-dla list`: every DLA variant with its size, cost, upstream accuracy and whether its weights are cached."""

# Reads keras_dla's weights table and cache folder only: the command imports neither Keras nor a backend.
NEEDS_KERAS = False


def register(subparsers):
    parser = subparsers.add_parser(
        "list",
        help="list the DLA variants, their parameters, GMACs, upstream top-1 and cached weights",
        description=(
            "List every DLA ImageNet variant: parameters, GMACs at 224x224, the ImageNet top-1 of the "
            "authors' weights (timm's results) and whether converted weights are in $KERAS_HOME/models."
        ),
    )
    parser.set_defaults(func=run)


def run(args):
    from keras_dla.weights import cache, sources

    print(f"{'variant':16s} {'params':>12s} {'GMACs':>6s} {'top-1':>7s}  cached weights")
    for variant, tags in sources.PRETRAINED.items():
        entry = tags["imagenet"]
        cached = ", ".join(cache.cached_tags(variant)) or "-"
        print(f"{variant:16s} {entry.params:>12,d} {entry.gmacs:>6.2f} {entry.top1:>7.3f}  {cached}")
    print(f"cache: {sources.cache_dir()}")
    return 0
