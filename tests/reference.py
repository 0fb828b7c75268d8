"""The PyTorch reference for the tests: timm's DLA models with random weights, and checkpoints made from them.

Random weights are drawn to look like trained ones, so float32 round-off does not drown the comparison:
BatchNorm statistics are measured on random inputs (then perturbed), and the BatchNorm that closes each
residual branch or aggregation root gets a small scale, as trained residual nets have. With timm's plain
initialisation the activations of the deeper variants grow by orders of magnitude and float32 PyTorch
differs from float64 PyTorch by more than 1e-4 itself; the float64 tests cover that regime exactly.
"""

import numpy as np
import timm
import torch

from keras_dla import MODEL_CONFIGS
from keras_dla.weights.convert import dead_project_keys

BRANCH_END_BNS = ("bn3", "root.bn")  # plus bn2 of the basic block


def make_timm_model(variant, seed=0, dtype=torch.float32):
    """A timm `variant` in eval mode with random, trained-looking weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(variant, pretrained=False)
    basic = MODEL_CONFIGS[variant]["block"] == "basic"
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for _, bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.momentum = None  # cumulative average over the calibration batch
            bn.reset_running_stats()
        model.train()
        model(torch.randn(8, 3, 64, 64))
        model.eval()
        for name, bn in bns:
            bn.running_mean.add_(0.1 * torch.randn_like(bn.running_mean))
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
            if name.endswith(BRANCH_END_BNS) or (basic and name.endswith("bn2")):
                bn.weight.uniform_(0.05, 0.3)
            bn.momentum = 0.1
    return model.to(dtype)


def timm_state_dict(model):
    """The model's state dict as numpy arrays (the timm layout)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def authors_state_dict(model, variant, seed=1):
    """The same weights in the authors' layout: timm's keys plus the dead `project` tensors of `dla.py`.

    The dead tensors get random values (the forward pass never reads them), in the authors' shapes:
    a 1x1 conv (out, in, 1, 1) and a BatchNorm of `out` channels, for each tree of more than one level
    whose width changes.
    """
    rng = np.random.default_rng(seed)
    state = timm_state_dict(model)
    config = MODEL_CONFIGS[variant]
    widths = {}
    channels = config["channels"]

    def walk(name, levels, cin, cout):
        widths[name] = (cin, cout)
        if levels > 1:
            walk(f"{name}.tree1", levels - 1, cin, cout)
            walk(f"{name}.tree2", levels - 1, cout, cout)

    for i in range(2, 6):
        walk(f"level{i}", config["levels"][i], channels[i - 1], channels[i])
    for prefix in dead_project_keys(config):
        cin, cout = widths[prefix[: -len(".project.")]]
        state[prefix + "0.weight"] = rng.standard_normal((cout, cin, 1, 1)).astype("float32")
        state[prefix + "1.weight"] = np.ones(cout, "float32")
        state[prefix + "1.bias"] = np.zeros(cout, "float32")
        state[prefix + "1.running_mean"] = np.zeros(cout, "float32")
        state[prefix + "1.running_var"] = np.ones(cout, "float32")
        state[prefix + "1.num_batches_tracked"] = np.zeros((), "int64")
    # The authors' files list keys in module-definition order; only names matter to the converter, so
    # reverse the order to make sure nothing depends on it.
    return dict(reversed(list(state.items())))


def save_safetensors(state, path):
    """Writes `{key: numpy array}` with the safetensors package (an independent writer for our reader)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return path


@torch.no_grad()
def timm_outputs(model, images_nhwc):
    """Logits and the six level features of a timm DLA for channels-last numpy images, channels-last."""
    dtype = next(model.parameters()).dtype
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))).to(dtype)
    logits = model(x).numpy()
    y = model.base_layer(x)
    levels = {}
    for i in range(6):
        y = getattr(model, f"level{i}")(y)
        levels[f"level{i}"] = y.numpy().transpose(0, 2, 3, 1)
    return logits, levels
