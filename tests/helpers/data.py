"""Importable dataset callables for the dataset tests (`data.name: "helpers.data:my_dataset"`),
and writers of small datasets in the real on-disk formats torchvision reads."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

# Every call of `my_dataset`: (train, keyword arguments), in call order.
CALLS: list[tuple[bool, dict[str, Any]]] = []


def my_dataset(train: bool = True, *, size: int, num_classes: int = 3) -> TensorDataset:
    """Random 1x8x8 images, different per split; records how it was called."""
    CALLS.append((train, {"size": size, "num_classes": num_classes}))
    generator = torch.Generator().manual_seed(0 if train else 1)
    images = torch.rand(size, 1, 8, 8, generator=generator)
    targets = torch.randint(num_classes, (size,), generator=generator)
    return TensorDataset(images, targets)


# ---------------------------------------------------------------- on-disk formats


def pixels(count: int, *shape: int, seed: int) -> np.ndarray:
    """uint8 images (count, *shape) over the whole 0..255 range, the first pixel of each 0."""
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 256, size=(count, *shape), dtype=np.uint8)
    images.reshape(count, -1)[:, 0] = 0
    return images


def write_mnist(raw: Path, *, train: int, test: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four uncompressed idx files (big-endian headers) in `raw`; returns (images, labels)
    per split ("train", "t10k")."""
    raw.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, (prefix, count) in enumerate((("train", train), ("t10k", test))):
        images = pixels(count, 28, 28, seed=seed)
        labels = (np.arange(count) % 10).astype(np.uint8)
        header = struct.pack(">IIII", 2051, count, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, count) + labels.tobytes()
        )
        written[prefix] = (images, labels)
    return written


def write_cifar10(
    root: Path, *, per_batch: int, test: int
) -> tuple[dict[str, str], np.ndarray, list[int]]:
    """`cifar-10-batches-py` as CIFAR-10's python version has it (pickled dicts, str keys, as
    Python 2 wrote them); returns the md5 of each file and the training rows and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": test}
    train_rows, train_labels = [], []
    for seed, (name, count) in enumerate(batches.items()):
        rows = pixels(count, 3072, seed=seed)
        labels = [(seed + i) % 10 for i in range(count)]
        batch = {"batch_label": name, "data": rows, "labels": labels, "filenames": []}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        if name != "test_batch":
            train_rows.append(rows)
            train_labels += labels
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    md5 = {
        path.name: hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        for path in folder.iterdir()
    }
    return md5, np.concatenate(train_rows), train_labels


def write_image_folder(root: Path, *, classes: list[str], train: int, val: int) -> None:
    """16x16 RGB PNGs in root/train/<class>/ and root/val/<class>/."""
    for split, count in (("train", train), ("val", val)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            images = pixels(count, 16, 16, 3, seed=10 * index + len(split))
            for number, image in enumerate(images):
                Image.fromarray(image).save(folder / f"{number}.png")
