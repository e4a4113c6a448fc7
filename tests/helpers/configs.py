"""The small configs and module texts that several test files share. YAML configs are indented
as they are written inline in a test: the `write_config` fixture dedents them."""

from __future__ import annotations

from typing import Any

# A fit small enough for a unit test: 128 samples of 16x16 in batches of 32, two epochs (the
# `tiny_yaml` fixture).
TINY_CONFIG = """
    name: tiny
    seed: 0
    model: {name: small_cnn, num_classes: 4, in_channels: 3, width: 4}
    data: {name: shapes, num_classes: 4, size: 128, image_size: 16, batch_size: 32}
    loss: {name: CrossEntropyLoss}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    trainer: {epochs: 2, device: cpu, log_every: 2}
"""

# `helpers.loop:tiny` (no BatchNorm, no dropout) on 96 shapes of 8x8 in batches of 16: 6 steps
# an epoch, two epochs.
TINY_MLP_CONFIG = """
    name: tiny
    seed: 0
    model: {name: "helpers.loop:tiny"}
    data: {name: shapes, size: 96, image_size: 8, batch_size: 16}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    trainer: {epochs: 2, device: cpu, log_every: 2}
"""

# The fewest sections a config validates with.
MINIMAL: dict[str, Any] = {"name": "m", "model": {"name": "small_cnn"}, "data": {"name": "shapes"}}

# A user's own module of models: `net` builds, `Buggy` has a bug (line 12), `positional` takes
# its width positional-only.
USER_MODELS = """\
import torch


def net(width: int = 3):
    return torch.nn.Linear(width, 2)


class Buggy(torch.nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(width, 2)
        self.table = {}["missing"]


def positional(width, /, **options):
    return torch.nn.Linear(width, 2)
"""
