"""Datasets by name: the built-in offline `shapes`, `ring` and `markov_text`
(trainer.components.language), torchvision's, and ImageFolder.

Each is called once per split with `train=True` / `train=False` (the torchvision convention),
plus `transform` (built by trainer.components.transforms) and the config's keyword arguments.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from trainer.components.language import markov_text
from trainer.errors import UserError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")

# Per-channel mean and std of the training images, for the default Normalize.
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class Shapes(TensorDataset):
    """Procedurally drawn shapes on noisy backgrounds, held in memory as tensors."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        classes: list[str],
        transform: Callable | None = None,
    ) -> None:
        super().__init__(images, targets)
        self.classes, self.transform = classes, transform

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def targets(self) -> torch.Tensor:
        return self.tensors[1]

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = super().__getitem__(index)
        return (self.transform(image) if self.transform else image), target


def shapes(
    train: bool = True,
    *,
    size: int | None = None,
    image_size: int = 32,
    num_classes: int = 4,
    channels: int = 3,
    seed: int = 0,
    transform: Callable | None = None,
) -> Shapes:
    """Offline shapes (circle, square, triangle, cross, ring, diamond) drawn from a seed."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be 2..{len(SHAPES)}, got {num_classes}")
    size = size if size is not None else (4000 if train else 1000)
    generator = torch.Generator().manual_seed(seed * 2 + (0 if train else 1))
    targets = torch.randint(num_classes, (size,), generator=generator)
    images = _draw(targets, image_size, channels, generator)
    return Shapes(images, targets, list(SHAPES[:num_classes]), transform)


def ring_modes(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    """The centres of the ring's Gaussians, evenly spaced on a circle (modes x 2)."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * torch.pi / modes)
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def ring(
    train: bool = True,
    *,
    n: int | None = None,
    modes: int = 8,
    radius: float = 2.0,
    std: float = 0.05,
    seed: int = 0,
) -> TensorDataset:
    """2-D points from a ring of Gaussians (a GAN's classic test); targets are the mode indices.

    `n` points for training (8192 by default), a quarter as many for validation.
    """
    if modes < 1 or std <= 0 or radius <= 0:
        raise ValueError(f"need modes >= 1, std > 0, radius > 0 (got {modes}, {std}, {radius})")
    n = n if n is not None else 8192
    n = n if train else max(n // 4, modes)
    generator = torch.Generator().manual_seed(seed * 2 + (0 if train else 1))
    targets = torch.randint(modes, (n,), generator=generator)
    noise = torch.randn(n, 2, generator=generator) * std
    return TensorDataset(ring_modes(modes, radius)[targets] + noise, targets)


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
    masks = torch.stack([
        dist <= r,                                                   # circle
        torch.maximum(ax, ay) <= 0.8 * r,                            # square
        (ay <= 0.8 * r) & (ax <= (dy + 0.8 * r) * 0.6),              # triangle, apex up
        ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r)),   # cross
        (dist <= r) & (dist >= 0.55 * r),                            # ring
        ax + ay <= r,                                                # diamond
    ])  # fmt: skip
    mask = masks[labels, torch.arange(n)].unsqueeze(1).float()
    background = uniform(0.0, 0.4, n, channels, 1, 1)
    foreground = uniform(0.6, 1.0, n, channels, 1, 1)
    noise = 0.08 * torch.randn(n, channels, image_size, image_size, generator=generator)
    return (background + (foreground - background) * mask + noise) * 2 - 1


def _torchvision(class_name: str, folder: Callable[[str], str], hint: str) -> Callable[..., Any]:
    """A wrapper that turns 'not found' and failed downloads into errors that say what to do."""

    def load(
        train: bool = True,
        *,
        root: str = "data",
        download: bool = False,
        transform: Callable | None = None,
    ) -> Dataset:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, class_name)
        try:
            return cls(root, train=train, transform=transform, download=download)
        except RuntimeError as err:
            if download and "download" in str(err).lower():  # torchvision wraps the URLError
                raise UserError(
                    f"data.download: downloading {class_name} into {root!r} failed ({err}); "
                    f"offline? {hint}"
                ) from None
            if "not found" not in str(err).lower() and "corrupted" not in str(err).lower():
                raise
            raise UserError(
                f"data.root: {class_name} not found in {folder(root)!r}; {hint}, or set "
                "data.download: true to download it"
            ) from None
        except OSError as err:  # URLError and friends: no network
            raise UserError(
                f"data.download: downloading {class_name} into {root!r} failed ({err}); "
                f"offline? {hint}"
            ) from None

    load.__doc__ = f"torchvision.datasets.{class_name} (root, download), as float tensors"
    load.__name__ = class_name.lower()
    return load


def _mnist_folder(name: str) -> Callable[[str], str]:
    return lambda root: os.path.join(root, name, "raw")


mnist = _torchvision(
    "MNIST",
    _mnist_folder("MNIST"),
    "put train-images-idx3-ubyte and its three siblings there, uncompressed (gunzip)",
)
fashion_mnist = _torchvision(
    "FashionMNIST",
    _mnist_folder("FashionMNIST"),
    "put the four Fashion-MNIST idx files there, uncompressed (gunzip)",
)
cifar10 = _torchvision(
    "CIFAR10",
    lambda root: os.path.join(root, "cifar-10-batches-py"),
    "extract cifar-10-python.tar.gz there (data_batch_1..5, test_batch)",
)
cifar100 = _torchvision(
    "CIFAR100",
    lambda root: os.path.join(root, "cifar-100-python"),
    "extract cifar-100-python.tar.gz there (train, test, meta)",
)


def image_folder(train: bool = True, *, root: str, transform: Callable | None = None) -> Dataset:
    """Images in root/train/<class>/* and root/val/<class>/* (the ImageNet layout)."""
    import torchvision.datasets

    split = Path(root) / ("train" if train else "val")
    if not split.is_dir():
        raise UserError(
            f"data.root: no directory {str(split)!r}; image_folder reads "
            "root/train/<class>/* and root/val/<class>/*"
        )
    try:
        return torchvision.datasets.ImageFolder(str(split), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        raise UserError(f"data.root: {split}: {err}") from None


def fake_data(
    train: bool = True,
    *,
    size: int | None = None,
    image_size: tuple[int, int, int] | list[int] = (3, 32, 32),
    num_classes: int = 10,
    transform: Callable | None = None,
) -> Dataset:
    """torchvision.datasets.FakeData: random images, different ones per split (no download)."""
    import torchvision.datasets

    size = size if size is not None else (1000 if train else 200)
    return torchvision.datasets.FakeData(
        size=size,
        image_size=tuple(image_size),
        num_classes=num_classes,
        transform=transform,
        random_offset=0 if train else 10**6,
    )


BUILT_IN: dict[str, Callable[..., Dataset]] = {
    "shapes": shapes,
    "ring": ring,
    "markov_text": markov_text,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "image_folder": image_folder,
    "fake_data": fake_data,
}
