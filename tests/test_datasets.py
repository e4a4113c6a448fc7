"""Datasets, transforms and loaders: small data in the real on-disk formats trained through
`trainer fit`, the errors for missing files and failed downloads, the val_fraction split and
what the loaders do with batches, workers and pinned memory."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helpers.data
import numpy as np
import pytest
import torch
import torchvision.datasets
from helpers.data import write_cifar10, write_image_folder, write_mnist
from PIL import Image
from torch.utils.data import DataLoader, Subset
from typer.testing import Result

from trainer.components.data import build_datasets, build_loaders
from trainer.components.datasets import BUILT_IN, STATS
from trainer.config import DataConfig
from trainer.runs.metrics_file import read_metrics

CPU = torch.device("cpu")


@pytest.fixture
def fit(
    run_cli: Callable[..., Result], write_config: Callable[..., Path], tmp_path: Path
) -> Callable[..., dict[str, Any]]:
    """`fit(model, data, epochs=1)`: train through the CLI; returns the last epoch's record."""

    def run(model: str, data: str, *, epochs: int = 1) -> dict[str, Any]:
        out = tmp_path / "run"
        config = write_config(
            f"""
            name: data-test
            seed: 0
            model: {model}
            data: {data}
            optimizer: {{name: SGD, lr: 0.05}}
            trainer: {{epochs: {epochs}, device: cpu, out_dir: '{out}'}}
            """
        )
        result = run_cli("fit", config)
        assert result.exit_code == 0, (result.exception, result.output)
        records = [r for r in read_metrics(out / "metrics.jsonl") if "val/loss" in r]
        assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
        return records[-1]

    return run


def assert_val_acc_over(record: dict[str, Any], val_size: int) -> None:
    """val/acc is a count of right answers over exactly `val_size` samples."""
    correct = record["val/acc"] * val_size
    assert correct == pytest.approx(round(correct), abs=1e-6)


def first_batch(loader: DataLoader) -> tuple[Any, Any]:
    return next(iter(loader))


def normalized(images: np.ndarray, dataset: str) -> torch.Tensor:
    """uint8 images (N, C, H, W) as the default transforms should give them: /255, Normalize."""
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in STATS[dataset])
    return (torch.from_numpy(images).float() / 255 - mean) / std


# ---------------------------------------------------------------- MNIST, Fashion-MNIST

MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


@pytest.mark.parametrize("name", list(MNIST_FOLDERS))
def test_mnist_idx_files_train_one_epoch(name: str, tmp_path: Path, fit) -> None:
    write_mnist(tmp_path / "data" / MNIST_FOLDERS[name] / "raw", train=64, test=32)
    record = fit(
        "{name: small_cnn, in_channels: 1, num_classes: 10, width: 4}",
        f"{{name: {name}, root: '{tmp_path / 'data'}', batch_size: 16}}",
    )
    assert record["step"] == 4  # 64 images in batches of 16
    assert_val_acc_over(record, 32)


@pytest.mark.parametrize("name", list(MNIST_FOLDERS))
def test_mnist_default_transforms_are_the_normalized_idx_pixels(name: str, tmp_path: Path) -> None:
    written = write_mnist(tmp_path / MNIST_FOLDERS[name] / "raw", train=12, test=6)
    config = DataConfig(name=name, root=str(tmp_path), batch_size=12, shuffle=False)
    train, val = build_loaders(config, seed=0, device=CPU)
    for loader, split in ((train, "train"), (val, "t10k")):
        images, labels = first_batch(loader)
        raw_images, raw_labels = written[split]
        assert type(images) is torch.Tensor
        assert images.dtype == torch.float32
        torch.testing.assert_close(images, normalized(raw_images[:, None], name))
        assert torch.equal(labels, torch.from_numpy(raw_labels).long())


def test_mnist_gz_files_alone_get_a_hint_to_unpack_them(
    tmp_path: Path, write_config, user_error
) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_mnist(raw, train=16, test=8)
    for path in list(raw.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    config = write_config(
        f"""
        model: {{name: small_cnn, in_channels: 1, num_classes: 10, width: 4}}
        data: {{name: mnist, root: '{tmp_path / "data"}'}}
        """
    )
    user_error("fit", config, expect=["data.root", str(raw), "uncompressed (gunzip)"])


# ---------------------------------------------------------------- CIFAR-10


@pytest.fixture
def cifar10_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any, list[int]]:
    """CIFAR-10 batches of 8 images (40 train, 16 test) whose md5 torchvision checks.

    torchvision compares each file's md5 with the official one; the class's file lists are
    pointed at these files' md5, so the real integrity check runs (and passes) on them.
    """
    root = tmp_path / "data"
    md5, rows, labels = write_cifar10(root, per_batch=8, test=16)
    cls = torchvision.datasets.CIFAR10
    train_list = [[name, md5[name]] for name, _ in cls.train_list]
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    return root, rows, labels


def test_cifar10_python_batches_train_one_epoch(cifar10_root, fit) -> None:
    root, _, _ = cifar10_root
    record = fit(
        "{name: small_cnn, num_classes: 10, width: 4}",
        f"{{name: cifar10, root: '{root}', batch_size: 8}}",
    )
    assert record["step"] == 5  # data_batch_1..5, 8 images each
    assert_val_acc_over(record, 16)


def test_cifar10_default_transforms_are_the_normalized_rows(cifar10_root) -> None:
    root, rows, labels = cifar10_root
    config = DataConfig(name="cifar10", root=str(root), batch_size=40, shuffle=False)
    train, _ = build_loaders(config, seed=0, device=CPU)
    images, targets = first_batch(train)
    assert type(images) is torch.Tensor
    assert images.shape == (40, 3, 32, 32)
    # A row is 1024 red, 1024 green, 1024 blue values, each plane row-major.
    torch.testing.assert_close(images, normalized(rows.reshape(-1, 3, 32, 32), "cifar10"))
    assert targets.tolist() == labels


def test_cifar10_files_that_fail_the_md5_check_are_an_error(
    tmp_path: Path, write_config, user_error
) -> None:
    write_cifar10(tmp_path / "data", per_batch=2, test=2)  # not the official files' md5
    config = write_config(
        f"""
        model: {{name: small_cnn, width: 4}}
        data: {{name: cifar10, root: '{tmp_path / "data"}'}}
        trainer: {{epochs: 1, device: cpu}}
        """
    )
    folder = tmp_path / "data" / "cifar-10-batches-py"
    user_error("fit", config, expect=["error: data.root: ", str(folder)])


# ---------------------------------------------------------------- ImageFolder


def test_image_folder_of_pngs_trains_with_configured_transforms(tmp_path: Path, fit) -> None:
    write_image_folder(tmp_path / "images", classes=["cat", "dog"], train=3, val=2)
    transforms = "[{name: Resize, size: 8}]"
    record = fit(
        "{name: small_cnn, num_classes: 2, width: 4}",
        f"{{name: image_folder, root: '{tmp_path / 'images'}', batch_size: 2, "
        f"train_transforms: {transforms}, val_transforms: {transforms}}}",
    )
    assert record["step"] == 3  # 6 images in batches of 2
    assert_val_acc_over(record, 4)


def test_image_folder_trains_with_the_default_224_crops(tmp_path: Path, fit) -> None:
    write_image_folder(tmp_path / "images", classes=["cat", "dog"], train=2, val=1)
    record = fit(
        "{name: small_cnn, num_classes: 2, width: 4}",
        f"{{name: image_folder, root: '{tmp_path / 'images'}', batch_size: 2}}",
    )
    assert record["step"] == 2
    assert_val_acc_over(record, 2)


def test_image_folder_batches_are_the_png_pixels_by_sorted_class(tmp_path: Path) -> None:
    root = tmp_path / "images"
    write_image_folder(root, classes=["dog", "cat"], train=2, val=1)
    config = DataConfig(
        name="image_folder",
        root=str(root),
        batch_size=4,
        shuffle=False,
        train_transforms=[{"name": "Resize", "size": 16}],
    )
    train, _ = build_loaders(config, seed=0, device=CPU)
    images, targets = first_batch(train)
    paths = [root / "train" / name / f"{n}.png" for name in ("cat", "dog") for n in range(2)]
    expected = np.stack([np.asarray(Image.open(path)) for path in paths]).transpose(0, 3, 1, 2)
    assert targets.tolist() == [0, 0, 1, 1]  # classes in sorted order: cat, dog
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, torch.from_numpy(expected).float() / 255)


def test_image_folder_default_transforms_crop_to_224(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "images", classes=["cat", "dog"], train=1, val=1)
    config = DataConfig(name="image_folder", root=str(tmp_path / "images"), batch_size=2)
    train, val = build_loaders(config, seed=0, device=CPU)
    for loader in (train, val):
        images, _ = first_batch(loader)
        assert images.shape == (2, 3, 224, 224)
        assert images.dtype == torch.float32


# ---------------------------------------------------------------- fake_data, shapes, import paths


def test_fake_data_trains_one_epoch(fit) -> None:
    record = fit(
        "{name: small_cnn, num_classes: 4, width: 4}",
        "{name: fake_data, size: 24, image_size: [3, 16, 16], num_classes: 4, batch_size: 8}",
    )
    assert record["step"] == 3
    assert_val_acc_over(record, 24)


def test_shapes_trains_one_epoch(fit) -> None:
    record = fit(
        "{name: small_cnn, num_classes: 3, width: 4}",
        "{name: shapes, size: 48, image_size: 16, num_classes: 3, batch_size: 16}",
    )
    assert record["step"] == 3
    assert_val_acc_over(record, 48)  # `size` sets both splits


@pytest.fixture
def dataset_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, dict[str, Any]]]:
    """The calls of `helpers.data:my_dataset` made by this test."""
    monkeypatch.setattr(helpers.data, "CALLS", [])
    return helpers.data.CALLS


def test_import_path_dataset_is_called_once_per_split(fit, dataset_calls) -> None:
    record = fit(
        "{name: small_cnn, in_channels: 1, num_classes: 3, width: 4}",
        "{name: 'helpers.data:my_dataset', size: 20, num_classes: 3, batch_size: 8}",
    )
    assert dataset_calls == [
        (True, {"size": 20, "num_classes": 3}),
        (False, {"size": 20, "num_classes": 3}),
    ]
    assert record["step"] == 3


def test_import_path_dataset_without_transform_rejects_transforms(
    tmp_path: Path, write_config, user_error, dataset_calls
) -> None:
    config = write_config(
        """
        model: {name: small_cnn, in_channels: 1, num_classes: 3}
        data:
          name: helpers.data:my_dataset
          size: 8
          train_transforms: [{name: RandomHorizontalFlip}]
        trainer: {epochs: 1, device: cpu}
        """
    )
    user_error("fit", config, expect=["data.train_transforms", "takes no transform argument"])
    assert dataset_calls == []


# ---------------------------------------------------------------- missing files, downloads


@pytest.mark.parametrize(
    ("name", "folder", "how"),
    [
        ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "data.download: true"]),
        ("fashion_mnist", "FashionMNIST/raw", ["Fashion-MNIST idx files", "data.download: true"]),
        ("cifar10", "cifar-10-batches-py", ["cifar-10-python.tar.gz", "data.download: true"]),
        ("cifar100", "cifar-100-python", ["cifar-100-python.tar.gz", "data.download: true"]),
        ("image_folder", "train", ["root/train/<class>/*", "root/val/<class>/*"]),
    ],
)
def test_missing_files_name_the_root_the_folder_and_how_to_get_them(
    name: str, folder: str, how: list[str], tmp_path: Path, write_config, user_error
) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    download = "" if name == "image_folder" else ", download: false"
    config = write_config(
        f"""
        model: {{name: small_cnn, width: 4}}
        data: {{name: {name}, root: '{root}'{download}}}
        trainer: {{epochs: 1, device: cpu}}
        """
    )
    user_error("fit", config, expect=["error: data.root: ", str(root / folder), *how])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """urlopen raises URLError, as with no network; returns the URLs that were tried."""
    tried = []

    def urlopen(request: Any, *args: Any, **kwargs: Any) -> Any:
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return tried


@pytest.mark.parametrize(
    "name",
    [
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
    ],
)
def test_failed_download_is_a_user_error(
    name: str, tmp_path: Path, write_config, user_error, offline
) -> None:
    config = write_config(
        f"""
        model: {{name: small_cnn, width: 4}}
        data: {{name: {name}, root: '{tmp_path / "data"}', download: true}}
        trainer: {{epochs: 1, device: cpu}}
        """
    )
    stderr = user_error("fit", config, expect=["error: data.download: ", "failed", "offline"])
    assert offline, "no download was attempted"
    assert "no network in tests" in stderr


# ---------------------------------------------------------------- transforms

CROP_AND_NORMALIZE = [
    {"name": "RandomCrop", "size": 32, "padding": 4},
    {"name": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
]


def test_random_crop_and_normalize_train(fit) -> None:
    record = fit(
        "{name: small_cnn, num_classes: 4, width: 4}",
        "{name: fake_data, size: 16, num_classes: 4, batch_size: 8, train_transforms: "
        "[{name: RandomCrop, size: 32, padding: 4}, "
        "{name: Normalize, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}]}",
    )
    assert record["step"] == 2


def test_random_crop_pads_with_zeros_before_normalize() -> None:
    config = DataConfig(
        name="fake_data", size=16, num_classes=4, batch_size=16, train_transforms=CROP_AND_NORMALIZE
    )
    train, val = build_loaders(config, seed=0, device=CPU)
    images, _ = first_batch(train)
    assert images.shape == (16, 3, 32, 32)
    assert images.dtype == torch.float32
    # Pixels in [0, 1] normalize into [-2, 2]; zero padding is exactly -2.
    assert images.min().item() == -2.0
    assert images.max().item() <= 2.0
    # The validation split keeps the default: float pixels in [0, 1].
    val_images, _ = first_batch(val)
    assert val_images.min().item() >= 0.0
    assert val_images.max().item() <= 1.0


@pytest.mark.parametrize("split", ["train_transforms", "val_transforms"])
def test_unknown_transform_suggests_the_closest(split: str, write_config, user_error) -> None:
    config = write_config(
        f"""
        model: {{name: small_cnn, width: 4}}
        data:
          name: fake_data
          {split}: [{{name: RandomCorp, size: 32}}]
        trainer: {{epochs: 1, device: cpu}}
        """
    )
    user_error(
        "fit",
        config,
        expect=[f"data.{split}.0.name: unknown 'RandomCorp'; did you mean 'RandomCrop'?"],
    )


def test_bad_transform_keyword_names_its_index_and_key(write_config, user_error) -> None:
    config = write_config(
        """
        model: {name: small_cnn, width: 4}
        data:
          name: fake_data
          train_transforms:
            - {name: RandomHorizontalFlip}
            - {name: RandomCrop, size: 32, padd: 4}
        trainer: {epochs: 1, device: cpu}
        """
    )
    user_error(
        "fit",
        config,
        expect=["data.train_transforms.1.padd: not an argument of RandomCrop", "'padding'"],
    )


@pytest.fixture
def dataset_on_disk(tmp_path: Path, cifar10_root) -> Callable[[str], dict[str, Any]]:
    """`dataset_on_disk(name)`: DataConfig keywords of a tiny copy of that dataset."""

    def make(name: str) -> dict[str, Any]:
        if name == "mnist":
            write_mnist(tmp_path / "mnist" / "MNIST" / "raw", train=4, test=4)
            return {"root": str(tmp_path / "mnist")}
        if name == "cifar10":
            return {"root": str(cifar10_root[0])}
        if name == "image_folder":
            write_image_folder(tmp_path / "images", classes=["a", "b"], train=2, val=2)
            return {"root": str(tmp_path / "images")}
        return {"size": 4, "image_size": [3, 8, 8]}

    return make


@pytest.mark.parametrize("name", ["mnist", "cifar10", "image_folder", "fake_data"])
def test_default_transforms_yield_float32_tensors(name: str, dataset_on_disk) -> None:
    config = DataConfig(name=name, batch_size=4, **dataset_on_disk(name))
    for loader in build_loaders(config, seed=0, device=CPU):
        images, targets = first_batch(loader)
        assert isinstance(images, torch.Tensor)
        assert images.dtype == torch.float32
        assert targets.dtype == torch.int64


def test_configured_transforms_are_prefixed_with_the_float_conversion() -> None:
    flip = DataConfig(
        name="fake_data",
        size=4,
        image_size=[3, 8, 8],
        batch_size=4,
        shuffle=False,
        train_transforms=[{"name": "RandomVerticalFlip", "p": 0.0}],
    )
    images, _ = first_batch(build_loaders(flip, seed=0, device=CPU)[0])
    assert images.dtype == torch.float32
    assert 0.0 <= images.min().item() <= images.max().item() <= 1.0


def test_a_list_that_converts_itself_is_used_as_written() -> None:
    config = DataConfig(
        name="fake_data",
        size=4,
        image_size=[3, 8, 8],
        batch_size=4,
        train_transforms=[{"name": "PILToTensor"}],
    )
    images, _ = first_batch(build_loaders(config, seed=0, device=CPU)[0])
    assert images.dtype == torch.uint8
    assert images.shape == (4, 3, 8, 8)


# ---------------------------------------------------------------- val_fraction


def split_indices(seed: int, **kwargs: Any) -> tuple[list[int], list[int], Subset, Subset]:
    config = DataConfig(name="shapes", size=40, image_size=8, val_fraction=0.25, **kwargs)
    train, val = build_datasets(config, seed=seed)
    assert isinstance(train, Subset)
    assert isinstance(val, Subset)
    return list(train.indices), list(val.indices), train, val


def test_val_fraction_carves_disjoint_parts_of_the_right_sizes() -> None:
    train, val, _, _ = split_indices(0)
    assert (len(train), len(val)) == (30, 10)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(40))


def test_val_fraction_split_is_fixed_by_the_seed() -> None:
    first, again, other = split_indices(0), split_indices(0), split_indices(1)
    assert first[:2] == again[:2]
    assert first[1] != other[1]
    assert sorted(other[0] + other[1]) == list(range(40))


def test_val_fraction_takes_both_parts_from_the_training_split() -> None:
    _, val_indices, train, val = split_indices(0)
    assert torch.equal(train.dataset.images, val.dataset.images)
    whole = build_datasets(DataConfig(name="shapes", size=40, image_size=8), seed=0)[0]
    index = val_indices[0]
    assert torch.equal(val[0][0], whole[index][0])


def test_val_fraction_gives_each_part_its_own_transforms() -> None:
    halve = [{"name": "Normalize", "mean": [0.0] * 3, "std": [2.0] * 3}]
    _, val_indices, train, val = split_indices(0, train_transforms=halve)
    whole = build_datasets(DataConfig(name="shapes", size=40, image_size=8), seed=0)[0]
    torch.testing.assert_close(train[0][0], whole[train.indices[0]][0] / 2)
    assert torch.equal(val[0][0], whole[val_indices[0]][0])


def test_val_fraction_trains_on_the_rest(fit) -> None:
    record = fit(
        "{name: small_cnn, num_classes: 3, width: 4}",
        "{name: shapes, size: 48, image_size: 16, num_classes: 3, batch_size: 12, "
        "val_fraction: 0.25}",
    )
    assert record["step"] == 3  # 36 training samples in batches of 12
    assert_val_acc_over(record, 12)


# ---------------------------------------------------------------- loaders


def shapes_config(**kwargs: Any) -> DataConfig:
    return DataConfig(**{"name": "shapes", "size": 40, "image_size": 8, **kwargs})


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [16, 16, 8]), (True, [16, 16])])
def test_drop_last_changes_the_batch_count(drop_last: bool, sizes: list[int]) -> None:
    train, _ = build_loaders(shapes_config(batch_size=16, drop_last=drop_last), seed=0, device=CPU)
    assert len(train) == len(sizes)
    assert [len(targets) for _, targets in train] == sizes


def test_drop_last_trains_fewer_steps(fit) -> None:
    record = fit(
        "{name: small_cnn, num_classes: 3, width: 4}",
        "{name: shapes, size: 40, image_size: 8, num_classes: 3, batch_size: 16, drop_last: true}",
    )
    assert record["step"] == 2


def test_two_workers_train(fit) -> None:
    record = fit(
        "{name: small_cnn, num_classes: 4, width: 4}",
        "{name: fake_data, size: 16, image_size: [3, 8, 8], num_classes: 4, batch_size: 4, "
        "num_workers: 2}",
    )
    assert record["step"] == 4


def test_persistent_workers_train_two_epochs(fit) -> None:
    record = fit(
        "{name: small_cnn, num_classes: 4, width: 4}",
        "{name: fake_data, size: 8, image_size: [3, 8, 8], num_classes: 4, batch_size: 4, "
        "num_workers: 1, persistent_workers: true}",
        epochs=2,
    )
    assert record["step"] == 4


@pytest.mark.parametrize(("workers", "persistent"), [(0, False), (1, True)])
def test_persistent_workers_only_with_workers(workers: int, persistent: bool) -> None:
    config = shapes_config(num_workers=workers, persistent_workers=True)
    for loader in build_loaders(config, seed=0, device=CPU):
        assert loader.persistent_workers is persistent


@pytest.mark.parametrize(
    ("device", "setting", "pinned"),
    [("cpu", None, False), ("cuda", None, True), ("cuda", False, False), ("cpu", True, True)],
)
def test_pin_memory_defaults_to_the_device(device: str, setting: bool | None, pinned: bool) -> None:
    config = shapes_config(pin_memory=setting)
    for loader in build_loaders(config, seed=0, device=torch.device(device)):
        assert loader.pin_memory is pinned


def test_tensor_dataset_batches_by_indexing_equal_per_sample_collation() -> None:
    train, val = build_loaders(shapes_config(batch_size=16), seed=3, device=CPU)
    for loader in (train, val):
        assert loader.batch_sampler is None  # whole batches: the sampler yields index lists
        order = list(loader.sampler)
        assert [len(batch) for batch in order] == [16, 16, 8]
        collated = DataLoader(loader.dataset, batch_sampler=order)
        pairs = list(zip(loader, collated, strict=True))
        for (images, targets), (one_by_one, their_targets) in pairs:
            assert torch.equal(images, one_by_one)
            assert torch.equal(targets, their_targets)


def test_worker_batches_equal_whole_batch_indexing() -> None:
    in_process = build_loaders(shapes_config(batch_size=16), seed=3, device=CPU)[0]
    workers = build_loaders(shapes_config(batch_size=16, num_workers=2), seed=3, device=CPU)[0]
    assert workers.batch_sampler is not None  # per-sample collation in the workers
    for (images, targets), (their_images, their_targets) in zip(in_process, workers, strict=True):
        assert torch.equal(images, their_images)
        assert torch.equal(targets, their_targets)


# ---------------------------------------------------------------- trainer list


def listed(output: str) -> dict[str, str]:
    """The rows of a `trainer list` table: name -> description."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 4 and cells[1]:
            rows[cells[1]] = cells[2]
    return rows


def test_list_datasets_describes_each_built_in(run_cli) -> None:
    result = run_cli("list", "datasets")
    assert result.exit_code == 0, result.output
    rows = listed(result.stdout)
    assert list(rows) == list(BUILT_IN)
    assert all(rows[name] for name in BUILT_IN)
    assert "MNIST" in rows["mnist"]
    assert "root/train/<class>" in rows["image_folder"]


def test_list_transforms_shows_random_crop(run_cli) -> None:
    result = run_cli("list", "transforms")
    assert result.exit_code == 0, result.output
    rows = listed(result.stdout)
    assert rows["RandomCrop"]
    assert {"Normalize", "Resize", "ToImage", "ToDtype"} <= set(rows)
