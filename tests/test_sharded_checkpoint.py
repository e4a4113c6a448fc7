"""trainer.state.sharded / checkpoint.py: sharded checkpoints written by 2 gloo ranks (FSDP2
on CPU), read whole in one process, loaded at another world size, a full .pt loaded into a
sharded model, and a kill -9 at each moment of a save."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from helpers.sharded import GROUPS, NAME, adamw, job, save_one, spawn, tiny, train
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from trainer.engine.resume import find_checkpoint
from trainer.errors import UserError
from trainer.state.checkpoint import (
    load_checkpoint,
    read_checkpoint_shapes,
    save_checkpoint,
)
from trainer.state.files import moved_aside
from trainer.state.optimizer_keys import optimizer_state_by_index, optimizer_state_by_name
from trainer.state.sharded import RUNNER_FILE

TESTS = Path(__file__).resolve().parent


def assert_same_optimizer_state(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """The same parameter keys, the same tensors bit for bit, the same param_groups."""
    assert list(got["state"]) == list(expected["state"])
    for key, values in expected["state"].items():
        assert set(got["state"][key]) == set(values)
        for name, value in values.items():
            assert torch.equal(got["state"][key][name], value), (key, name)
    assert plain(got["param_groups"]) == plain(expected["param_groups"])


def plain(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """param_groups with tuples as lists: set_optimizer_state_dict(full_state_dict=True)
    gives AdamW's betas back as a list (the same numbers)."""
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]


def assert_same_model(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert not isinstance(got[name], dist.tensor.DTensor)
        assert torch.equal(got[name], tensor), name


def trained_plain() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """tiny(0) trained as the sharded jobs train it, in one process without FSDP."""
    model = tiny(0)
    optimizer = adamw(model)
    train(model, optimizer, 3)
    return model, optimizer


# ---------------------------------------------------------------- index <-> name


def test_by_name_is_what_get_optimizer_state_dict_gives_and_round_trips() -> None:
    model, optimizer = trained_plain()
    by_index = optimizer.state_dict()
    by_name = optimizer_state_by_name(by_index, GROUPS)
    assert list(by_name["state"]) == ["0.weight", "2.weight", "0.bias", "2.bias"]
    assert_same_optimizer_state(by_name, get_optimizer_state_dict(model, optimizer))
    assert_same_optimizer_state(optimizer_state_by_index(by_name, GROUPS), by_index)


def test_conversions_refuse_a_manifest_that_does_not_fit() -> None:
    model, optimizer = trained_plain()
    by_index = optimizer.state_dict()
    with pytest.raises(ValueError, match=r"param_groups hold \[2, 2\] parameters, the groups"):
        optimizer_state_by_name(by_index, {"decay": GROUPS["decay"]})
    by_name = get_optimizer_state_dict(model, optimizer)
    swapped = {"decay": ["2.weight", "0.weight"], "no_decay": GROUPS["no_decay"]}
    with pytest.raises(ValueError, match=r"param group 0 holds \['0.weight', '2.weight'\]"):
        optimizer_state_by_index(by_name, swapped)


# ---------------------------------------------------------------- 2 ranks, 1 rank


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sharded checkpoints saved at 1 and 2 ranks, each loaded at the other world size, and
    a full .pt (of the 1-rank save) loaded into a 2-rank sharded model. The one-rank jobs
    run in this process (a spawn costs seconds of imports)."""
    root = tmp_path_factory.mktemp("sharded")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    job(0, 1, str(root / "store-1"), [("save", str(root / "one"))])
    save_checkpoint(root / "full.pt", load_checkpoint(root / "one" / "last.pt").to_checkpoint())
    spawn(
        2,
        root / "store-2",
        ("save", root / "two"),
        ("load", root / "one" / "last.pt", root / "one-to-two.pt"),
        ("full", root / "full.pt", root / "full-to-two.pt"),
    )
    job(
        0,
        1,
        str(root / "store-3"),
        [("load", str(root / "two" / "last.pt"), str(root / "two-to-one.pt"))],
    )
    return root


def test_two_ranks_save_a_directory_that_one_process_reads_whole(jobs: Path) -> None:
    directory = jobs / "two"
    assert sorted(p.name for p in directory.iterdir()) == [
        "best.pt", "epoch-0001.pt", "full.pt", "last.pt",
    ]  # fmt: skip
    last = directory / "last.pt"
    assert last.is_dir()
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", RUNNER_FILE} <= {
        p.name for p in last.iterdir()
    }
    runner = torch.load(last / RUNNER_FILE, weights_only=True)
    assert runner["sharded"] == {"world_size": 2}
    assert "model" not in runner and "optimizers" not in runner
    full = torch.load(directory / "full.pt", weights_only=True)
    for name in ("last.pt", "best.pt", "epoch-0001.pt"):
        saved = load_checkpoint(directory / name)
        assert saved.position.epoch == 1 and saved.optimizers[NAME].groups == GROUPS
        assert_same_model(saved.model, full["model"])
        expected = optimizer_state_by_index(full["optimizer"], GROUPS)
        assert_same_optimizer_state(saved.optimizers[NAME].optimizer, expected)


def test_the_sharded_run_saves_what_the_plain_one_process_run_has(jobs: Path) -> None:
    model, optimizer = trained_plain()
    saved = load_checkpoint(jobs / "two" / "last.pt")
    assert_same_model(saved.model, model.state_dict())
    assert_same_optimizer_state(saved.optimizers[NAME].optimizer, optimizer.state_dict())


def test_a_checkpoint_saved_at_one_rank_loads_at_two_and_back(jobs: Path) -> None:
    for source, loaded in (("one", "one-to-two.pt"), ("two", "two-to-one.pt")):
        full = torch.load(jobs / source / "full.pt", weights_only=True)
        got = torch.load(jobs / loaded, weights_only=True)
        assert_same_model(got["model"], full["model"])
        assert_same_optimizer_state(got["optimizer"], full["optimizer"])


def test_a_full_pt_loads_into_a_sharded_model(jobs: Path) -> None:
    full = torch.load(jobs / "one" / "full.pt", weights_only=True)
    got = torch.load(jobs / "full-to-two.pt", weights_only=True)
    assert_same_model(got["model"], full["model"])
    assert_same_optimizer_state(got["optimizer"], full["optimizer"])


def test_shapes_are_read_without_the_tensors(jobs: Path) -> None:
    for path in (jobs / "two" / "last.pt", jobs / "full.pt"):
        shapes = read_checkpoint_shapes(path)
        assert {name: tuple(t.shape) for name, t in shapes.model.items()} == {
            "0.weight": (6, 4), "0.bias": (6,), "2.weight": (3, 6), "2.bias": (3,),
        }  # fmt: skip
        assert all(t.device.type == "meta" for t in shapes.model.values())
        groups = shapes.optimizers[NAME].optimizer["param_groups"]
        assert [g["params"] for g in groups] == [[0, 1], [2, 3]]
        assert groups[1]["weight_decay"] == 0.0


# ---------------------------------------------------------------- damaged directories


def copy_of(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


DAMAGES = {
    "no trainer.pt": (
        lambda d: (d / RUNNER_FILE).unlink(),
        "not a trainer checkpoint (a directory without trainer.pt)",
    ),
    "no metadata": (
        lambda d: (d / ".metadata").unlink(),
        "not a whole sharded checkpoint (no .metadata)",
    ),
    "a rank's shards lost": (
        lambda d: (d / "__1_0.distcp").unlink(),
        "not a readable sharded checkpoint (FileNotFoundError",
    ),
    "garbage metadata": (
        lambda d: (d / ".metadata").write_bytes(b"garbage"),
        "not a readable sharded checkpoint (UnpicklingError",
    ),
    "no marker": (
        lambda d: torch.save({"epoch": 1}, d / RUNNER_FILE),
        "not a sharded trainer checkpoint (no 'sharded' marker)",
    ),
}


@pytest.mark.parametrize(("damage", "message"), DAMAGES.values(), ids=DAMAGES)
def test_a_damaged_directory_is_a_user_error_naming_it(
    jobs: Path, tmp_path: Path, damage: Any, message: str
) -> None:
    directory = copy_of(jobs / "two" / "last.pt", tmp_path / "last.pt")
    damage(directory)
    with pytest.raises(UserError, match="not") as raised:
        load_checkpoint(directory)
    assert str(directory) in str(raised.value) and message in str(raised.value)


def test_metadata_that_unpickles_other_objects_is_refused(jobs: Path, tmp_path: Path) -> None:
    directory = copy_of(jobs / "two" / "last.pt", tmp_path / "last.pt")
    marker = tmp_path / "ran"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"

    class Evil:
        def __reduce__(self) -> tuple:
            return (exec, (payload,))

    import pickle

    (directory / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match=r"builtins.exec is not part of DCP metadata"):
        load_checkpoint(directory)
    assert not marker.exists()


# ---------------------------------------------------------------- kill -9 during a save


@pytest.fixture
def one_process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def weights_of(seed: int) -> dict[str, torch.Tensor]:
    model = tiny(seed)
    train(model, adamw(model), 1)
    return model.state_dict()


def equal_models(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(first[name], tensor) for name, tensor in second.items())


def readable(path: Path) -> Path:
    """Where a checkpoint is after a kill: its own name, or its moved-aside copy."""
    return path if path.exists() else moved_aside(path)


# The kill-th call of os.rename in the save: 1 DCP's .metadata, 2 last.pt moved aside, 3 the
# new last.pt renamed in, 4 the aside deleted, 5-7 the same for best.pt; of os.fsync: 1 the
# first DCP file. `new`: which checkpoints hold the killed save's weights after the kill.
KILLS = {
    "fsync:1": (),
    "rename:3": (),  # between the renames of last.pt: only its moved-aside copy is there
    "rename:4": ("last.pt",),
    "rename:6": ("last.pt",),  # between the renames of best.pt
}


@pytest.mark.parametrize(("kill", "new"), KILLS.items(), ids=KILLS)
def test_a_kill_during_a_sharded_save_leaves_the_previous_last_loadable(
    tmp_path: Path, one_process_group: None, kill: str, new: tuple[str, ...]
) -> None:
    checkpoints = tmp_path / "runs" / "tiny" / "checkpoints"
    save_one(checkpoints, 1, is_best=True)
    killed = subprocess.run(
        [sys.executable, "-m", "helpers.sharded", checkpoints, "2", kill, tmp_path / "s2"],
        cwd=TESTS, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert (checkpoints / "last.pt").exists() != (kill == "rename:3")
    assert (checkpoints / "best.pt").exists() != (kill == "rename:6")
    for name in ("last.pt", "best.pt"):
        saved = load_checkpoint(readable(checkpoints / name))
        assert equal_models(saved.model, weights_of(2 if name in new else 1)), name
    # --resume auto and --resume PATH find it, where last.pt is or where it was moved aside.
    last = checkpoints / "last.pt"
    found, _, _ = find_checkpoint("auto", run_base=checkpoints.parent, name="tiny")
    assert found == readable(last)
    found, _, notes = find_checkpoint(str(last), run_base=tmp_path, name="tiny")
    assert found == readable(last)
    assert bool(notes) == (kill == "rename:3")
    save_one(checkpoints, 3)  # the next save cleans up what the kill left
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["best.pt", "epoch-0001.pt", "epoch-0003.pt", "last.pt"], names
    assert equal_models(load_checkpoint(checkpoints / "last.pt").model, weights_of(3))
    assert equal_models(load_checkpoint(checkpoints / "best.pt").model, weights_of(1))
