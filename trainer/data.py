"""Datasets and loaders: the built-in offline `shapes` dataset, and the epoch-ordered sampler.

The order of every epoch is a pure function of (seed, epoch), so a resumed run can replay
an epoch and skip the batches it already trained on without loading them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.errors import UserError
from trainer.interrupt import ignore_in_workers

if TYPE_CHECKING:
    from trainer.config import DataConfig

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")


class Shapes(Dataset):
    """Procedurally drawn shapes on noisy backgrounds, generated offline from a seed."""

    def __init__(
        self,
        train: bool = True,
        *,
        size: int | None = None,
        image_size: int = 32,
        num_classes: int = 4,
        channels: int = 3,
        seed: int = 0,
    ) -> None:
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be 2..{len(SHAPES)}, got {num_classes}")
        size = size if size is not None else (4000 if train else 1000)
        generator = torch.Generator().manual_seed(seed * 2 + (0 if train else 1))
        self.classes = list(SHAPES[:num_classes])
        self.targets = torch.randint(num_classes, (size,), generator=generator)
        self.images = _draw(self.targets, image_size, channels, generator)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]


def _draw(
    labels: torch.Tensor, image_size: int, channels: int, generator: torch.Generator
) -> torch.Tensor:
    """Images (N, C, S, S) in [-1, 1]: one shape per image, random place, size and colours."""
    n = len(labels)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    radius = uniform(0.2, 0.4, n) * image_size
    cx = radius + uniform(0, 1, n) * (image_size - 2 * radius)
    cy = radius + uniform(0, 1, n) * (image_size - 2 * radius)
    grid = torch.arange(image_size, dtype=torch.float32) + 0.5
    dx = grid.view(1, 1, -1) - cx.view(-1, 1, 1)
    dy = grid.view(1, -1, 1) - cy.view(-1, 1, 1)
    r = radius.view(-1, 1, 1)
    ax, ay, dist = dx.abs(), dy.abs(), (dx**2 + dy**2).sqrt()
    masks = torch.stack(
        [
            dist <= r,  # circle
            torch.maximum(ax, ay) <= 0.8 * r,  # square
            (ay <= 0.8 * r) & (ax <= (dy + 0.8 * r) * 0.6),  # triangle, apex up
            ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r)),  # cross
            (dist <= r) & (dist >= 0.55 * r),  # ring
            ax + ay <= r,  # diamond
        ]
    )
    mask = masks[labels, torch.arange(n)].unsqueeze(1).float()
    background = uniform(0.0, 0.4, n, channels, 1, 1)
    foreground = uniform(0.6, 1.0, n, channels, 1, 1)
    noise = 0.08 * torch.randn(n, channels, image_size, image_size, generator=generator)
    return (background + (foreground - background) * mask + noise) * 2 - 1


def shapes(
    train: bool = True,
    *,
    size: int | None = None,
    image_size: int = 32,
    num_classes: int = 4,
    channels: int = 3,
    seed: int = 0,
) -> Shapes:
    """Offline shapes (circle, square, triangle, cross, ring, diamond) drawn from a seed."""
    return Shapes(
        train,
        size=size,
        image_size=image_size,
        num_classes=num_classes,
        channels=channels,
        seed=seed,
    )


BUILT_IN = {"shapes": shapes}


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed mixed from both numbers (torch's CPU generator keeps only 32 bits)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Indices of one epoch, in an order fixed by (seed, epoch); can start part-way through."""

    def __init__(self, size: int, *, shuffle: bool, seed: int) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, *, start: int = 0) -> None:
        """Select the epoch's order, beginning at sample `start` (to resume mid-epoch)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.start, self.size))
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator)[self.start :].tolist())

    def __len__(self) -> int:
        return self.size - self.start


def build_datasets(config: DataConfig) -> tuple[Dataset, Dataset]:
    """The train and validation datasets: the callable is called with train=True / False."""
    from trainer import registry

    return tuple(
        registry.build("datasets", config.name, config.kwargs, key="data", train=train)
        for train in (True, False)
    )


def train_set_size(config: DataConfig) -> int:
    """The number of training samples (builds the training set, loads no batch)."""
    from trainer import registry

    return len(registry.build("datasets", config.name, config.kwargs, key="data", train=True))


def build_loaders(
    config: DataConfig, *, seed: int, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders; the train order comes from an EpochSampler."""
    train_set, val_set = build_datasets(config)
    if len(train_set) == 0:
        raise UserError(f"data: the training set of {config.name!r} is empty")
    common = dict(
        worker_init_fn=ignore_in_workers,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    train = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=EpochSampler(len(train_set), shuffle=config.shuffle, seed=seed),
        generator=torch.Generator(),
        **common,
    )
    val = DataLoader(
        val_set, batch_size=config.val_batch_size or config.batch_size, shuffle=False, **common
    )
    return train, val


def batches_per_epoch(loader: DataLoader) -> int:
    """Batches in a whole epoch, wherever the sampler starts now."""
    return math.ceil(loader.sampler.size / loader.batch_size)


def start_epoch(loader: DataLoader, epoch: int, *, seed: int, skip_batches: int = 0) -> None:
    """Fix the epoch's sample order and worker seeds; skip batches a resumed run already did."""
    loader.sampler.set_epoch(epoch, start=skip_batches * loader.batch_size)
    loader.generator.manual_seed(epoch_seed(seed, epoch))
