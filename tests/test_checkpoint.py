"""trainer.checkpoint: plain-dict checkpoints, atomic writes, RNG state, retention."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_checkpoints,
    set_rng_state,
)
from trainer.config import CheckpointConfig
from trainer.errors import UserError


def draw() -> tuple:
    """Numbers from every RNG a run uses, including the cached-gaussian paths."""
    return (
        torch.rand(4),
        np.random.standard_normal(3).tolist(),
        np.random.standard_normal(),
        random.random(),
        random.gauss(0.0, 1.0),
    )


def assert_same_draws(first: tuple, second: tuple) -> None:
    assert torch.equal(first[0], second[0])
    assert first[1:] == second[1:]


@pytest.mark.parametrize("cached_gauss", [False, True])
def test_rng_state_round_trips_through_weights_only_load(cached_gauss: bool) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    if cached_gauss:  # leave a spare gaussian cached in numpy and python
        np.random.standard_normal()
        random.gauss(0.0, 1.0)
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    expected = draw()
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True))
    assert_same_draws(draw(), expected)


def test_set_rng_state_overrides_a_reseeded_generator() -> None:
    torch.manual_seed(10)
    state = rng_state()
    expected = draw()
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(state)
    assert_same_draws(draw(), expected)


def test_save_checkpoint_writes_atomically_and_leaves_no_temporary_file(tmp_path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.arange(3)})
    save_checkpoint(path, {"step": 2, "weights": torch.arange(4)})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 2
    assert torch.equal(loaded["weights"], torch.arange(4))


def epoch_checkpoint(epoch: int) -> dict:
    """The part of a checkpoint that save_checkpoints reads, plus a tensor to compare."""
    return {"epoch": epoch, "batch_in_epoch": 0, "model": {"w": torch.full((2,), epoch)}}


def test_load_checkpoint_missing_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")


def test_load_checkpoint_refuses_garbage_and_foreign_dicts(tmp_path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "epoch": 1}, foreign)
    with pytest.raises(UserError, match=r"not a trainer checkpoint \(missing optimizer, scheduler"):
        load_checkpoint(foreign)


def test_save_checkpoints_keeps_the_last_epochs_and_the_best(tmp_path) -> None:
    policy = CheckpointConfig(every_epochs=1, keep_last=2)
    for epoch in range(1, 6):
        save_checkpoints(tmp_path, epoch_checkpoint(epoch), policy, is_best=epoch == 3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "epoch-0004.pt", "epoch-0005.pt", "last.pt"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 5
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 3
    epoch_4 = torch.load(tmp_path / "epoch-0004.pt", weights_only=True)
    assert epoch_4["epoch"] == 4
    assert torch.equal(epoch_4["model"]["w"], torch.full((2,), 4))


def test_save_checkpoints_every_other_epoch(tmp_path) -> None:
    policy = CheckpointConfig(every_epochs=2, keep_last=None)
    for epoch in range(1, 6):
        save_checkpoints(tmp_path, epoch_checkpoint(epoch), policy, is_best=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch-0002.pt", "epoch-0004.pt", "last.pt"]
