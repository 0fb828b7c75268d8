"""Weights: where they come from and how they reach a Keras model. The table of published checkpoints, their
download and converted cache (`pretrained`), the checkpoint readers (`readers`), the key mapping between the PyTorch
module paths and the Keras layer names (`names`, `convert`, `legacy`) and the checksums every weights file keras_dla
writes carries (`checksum`). Nothing here imports a model module: conversion receives the model it fills."""
