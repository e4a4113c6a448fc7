"""trainer.components.data: the offline `shapes` dataset and the epoch-ordered sampler."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.components.data import EpochSampler, build_datasets, start_epoch
from trainer.components.datasets import SHAPES, Shapes, shapes
from trainer.config import DataConfig


def small(train: bool = True, **kwargs) -> Shapes:
    return shapes(train, **{"size": 32, "image_size": 8, **kwargs})


# ---------------------------------------------------------------- shapes


def test_shapes_items_are_image_and_class_index() -> None:
    data = small(size=20, image_size=12, num_classes=3, channels=1)
    assert len(data) == 20
    image, target = data[0]
    assert image.shape == (1, 12, 12)
    assert image.dtype == torch.float32
    assert target.dtype == torch.int64
    assert set(data.targets.tolist()) <= {0, 1, 2}
    assert data.classes == list(SHAPES[:3])


def test_shapes_is_deterministic_per_seed() -> None:
    first, again = small(seed=3), small(seed=3)
    assert torch.equal(first.images, again.images)
    assert torch.equal(first.targets, again.targets)
    other = small(seed=4)
    assert not torch.equal(first.images, other.images)


def test_shapes_train_and_val_differ() -> None:
    train, val = small(True, seed=0), small(False, seed=0)
    assert not torch.equal(train.images, val.images)
    # Neither split is the other split of a neighbouring seed.
    assert not torch.equal(small(False, seed=0).images, small(True, seed=1).images)


def test_shapes_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    small()
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("num_classes", [1, len(SHAPES) + 1])
def test_shapes_rejects_a_class_count_it_cannot_draw(num_classes: int) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        small(num_classes=num_classes)


def test_build_datasets_calls_the_dataset_once_per_split() -> None:
    config = DataConfig(name="shapes", size=16, image_size=8, seed=5)
    train, val = build_datasets(config, seed=0)
    assert torch.equal(train.images, small(True, size=16, seed=5).images)
    assert torch.equal(val.images, small(False, size=16, seed=5).images)


# ---------------------------------------------------------------- EpochSampler


def order(size: int, *, seed: int, epoch: int, start: int = 0, shuffle: bool = True) -> list[int]:
    sampler = EpochSampler(size, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch, start=start)
    return list(sampler)


def test_epoch_sampler_yields_a_permutation() -> None:
    indices = order(50, seed=0, epoch=1)
    assert sorted(indices) == list(range(50))
    assert indices != list(range(50))


def test_epoch_sampler_order_is_fixed_per_epoch() -> None:
    assert order(50, seed=0, epoch=1) == order(50, seed=0, epoch=1)
    assert order(50, seed=0, epoch=1) != order(50, seed=0, epoch=2)


def test_epoch_sampler_order_depends_on_the_seed() -> None:
    assert order(50, seed=0, epoch=1) != order(50, seed=7, epoch=1)


def test_epoch_sampler_neighbouring_seeds_do_not_share_orders() -> None:
    assert order(50, seed=0, epoch=2) != order(50, seed=1, epoch=1)


def test_epoch_sampler_same_order_on_every_pass_of_an_epoch() -> None:
    sampler = EpochSampler(30, shuffle=True, seed=2)
    sampler.set_epoch(4)
    assert list(sampler) == list(sampler)


@pytest.mark.parametrize("start", [0, 1, 17, 50])
def test_epoch_sampler_start_yields_the_tail_of_the_same_order(start: int) -> None:
    full = order(50, seed=3, epoch=2)
    sampler = EpochSampler(50, shuffle=True, seed=3)
    sampler.set_epoch(2, start=start)
    assert list(sampler) == full[start:]
    assert len(sampler) == 50 - start


def test_epoch_sampler_without_shuffle_is_in_order() -> None:
    assert order(10, seed=0, epoch=3, shuffle=False) == list(range(10))
    assert order(10, seed=0, epoch=3, start=4, shuffle=False) == list(range(4, 10))


def test_start_epoch_skips_whole_batches_of_the_same_order() -> None:
    dataset = TensorDataset(torch.arange(20))
    loader = DataLoader(
        dataset,
        batch_size=3,
        sampler=EpochSampler(20, shuffle=True, seed=1),
        generator=torch.Generator(),
    )
    start_epoch(loader, 2, seed=1)
    full = [batch[0].tolist() for batch in loader]
    start_epoch(loader, 2, seed=1, skip_samples=2 * 3)
    resumed = [batch[0].tolist() for batch in loader]
    assert resumed == full[2:]
    start_epoch(loader, 3, seed=1)
    assert [batch[0].tolist() for batch in loader] != full


# ---------------------------------------------------------------- random transforms, per sample

AUGMENT = [
    {"name": "RandomHorizontalFlip"},
    {"name": "RandomCrop", "size": 8, "padding": 2},
]


def augmented_epoch(
    workers: int,
    *,
    epoch: int,
    skip_samples: int = 0,
    shuffle: bool = True,
    persistent: bool = False,
    epochs_before: int = 0,
) -> list[list]:
    """The training batches of `epoch` from `skip_samples` on, from loaders built fresh (as a
    resumed run builds them; `epochs_before` epochs are loaded first), with a random flip and
    a padded random crop."""
    from trainer.components.data import build_loaders

    config = DataConfig(
        name="shapes", size=48, image_size=8, batch_size=8, num_workers=workers,
        shuffle=shuffle, persistent_workers=persistent, train_transforms=AUGMENT,
    )  # fmt: skip
    loader, _ = build_loaders(config, seed=4, device=torch.device("cpu"))
    for earlier in range(epoch - epochs_before, epoch):
        start_epoch(loader, earlier, seed=4)
        list(loader)
    start_epoch(loader, epoch, seed=4, skip_samples=skip_samples)
    return list(loader)


def assert_same_batches(first: list[list], second: list[list]) -> None:
    assert len(first) == len(second)
    for ours, theirs in zip(first, second, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_loads_the_same_augmented_batches(workers: int) -> None:
    full = augmented_epoch(workers, epoch=2)
    resumed = augmented_epoch(workers, epoch=2, skip_samples=3 * 8)
    assert_same_batches(resumed, full[3:])


def test_persistent_workers_load_an_epoch_as_a_resumed_run_does() -> None:
    straight = augmented_epoch(2, epoch=2, persistent=True, epochs_before=1)
    resumed = augmented_epoch(2, epoch=2, skip_samples=2 * 8, persistent=True)
    assert_same_batches(resumed, straight[2:])


def test_augmentations_are_the_same_with_and_without_workers_and_new_each_epoch() -> None:
    in_process = augmented_epoch(0, epoch=2, shuffle=False)
    assert_same_batches(augmented_epoch(2, epoch=2, shuffle=False), in_process)
    next_epoch = augmented_epoch(0, epoch=3, shuffle=False)  # the same samples, other draws
    assert all(torch.equal(a[1], b[1]) for a, b in zip(in_process, next_epoch, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(in_process, next_epoch, strict=True))


def test_seeding_samples_leaves_the_main_process_generator_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    augmented_epoch(0, epoch=1)
    assert torch.equal(torch.rand(3), expected)


def test_a_keyed_sampler_yields_epoch_and_index() -> None:
    sampler = EpochSampler(6, shuffle=True, seed=0, keyed=True)
    sampler.set_epoch(5, start=2)
    assert list(sampler) == [(5, i) for i in order(6, seed=0, epoch=5, start=2)]
