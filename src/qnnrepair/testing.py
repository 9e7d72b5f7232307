"""Tiny models and data for tests: fast, deterministic, no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyConvNet(nn.Module):
    """conv-bn-relu, conv-bn-relu, pool, linear: every layer type the quantizer handles."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.linear = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny_conv_net(seed: int = 0, num_classes: int = 4) -> TinyConvNet:
    """A TinyConvNet with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = TinyConvNet(num_classes)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def example_inputs(n: int = 16, seed: int = 0, shape=(3, 8, 8)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=generator)


def blob_data(n: int = 200, num_classes: int = 4, seed: int = 0, shape=(3, 8, 8),
              noise: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Images = a class pattern plus noise: a task a tiny net learns in a second, not perfectly."""
    patterns = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (n,), generator=generator)
    images = patterns[labels] + noise * torch.randn(n, *shape, generator=generator)
    return images, labels


def trained_tiny_net(seed: int = 0, steps: int = 150) -> TinyConvNet:
    """A TinyConvNet trained on `blob_data`, in eval mode (BatchNorm statistics learned)."""
    model = tiny_conv_net(seed=seed)
    images, labels = blob_data(512, seed=10_000 + seed)
    return fit_to_blobs(model, images, labels, steps, seed)


def fit_to_blobs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int,
                 seed: int) -> nn.Module:
    """`steps` of Adam (lr 0.02) on seeded batches of 64; returns the model in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(images), (64,), generator=generator)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


TINY_MODEL_SPEC = "qnnrepair.testing:tiny_conv_net"


def write_tiny_task(folder: Path, n: int = 240, label_noise: float = 0.1) -> None:
    """data.npz (uint8 8x8x3 images) and weights.pt for TINY_MODEL_SPEC, on which a W3A4 repair
    finds failures and changes neurons in under a second: the CLI's tiny real task.

    Images are one random colour each plus noise. The untrained tiny net's logits hardly move
    with its input, so one class would win everywhere: its last layer is scaled 20x and
    centred on these images, so that its predictions spread over the classes. Labels are the
    float predictions with `label_noise` of them redrawn.
    """
    from qnnrepair.data import to_tensor

    rng = np.random.default_rng(0)
    level = rng.integers(0, 256, (n, 1, 1, 3))
    images = np.clip(level + rng.normal(0, 30, (n, 8, 8, 3)), 0, 255).astype(np.uint8)
    net = tiny_conv_net()
    inputs = to_tensor(images, (0.0,) * 3, (1.0,) * 3)
    seen = []
    hook = net.linear.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        net(inputs)
        hook.remove()
        net.linear.weight.mul_(20.0)
        net.linear.bias.copy_(-(net.linear.weight @ seen[0].mean(0)))
        labels = net(inputs).argmax(1).numpy()
    redraw = rng.random(n) < label_noise
    labels[redraw] = rng.integers(0, 4, redraw.sum())
    np.savez(Path(folder) / "data.npz", x=images, y=labels)
    torch.save(net.state_dict(), Path(folder) / "weights.pt")


def with_flags(argv: list[str], extra: tuple[str, ...] | list[str], **fmt) -> list[str]:
    """`argv` with each (flag, value) pair of `extra` replacing that flag's value, or added;
    values are formatted with `fmt` (e.g. d=tmp_path). For bad-input CLI tests."""
    argv = list(argv)
    for flag, value in zip(extra[::2], extra[1::2]):
        value = value.format(**fmt)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def scaled(qmodel, name: str) -> torch.Tensor:
    """clamp(w / s, -qmax, qmax) of layer `name` in float64, computed from the float layer:
    the independent reference the baselines' integers are checked against."""
    layer, weight = qmodel.layer(name), qmodel.float_layer(name).weight.detach().double()
    s = layer.weight_scale.double().reshape(-1, *([1] * (weight.dim() - 1)))
    return torch.clamp(weight / s, -layer.qmax, layer.qmax)
