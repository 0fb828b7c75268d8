"""Weights: where they come from and how they reach a Keras model.

- `sources`: the table of published checkpoints per variant and tag, `register_weights`, the cache folder;
- `download`: verified downloads (sha256, deadline, progress, mirror, per-file lock);
- `cache`: the converted weights by layer name, beside the checkpoint;
- `pretrained`: `load_pretrained`, what `weights="imagenet"` or a registered tag calls, and `convert_checkpoint`;
- `readers`: PyTorch checkpoints (`.pth`, `.safetensors`) read without PyTorch;
- `names`, `convert`, `legacy`, `dlaseg`: the key mapping between the PyTorch module paths and the Keras layer
  names, the checks of a DLASeg checkpoint, and keras_dla 0.1's `.weights.h5` files;
- `checksum`: the checksum every weights file keras_dla writes carries.

Nothing here imports a model module: conversion receives the model it fills, or the builder that makes it.
"""
