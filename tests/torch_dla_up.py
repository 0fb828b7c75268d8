"""A PyTorch DLA-Up (the paper's section 4) on a timm DLA backbone: the numeric reference of test_dla_up.py.

Written from the paper's section 4 and the authors' `dla_up.py`, with the module paths of their `DLASeg`, so its
state dict has the authors' keys: `base.*` (the backbone, plus the authors' dead `project` tensors and
its unused ImageNet `fc`), `dla_up.ida_{i}.{proj,up,node}_{k}.*`, `fc.0.*`, `up.weight`.

Weights are random but trained-looking (as in reference.py): every BatchNorm's statistics are measured on
random inputs, and the upsampling kernels are bilinear plus per-channel noise, so that a channel or tap
mix-up in the conversion changes the output.
"""

import math

import numpy as np
import torch
from torch import nn

from keras_dla import MODEL_CONFIGS
from tests import reference


def bilinear_(weight):
    """Fills a (C, 1, k, k) transposed-conv weight with bilinear interpolation weights, in place."""
    size = weight.shape[-1]
    f = math.ceil(size / 2)
    center = (2 * f - 1 - f % 2) / (2 * f)
    taps = torch.tensor([1 - abs(i / f - center) for i in range(size)], dtype=weight.dtype)
    with torch.no_grad():
        weight.copy_(torch.outer(taps, taps).expand_as(weight))
    return weight


def upsampler(channels, factor):
    """The depthwise `ConvTranspose2d` that upsamples by `factor`, bilinear at the start."""
    up = nn.ConvTranspose2d(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2, groups=channels, bias=False
    )
    bilinear_(up.weight)
    return up


def conv_bn_relu(in_channels, out_channels, kernel_size):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class IDAUp(nn.Module):
    """Project every input to `width`, upsample it by its factor, aggregate them pairwise in order."""

    def __init__(self, width, in_widths, factors):
        super().__init__()
        self.count = len(in_widths)
        for k, (in_width, factor) in enumerate(zip(in_widths, factors, strict=True)):
            self.add_module(f"proj_{k}", nn.Identity() if in_width == width else conv_bn_relu(in_width, width, 1))
            self.add_module(f"up_{k}", nn.Identity() if factor == 1 else upsampler(width, factor))
        for k in range(1, self.count):
            self.add_module(f"node_{k}", conv_bn_relu(2 * width, width, 3))

    def forward(self, features):
        ups = [getattr(self, f"up_{k}")(getattr(self, f"proj_{k}")(x)) for k, x in enumerate(features)]
        x, nodes = ups[0], []
        for k in range(1, self.count):
            x = getattr(self, f"node_{k}")(torch.cat([x, ups[k]], dim=1))
            nodes.append(x)
        return nodes


class DLAUp(nn.Module):
    """IDA stages from the two deepest levels toward the shallowest; each stage's nodes replace its inputs."""

    def __init__(self, widths):
        super().__init__()
        self.count = len(widths)
        in_widths, scales = list(widths), [2**i for i in range(len(widths))]
        for i in range(self.count - 1):
            j = self.count - 2 - i
            self.add_module(f"ida_{i}", IDAUp(widths[j], in_widths[j:], [s // scales[j] for s in scales[j:]]))
            in_widths[j + 1 :] = [widths[j]] * (self.count - j - 1)
            scales[j + 1 :] = [scales[j]] * (self.count - j - 1)

    def forward(self, features):
        features = list(features)
        for i in range(self.count - 1):
            j = self.count - 2 - i
            features[j + 1 :] = getattr(self, f"ida_{i}")(features[j:])
        return features[-1]


class DLASeg(nn.Module):
    """Backbone levels log2(down_ratio)..5 -> DLAUp -> 1x1 conv `fc` -> frozen bilinear `up`; returns logits."""

    def __init__(self, base, variant, classes, down_ratio):
        super().__init__()
        self.base = base
        self.first_level = int(math.log2(down_ratio))
        widths = list(MODEL_CONFIGS[variant]["channels"][self.first_level :])
        self.dla_up = DLAUp(widths)
        self.fc = nn.Sequential(nn.Conv2d(widths[0], classes, 1, bias=True))
        self.up = upsampler(classes, down_ratio)
        self.up.weight.requires_grad = False

    def levels(self, x):
        x = self.base.base_layer(x)
        out = []
        for i in range(6):
            x = getattr(self.base, f"level{i}")(x)
            out.append(x)
        return out

    def forward(self, x):
        x = self.dla_up(self.levels(x)[self.first_level :])
        return self.up(self.fc(x))


def make_dlaseg(variant="dla34", classes=5, down_ratio=2, seed=0, base=None):
    """A DLASeg in eval mode on a trained-looking timm backbone, with trained-looking decoder weights.

    `base`, a model of `reference.make_timm_model(variant)`, saves making one (the backbone is not changed).
    """
    base = reference.make_timm_model(variant, seed=seed) if base is None else base
    torch.manual_seed(seed + 1)
    model = DLASeg(base, variant, classes, down_ratio)
    decoder_bns = [m for m in model.dla_up.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in decoder_bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.momentum = None
            bn.reset_running_stats()
        for module in model.modules():
            if isinstance(module, nn.ConvTranspose2d):
                module.weight.add_(0.05 * torch.randn_like(module.weight))
        model.eval()
        model.dla_up.train()
        model(torch.randn(4, 3, 64, 64))
        model.eval()
        for bn in decoder_bns:
            bn.running_mean.add_(0.1 * torch.randn_like(bn.running_mean))
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
            bn.momentum = 0.1
    return model


def authors_state_dict(model, variant):
    """The DLASeg state dict as numpy arrays, with the backbone in the authors' layout (dead projects, `fc`)."""
    state = {f"base.{k}": v for k, v in reference.authors_state_dict(model.base, variant).items()}
    for key, value in model.state_dict().items():
        if not key.startswith("base."):
            state[key] = value.detach().cpu().numpy()
    return state


@torch.no_grad()
def logits(model, images_nhwc):
    """Per-pixel logits (before the authors' LogSoftmax), channels-last."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    return model(x).numpy().transpose(0, 2, 3, 1)
