"""Tiny networks and a seconds-long training run shared by the quantization tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class ResidualNet(nn.Module):
    """Conv-BN-ReLU stem, a linear-bottleneck residual block (signed add), LeakyReLU, concat, Linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8))  # linear bottleneck
        self.pool = nn.MaxPool2d(2)
        self.branch_a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1))
        self.branch_b = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.expand(x))
        x = self.pool(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


def make_dataset(n: int, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of fixed random 16x16 templates: learnable in a few hundred steps."""
    templates = torch.randn(classes, 1, 16, 16, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = templates[y] + 0.8 * torch.randn(n, 1, 16, 16, generator=g)
    return x, y


def train_residual_net() -> tuple[nn.Module, float]:
    """ResidualNet trained for 4 epochs (seconds on a CPU); returns it and its FP32 test accuracy."""
    torch.manual_seed(0)
    net = ResidualNet()
    x, y = make_dataset(2048, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for epoch in range(4):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    net.eval()
    xt, yt = make_dataset(512, seed=2)
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean().item()
    return net, acc


def small_mobilenet_v2() -> nn.Module:
    """torchvision's MobileNetV2 at width 0.25 for 10 classes, seeded, with trained-looking BN
    statistics (fresh ones fold to degenerate layers): the export and engine tests' real topology."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2), m.running_mean.uniform_(-0.5, 0.5)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.3, 0.3)
    return net


@pytest.fixture(scope="session")
def trained_net() -> tuple[nn.Module, float]:
    return train_residual_net()


@pytest.fixture
def calib_batches() -> list[torch.Tensor]:
    x, _ = make_dataset(256, seed=3)
    return list(x.split(64))
