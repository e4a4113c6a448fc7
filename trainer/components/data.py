"""Loaders: datasets split and transformed as configured, and the epoch-ordered sampler.

The order of every epoch is a pure function of (seed, epoch), so a resumed run can replay
an epoch and skip the batches it already trained on without loading them; the randomness of
each sample (random transforms) is a pure function of (seed, epoch, index), in DataLoader
workers as in the main process, so the batches a resume loads are the same. Datasets held in
memory as tensors (TensorDataset) are batched by indexing whole batches, not by collating
samples one by one (scripts/bench.py measures the difference).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    Sampler,
    Subset,
    TensorDataset,
    get_worker_info,
)

from trainer.components import registry
from trainer.components.transforms import build_transform, resolved_specs
from trainer.errors import UserError
from trainer.interrupt import ignore_in_workers

if TYPE_CHECKING:
    from trainer.config import DataConfig


@functools.lru_cache(maxsize=64)
def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed mixed from both numbers (torch's CPU generator keeps only 32 bits)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch]).generate_state(1)[0])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one sample of one epoch (splitmix64 of the epoch's seed and index)."""
    mask = 0xFFFFFFFFFFFFFFFF
    value = ((epoch_seed(seed, epoch) << 32 | index & 0xFFFFFFFF) + 0x9E3779B97F4A7C15) & mask
    value = ((value ^ value >> 30) * 0xBF58476D1CE4E5B9) & mask
    value = ((value ^ value >> 27) * 0x94D049BB133111EB) & mask
    return value ^ value >> 31


class SeededSamples(Dataset):
    """A training set whose every sample draws its randomness (random transforms) from torch's
    generator seeded by (seed, epoch, index), in a DataLoader worker and in the main process
    alike: a resumed epoch loads exactly what the uninterrupted one loaded. Keys are
    (epoch, index) pairs, as an EpochSampler with `keyed=True` yields them."""

    def __init__(self, dataset: Dataset, *, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return dataset_size(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        generator = torch.default_generator
        if get_worker_info() is not None:  # a worker's generator serves its samples alone
            generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]
        state = generator.get_state()  # the main process's stream (dropout...) is left as it was
        generator.manual_seed(sample_seed(self.seed, epoch, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class EpochSampler(Sampler[Any]):  # int indices, or (epoch, index) keys when `keyed`
    """Indices of one epoch, in an order fixed by (seed, epoch); can start part-way through.

    Under torch.distributed each rank takes every `world_size`-th index of the order (padded
    to a multiple of world_size, as DistributedSampler does), so the ranks together see each
    sample once per epoch. `start` counts samples of the whole job, so an epoch stopped by N
    processes can go on with M.
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        keyed: bool = False,
    ) -> None:
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.keyed = keyed  # yield (epoch, index) pairs, the keys of SeededSamples
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, *, start: int = 0) -> None:
        """Select the epoch's order, beginning at sample `start` (to resume mid-epoch)."""
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        """This epoch's order from `start` on, padded to a multiple of world_size with the
        first indices of the epoch (as DistributedSampler pads), so every rank gets as many
        batches as the others, whatever `start` is."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        rest = order[self.start :]
        return rest + order[: -len(rest) % self.world_size]

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        if self.world_size == 1 and not self.shuffle:
            indices: Iterable[int] = range(self.start, self.size)
        else:
            indices = self._order()[self.rank :: self.world_size]
        if self.keyed:
            return ((self.epoch, index) for index in indices)
        return iter(indices)

    def __len__(self) -> int:
        remaining = self.size - self.start
        return -(-remaining // self.world_size)


def build_datasets(config: DataConfig, *, seed: int) -> tuple[Dataset, Dataset]:
    """The train and validation datasets, each with its transforms.

    The dataset callable is called with train=True / False; with `val_fraction`, both
    splits are carved (deterministically, from `seed`) out of the train=True dataset.
    """
    fn = registry.resolve("datasets", config.name, key="data.name")
    transforms = {
        train: build_transform(
            resolved_specs(getattr(config, f"{split}_transforms"), config.name, train=train),
            key=f"data.{split}_transforms",
        )
        for train, split in ((True, "train"), (False, "val"))
    }
    takes_transform = registry.accepts(fn, "transform")
    if not takes_transform and (config.train_transforms or config.val_transforms):
        raise UserError(f"data.train_transforms: {config.name!r} takes no transform argument")

    def build(train: bool, transform_of: bool) -> Dataset:
        extra = {"transform": transforms[transform_of]} if takes_transform else {}
        if not takes_transform or transforms[transform_of] is None:
            extra = {}
        return registry.build(
            "datasets", config.name, config.kwargs, key="data", train=train, **extra
        )

    if config.val_fraction is None:
        return build(True, True), build(False, False)
    train_set = build(True, True)
    size = dataset_size(train_set)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    val_size = val_split_size(size, config.val_fraction)
    val_part, train_part = order[:val_size].tolist(), order[val_size:].tolist()
    return Subset(train_set, train_part), Subset(build(True, False), val_part)


def build_loaders(
    config: DataConfig, *, seed: int, device: torch.device, rank: int = 0, world_size: int = 1
) -> tuple[Loader, Loader]:
    """Train and validation loaders; the train order comes from an EpochSampler.

    Under torch.distributed (`world_size` > 1) each rank gets its share of both sets;
    `batch_size` is per process.
    """
    train_set, val_set = build_datasets(config, seed=seed)
    _check_train_set(train_set, config, world_size=world_size)
    workers = config.num_workers
    pin_memory = device.type == "cuda" if config.pin_memory is None else config.pin_memory
    # Samples loaded one by one (by workers, or through transforms) are seeded per sample;
    # whole batches cut from tensors have no randomness to seed.
    seeded = not (_indexable(train_set) and workers == 0)
    if seeded:
        train_set = SeededSamples(train_set, seed=seed)
    sampler = EpochSampler(
        dataset_size(train_set),
        shuffle=config.shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        keyed=seeded,
    )
    batches = BatchSampler(sampler, config.batch_size, drop_last=config.drop_last)
    val_batches = BatchSampler(
        range(rank, dataset_size(val_set), world_size),
        config.val_batch_size or config.batch_size,
        drop_last=False,
    )
    train = _loader(train_set, batches, config, seed=seed, pin_memory=pin_memory)
    val = _loader(val_set, val_batches, config, seed=seed, pin_memory=pin_memory)
    return train, val


def _check_train_set(train_set: Dataset, config: DataConfig, *, world_size: int) -> None:
    """A map-style dataset with at least one batch per process."""
    if not hasattr(train_set, "__getitem__") or not hasattr(train_set, "__len__"):
        raise UserError(
            f"data.name: {config.name!r} returned a {type(train_set).__name__}, "
            "not a map-style dataset"
        )
    size = dataset_size(train_set)
    per_process = count_batches(
        size, config.batch_size, drop_last=config.drop_last, world_size=world_size
    )
    if per_process == 0:
        raise UserError(
            f"data.batch_size: {config.batch_size} leaves no batch in an epoch of "
            f"{size} samples ({world_size} process(es), drop_last: "
            f"{str(config.drop_last).lower()})"
        )


def _loader(
    dataset: Dataset,
    batch_sampler: BatchSampler,
    config: DataConfig,
    *,
    seed: int,
    pin_memory: bool,
) -> Loader:
    """Whole batches indexed from in-memory tensors, or a DataLoader (workers, collation)."""
    # Its own generator: making an iterator then draws no number from the global RNG.
    generator = torch.Generator().manual_seed(seed)
    workers = config.num_workers
    if _indexable(dataset) and workers == 0:
        # Whole batches by indexing the tensors: no per-sample collation.
        return IndexedBatches(
            dataset, batch_sampler, pin_memory=pin_memory, generator=generator
        )
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=config.persistent_workers and workers > 0,
        worker_init_fn=ignore_in_workers if workers > 0 else None,
        generator=generator,
    )


class IndexedBatches:
    """Whole batches cut from in-memory tensors by index, in the sampler's order: what a
    DataLoader with `batch_size=None` yields, without its per-batch machinery (the hot
    path's largest cost on small models; scripts/bench.py measures it)."""

    batch_sampler = None  # like a DataLoader whose sampler yields whole batches
    num_workers, persistent_workers = 0, False

    def __init__(
        self,
        dataset: TensorDataset,
        sampler: BatchSampler,
        *,
        pin_memory: bool,
        generator: torch.Generator,
    ) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.pin_memory, self.generator = pin_memory, generator

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # The epoch's order goes to the tensors' device once, not an index copy per batch.
        batches = list(self.sampler)
        device = self.dataset.tensors[0].device
        order = torch.tensor([i for batch in batches for i in batch], device=device)
        pin = self.pin_memory and device.type == "cpu"
        for index in order.split([len(batch) for batch in batches]):
            batch = self.dataset[index]
            yield tuple(t.pin_memory() for t in batch) if pin else batch


Loader = DataLoader | IndexedBatches  # what build_loaders returns


def _indexable(dataset: Dataset) -> TypeGuard[TensorDataset]:
    """Tensors in memory that a list of indices turns into a batch directly."""
    from trainer.components.datasets import Shapes

    item = type(dataset).__getitem__
    plain = item is TensorDataset.__getitem__ or item is Shapes.__getitem__
    return plain and getattr(dataset, "transform", None) is None


def dataset_notes(*loaders: Loader) -> list[str]:
    """What the datasets behind `loaders` say for the run's log (a dataset's `notes`, a list
    of strings: markov_text's entropy rate), each note once."""
    notes: list[str] = []
    for loader in loaders:
        dataset = loader.dataset
        while not hasattr(dataset, "notes") and hasattr(dataset, "dataset"):
            dataset = dataset.dataset  # SeededSamples, Subset
        notes += getattr(dataset, "notes", [])
    return list(dict.fromkeys(notes))


def dataset_size(dataset: Dataset) -> int:
    """Samples in a map-style dataset (torch's Dataset type does not promise a length)."""
    return len(cast(Sized, dataset))


def _epoch_sampling(loader: Loader) -> tuple[BatchSampler, EpochSampler]:
    """A training loader's batch sampler and the EpochSampler it draws from."""
    batches = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    if not isinstance(batches, BatchSampler) or not isinstance(batches.sampler, EpochSampler):
        raise TypeError(f"not a training loader of build_loaders: {loader!r}")
    return batches, batches.sampler


def count_batches(size: int, batch_size: int, *, drop_last: bool, world_size: int = 1) -> int:
    """Batches of one process in an epoch over `size` samples shared by `world_size`."""
    per_process = -(-size // world_size)
    return per_process // batch_size if drop_last else -(-per_process // batch_size)


def batches_per_epoch(loader: Loader) -> int:
    """Batches of this process in a whole epoch, wherever the sampler starts now."""
    batch_sampler, sampler = _epoch_sampling(loader)
    return count_batches(
        sampler.size,
        batch_sampler.batch_size,
        drop_last=batch_sampler.drop_last,
        world_size=sampler.world_size,
    )


def start_epoch(loader: Loader, epoch: int, *, seed: int, skip_samples: int = 0) -> int:
    """Fix the epoch's order and worker seeds, skipping the samples (of all ranks) a resumed
    run already trained on; returns this process's batches left in the epoch."""
    _epoch_sampling(loader)[1].set_epoch(epoch, start=skip_samples)
    loader.generator.manual_seed(epoch_seed(seed, epoch))
    return len(loader)


def val_split_size(size: int, val_fraction: float) -> int:
    """Samples `val_fraction` carves out of a training set of `size`."""
    return max(1, round(size * val_fraction))


def train_batches(config: DataConfig) -> int:
    """Batches in a training epoch of one process (builds the training set, loads no batch)."""
    size = len(registry.build("datasets", config.name, config.kwargs, key="data", train=True))
    if config.val_fraction:
        size -= val_split_size(size, config.val_fraction)
    return count_batches(size, config.batch_size, drop_last=config.drop_last)
