"""
Title: Distributed training of DLA on several GPUs and several machines
Description: The same `model.fit` on one device, on all local GPUs (MirroredStrategy) or on a cluster
(MultiWorkerMirroredStrategy), with the run folder that survives restarts.

Small by default: a DLA-46-C on Fashion-MNIST for a few steps. `--full` trains 30 epochs.

One machine, every GPU (or, without GPUs, the CPU split into 2 logical devices to try it out):

```
python examples/distributed_training.py                 # all local GPUs
python examples/distributed_training.py --devices 2     # 2 GPUs, or 2 logical CPU devices
```

Several machines: start the same command on every machine, each with its own TF_CONFIG (worker 0 is the chief and
writes the run folder; the others keep only their backup there and their logs in temporary folders):

```
TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}' \
    python examples/distributed_training.py --strategy multiworker --output /shared/run
TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 1}}' \
    python examples/distributed_training.py --strategy multiworker --output /shared/run
```

Kill any run and start the same command again: it resumes after the last completed epoch.
The command-line equivalent is `keras-dla train --strategy ... --devices ...`.
"""

import argparse

from keras_dla.training import fit
from keras_dla.training.choices import STRATEGIES
from keras_dla.training.config import TrainConfig

"""
## Configuration

The batch size is global: each of the N replicas gets batch / N images per step, so it must divide evenly.
The learning rate defaults to the authors' 0.1 per 256 images, scaled with the global batch.
"""

parser = argparse.ArgumentParser(description=__doc__.split("\n")[2])
parser.add_argument("--strategy", default="auto", choices=STRATEGIES)
parser.add_argument("--devices", type=int, default=None)
parser.add_argument("--model", default="dla46_c")
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--output", default="runs/distributed_example")
parser.add_argument("--mixed-precision", action="store_true")
parser.add_argument("--full", action="store_true")
args = parser.parse_args()

config = TrainConfig(
    model=args.model,
    dataset="fashion_mnist",
    epochs=30 if args.full else 2,
    steps_per_epoch=None if args.full else 5,
    batch_size=args.batch_size,
    schedule="cosine",
    strategy=args.strategy,
    devices=args.devices,
    mixed_precision=args.mixed_precision,
    limit=None if args.full else 2048,
    output=args.output,
)

"""
## Training

`training.train` creates the strategy before anything else touches TensorFlow, builds and compiles the model
inside `strategy.scope()`, and runs `model.fit` with BackupAndRestore, the best-weights checkpoint, CSV and
TensorBoard logs.
"""

result = fit.train(config)
print(
    f"{result['strategy']} with {result['replicas']} replica(s): {result['epochs_completed']} epochs, "
    f"last epoch {result['final']}"
)
