"""trainer.state.checkpoint: plain-dict checkpoints, atomic writes, RNG state, retention."""

from __future__ import annotations

import errno
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.checkpoints import one_optimizer_layout, several_optimizers, valid_checkpoint

from trainer.config import CheckpointConfig
from trainer.errors import TrainingError, UserError
from trainer.state.checkpoint import (
    Position,
    RunState,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_checkpoints,
    set_rng_state,
    upgrade,
)


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


def epoch_checkpoint(epoch: int) -> RunState:
    """A state at the end of epoch `epoch`, with a tensor to compare."""
    checkpoint = valid_checkpoint() | {"epoch": epoch, "model": {"w": torch.full((2,), epoch)}}
    return RunState.from_checkpoint(checkpoint)


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
    with pytest.raises(UserError, match=r"not a trainer checkpoint \(missing optimizers, schedul"):
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


# ---------------------------------------------------------------- contents of the wrong shape


def test_a_valid_checkpoint_loads_in_either_optimizer_form(tmp_path: Path) -> None:
    for form in (valid_checkpoint(), several_optimizers(valid_checkpoint())):
        torch.save(form, tmp_path / "c.pt")
        loaded = load_checkpoint(tmp_path / "c.pt")
        assert torch.equal(loaded.model["weight"], form["model"]["weight"])


def test_a_modules_extra_state_is_not_a_tensor_and_is_fine(tmp_path: Path) -> None:
    checkpoint = valid_checkpoint()
    checkpoint["model"]["norm._extra_state"] = {"version": 2}
    torch.save(checkpoint, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt").model["norm._extra_state"] == {"version": 2}


def optimizer_without_param_groups() -> dict[str, Any]:
    return {"state": {}}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("model", [1, 2, 3], "'model' is [1, 2, 3] (list); expected a state_dict"),
        ("model", {"weight": 1.0}, "'model' is {'weight': 1.0} (dict); expected a state_dict"),
        ("epoch", "two", "'epoch' is 'two' (str); expected a whole number >= 0"),
        ("epoch", True, "'epoch' is True (bool); expected a whole number >= 0"),
        ("step", -1, "'step' is -1 (int); expected a whole number >= 0"),
        ("batch_in_epoch", 1.5, "'batch_in_epoch' is 1.5 (float)"),
        (
            "optimizers",
            {"optimizer": optimizer_without_param_groups()},
            "'optimizers' is {'optimizer': {'state': {}}} (dict)",
        ),
        (
            "optimizers",
            {"optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
            "expected optimizer name -> optimizer state_dict",
        ),
        (
            "schedulers",
            {"optimizer": [1]},
            "'schedulers' is {'optimizer': [1]} (dict); expected optimizer name -> null or a "
            "scheduler state_dict",
        ),
        ("scalers", {"optimizer": "x"}, "'scalers' is {'optimizer': 'x'} (dict)"),
        ("updates", {"optimizer": -1}, "'updates' is {'optimizer': -1} (dict)"),
        ("best", 5, "'best' is 5 (int); expected null or a dict of monitor, mode, value"),
        ("best", {"value": 1.0}, "'best' is {'value': 1.0} (dict)"),
        ("rng", {"torch": 1}, "'rng' is {'torch': 1} (dict); expected the RNG states"),
        ("rng_per_rank", [{}], "'rng_per_rank' is [{}] (list)"),
        (
            "groups",
            {"optimizer": {"default": [1]}},
            "'groups' is {'optimizer': {'default': [1]}} (dict); expected optimizer name -> group",
        ),
        ("config", "name: x", "'config' is 'name: x' (str); expected the resolved config"),
        ("metrics", [], "'metrics' is [] (list)"),
        ("samples_in_epoch", "0", "'samples_in_epoch' is '0' (str)"),
        ("epoch_sums", {"loss": "a"}, "'epoch_sums' is {'loss': 'a'} (dict)"),
        ("early_stopping", {"best": 1.0}, "'early_stopping' is {'best': 1.0} (dict)"),
    ],
)
def test_a_key_of_the_wrong_shape_is_named(
    tmp_path: Path, key: str, value: Any, expected: str
) -> None:
    torch.save(valid_checkpoint() | {key: value}, tmp_path / "c.pt")
    with pytest.raises(UserError) as raised:
        load_checkpoint(tmp_path / "c.pt")
    [problem] = raised.value.problems  # that key alone
    assert problem.startswith(f"{tmp_path / 'c.pt'}: not a trainer checkpoint: ")
    assert expected in problem


def test_every_key_of_the_wrong_shape_is_named_at_once(tmp_path: Path) -> None:
    torch.save(valid_checkpoint() | {"model": [1], "epoch": "two"}, tmp_path / "c.pt")
    with pytest.raises(UserError) as raised:
        load_checkpoint(tmp_path / "c.pt")
    assert [problem.split(": ")[2].split(" ")[0] for problem in raised.value.problems] == [
        "'model'",
        "'epoch'",
    ]


def test_several_optimizers_are_checked_by_name(tmp_path: Path) -> None:
    broken = several_optimizers(valid_checkpoint())
    broken["optimizers"]["discriminator"] = optimizer_without_param_groups()
    broken["scalers"] = {"generator": {}}
    torch.save(broken, tmp_path / "c.pt")
    with pytest.raises(UserError) as raised:
        load_checkpoint(tmp_path / "c.pt")
    message = "\n".join(raised.value.problems)
    assert "'optimizers' is {" in message
    assert "expected optimizer name -> optimizer state_dict" in message
    assert "'scalers' is keyed by ['generator']; expected the names in 'optimizers'" in message


@pytest.mark.parametrize("layout", ["one layout", "one-optimizer layout"])
def test_a_missing_optimizer_state_is_named_in_either_layout(tmp_path: Path, layout: str) -> None:
    checkpoint = valid_checkpoint()
    if layout == "one layout":
        del checkpoint["scalers"]
    else:
        checkpoint = one_optimizer_layout(checkpoint)
        del checkpoint["scaler"]
    torch.save(checkpoint, tmp_path / "c.pt")
    with pytest.raises(UserError, match=r"not a trainer checkpoint \(missing scalers\)$"):
        load_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize("old_layout", [False, True], ids=["one layout", "old layout"])
def test_a_checkpoint_of_the_wrong_shape_is_exit_2_and_starts_no_run(
    write_config, tiny_yaml: str, user_error, tmp_path: Path, old_layout: bool
) -> None:
    config = write_config(tiny_yaml)
    checkpoint = one_optimizer_layout(valid_checkpoint()) if old_layout else valid_checkpoint()
    torch.save(checkpoint | {"epoch": "two", "best": 5}, tmp_path / "bad.pt")
    for command in (["fit", config, "--resume", "bad.pt"], ["inspect", "bad.pt"]):
        user_error(
            *command,
            expect=[
                "bad.pt: not a trainer checkpoint: 'epoch' is 'two' (str)",
                "bad.pt: not a trainer checkpoint: 'best' is 5 (int)",
            ],
        )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("old_layout", [False, True], ids=["one layout", "old layout"])
def test_a_checkpoint_missing_a_key_is_exit_2_naming_it(
    write_config, tiny_yaml: str, user_error, tmp_path: Path, old_layout: bool
) -> None:
    config = write_config(tiny_yaml)
    checkpoint = one_optimizer_layout(valid_checkpoint()) if old_layout else valid_checkpoint()
    del checkpoint["step"], checkpoint["metrics"]
    torch.save(checkpoint, tmp_path / "bad.pt")
    for command in (["fit", config, "--resume", "bad.pt"], ["inspect", "bad.pt"]):
        stderr = user_error(*command, expect=[])
        assert stderr == "error: bad.pt: not a trainer checkpoint (missing step, metrics)\n"
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- older layouts


def assert_same_tree(ours: Any, theirs: Any, where: str = "checkpoint") -> None:
    """Equal dicts and lists, tensors equal by torch.equal."""
    if isinstance(theirs, torch.Tensor):
        assert torch.equal(ours, theirs), where
    elif isinstance(theirs, (dict, list)):
        assert type(ours) is type(theirs), where
        keys = theirs.keys() if isinstance(theirs, dict) else range(len(theirs))
        assert (ours.keys() if isinstance(ours, dict) else range(len(ours))) == keys, where
        for key in keys:
            assert_same_tree(ours[key], theirs[key], f"{where}[{key!r}]")
    else:
        assert ours == theirs, where


def loaded(tmp_path: Path, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What load_checkpoint makes of `checkpoint`, written back in the one layout."""
    torch.save(checkpoint, tmp_path / "c.pt")
    return load_checkpoint(tmp_path / "c.pt").to_checkpoint()


def test_a_one_optimizer_file_of_the_old_layout_loads_as_the_one_layout(tmp_path: Path) -> None:
    new = valid_checkpoint()
    old = one_optimizer_layout(new)
    assert {"optimizer", "scheduler", "scaler", "epoch_loss"} <= old.keys()
    assert_same_tree(loaded(tmp_path, old), new)
    assert_same_tree(upgrade(old), new)


def test_a_several_optimizer_file_of_the_old_layout_drops_its_unused_keys(tmp_path: Path) -> None:
    new = several_optimizers(valid_checkpoint())
    old = new | {"optimizer": None, "scheduler": None, "scaler": None, "epoch_loss": 0.5}
    assert_same_tree(loaded(tmp_path, old), new)
    assert_same_tree(upgrade(old), new)


def test_what_older_files_lack_is_derived_as_it_was_read_then(tmp_path: Path) -> None:
    config = {"name": "tiny", "data": {"batch_size": 5}}
    new = valid_checkpoint() | {"step": 7, "batch_in_epoch": 3, "config": config}
    old = one_optimizer_layout(new)
    for key in ("updates", "epoch_sums", "epoch_counted", "samples_in_epoch", "rng_per_rank",
                "early_stopping"):  # fmt: skip
        del old[key]
    torch.save(old, tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    assert state.optimizers["optimizer"].updates == 7  # one update per step
    assert state.position == Position(
        epoch=1,
        step=7,
        batch_in_epoch=3,
        samples_in_epoch=3 * 5,  # the batches trained, of the checkpoint's batch size
        epoch_sums={"loss": 0.5},  # epoch_loss
        epoch_counted=3,
        best=new["best"],
    )
    assert_same_tree(state.rngs, [new["rng"]])
    assert state.early_stopping is None


def test_a_one_entry_optimizers_section_keeps_its_name_from_an_old_file(tmp_path: Path) -> None:
    """A config with `optimizers: {net: ...}` was saved in the one-optimizer layout, its groups
    by name already; it resumes under its own name."""
    config = {"name": "tiny", "optimizers": {"net": {"optimizer": {"name": "SGD"}}}}
    new = valid_checkpoint() | {"config": config}
    old = one_optimizer_layout(new)
    # As it was saved: the manifest and the update counts by name.
    old["groups"], old["updates"] = {"net": old["groups"]}, {"net": old["updates"]["optimizer"]}
    keys = ("optimizers", "schedulers", "scalers", "updates", "groups")
    assert_same_tree(loaded(tmp_path, old), new | {k: {"net": new[k]["optimizer"]} for k in keys})


# ---------------------------------------------------------------- failed and concurrent writes


def full_disk_save(*, as_torch_reports_it: bool) -> Any:
    """A torch.save that writes part of the file, then fails as a full disk does (torch.save
    itself turns the OSError into a RuntimeError whose context is the OSError)."""

    def save(obj: Any, file: Any) -> None:
        file.write(b"partial")
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if not as_torch_reports_it:
            raise full
        try:
            raise full
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    return save


@pytest.mark.parametrize("as_torch_reports_it", [False, True])
def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_torch_reports_it: bool
) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(last, {"step": 1, "weights": torch.arange(3)})
    monkeypatch.setattr(torch, "save", full_disk_save(as_torch_reports_it=as_torch_reports_it))
    with pytest.raises(TrainingError) as raised:
        save_checkpoint(last, {"step": 2, "weights": torch.arange(4)})
    assert str(raised.value) == (
        f"could not write {last}: No space left on device; the checkpoints written before "
        "are intact"
    )
    monkeypatch.undo()
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]
    assert torch.equal(torch.load(last, weights_only=True)["weights"], torch.arange(3))


def test_a_failure_that_is_not_a_write_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(obj: Any, file: Any) -> None:
        raise RuntimeError("not an I/O problem")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="not an I/O problem"):
        save_checkpoint(tmp_path / "last.pt", {"step": 1})


def test_temporary_files_are_named_for_their_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = []
    real_save = torch.save

    def recording(obj: Any, file: Any) -> None:
        names.append(Path(file.name).name)
        real_save(obj, file)

    monkeypatch.setattr(torch, "save", recording)
    for _ in range(2):
        save_checkpoint(tmp_path / "last.pt", {"step": 1})
    assert len(set(names)) == 2
    assert all(name.startswith(f".last.pt.{os.getpid()}-") for name in names)
    assert all(name.endswith(".tmp") for name in names)


def test_the_next_save_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    leftovers = [".last.pt.tmp", ".last.pt.4242-0a1b2c3d.tmp", ".best.pt.77-ffffffff.tmp"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    save_checkpoints(tmp_path, epoch_checkpoint(1), CheckpointConfig(), is_best=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt", "last.pt"]


def test_fit_on_a_full_disk_is_exit_1_in_one_line_keeping_the_last_good_checkpoint(
    write_config, tiny_yaml: str, run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save, saves = torch.save, []

    def disk_full_on_the_second_save(obj: Any, file: Any) -> None:
        saves.append(obj)
        if len(saves) == 2:  # epoch 2's last.pt
            full_disk_save(as_torch_reports_it=True)(obj, file)
        real_save(obj, file)

    monkeypatch.setattr(torch, "save", disk_full_on_the_second_save)
    result = run_cli("fit", write_config(tiny_yaml))
    monkeypatch.undo()

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    last = "runs/tiny/checkpoints/last.pt"
    assert result.stderr == (
        f"error: could not write {last}: No space left on device; the checkpoints written "
        "before are intact\n"
    )
    checkpoints = tmp_path / "runs/tiny/checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "epoch-0001.pt", "last.pt"]
    assert load_checkpoint(checkpoints / "last.pt").position.epoch == 1
