"""`--resume auto` (resume.find_checkpoint): the newest readable checkpoint of a run name; a
new run only where the run has no checkpoint at all and nobody is writing it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.checkpoints import valid_checkpoint

from trainer.engine.resume import find_checkpoint
from trainer.errors import UserError
from trainer.runs.rundir import lock_run_dir


def checkpoints(run_dir: Path, **files: dict | bytes) -> None:
    """Write `name=content` files into run_dir/checkpoints (bytes as they are)."""
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = directory / f"{name.replace('_', '-')}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)


def at_epoch(epoch: int) -> dict:
    return valid_checkpoint() | {"epoch": epoch}


def test_a_run_without_checkpoints_starts_new(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    path, checkpoint, notes = find_checkpoint("auto", run_base=tmp_path / "r", name="tiny")
    assert (path, checkpoint) == (None, None)
    assert notes == [(
        f"--resume auto: no checkpoint of run 'tiny' under {tmp_path / 'r'}[-N]; starting a new "
        "run"
    )]


def test_an_older_readable_checkpoint_wins_over_an_unreadable_last(tmp_path: Path) -> None:
    checkpoints(tmp_path / "r", last=b"torn", epoch_0001=at_epoch(1), epoch_0002=at_epoch(2))
    path, checkpoint, notes = find_checkpoint("auto", run_base=tmp_path / "r", name="tiny")
    assert path == tmp_path / "r/checkpoints/epoch-0002.pt"
    assert checkpoint.position.epoch == 2
    [note] = notes
    assert note.startswith(
        f"--resume auto: skipping {tmp_path}/r/checkpoints/last.pt: not a readable checkpoint"
    )


def test_best_pt_is_the_last_fallback(tmp_path: Path) -> None:
    checkpoints(tmp_path / "r", last=b"torn", best=at_epoch(3))
    path, checkpoint, _ = find_checkpoint("auto", run_base=tmp_path / "r", name="tiny")
    assert (path.name, checkpoint.position.epoch) == ("best.pt", 3)


def test_every_checkpoint_unreadable_is_an_error_naming_each(tmp_path: Path) -> None:
    checkpoints(
        tmp_path / "r",
        last=b"torn",
        epoch_0001=valid_checkpoint() | {"epoch": "one"},
        best=b"",
    )
    with pytest.raises(UserError) as raised:
        find_checkpoint("auto", run_base=tmp_path / "r", name="tiny")
    problems = raised.value.problems
    assert problems[0] == (
        f"--resume auto: no readable checkpoint of {tmp_path / 'r'}[-N]; not starting a new run "
        "over these:"
    )
    listed = tmp_path / "r" / "checkpoints"
    assert problems[1].startswith(f"  {listed}/last.pt: not a readable checkpoint")
    assert problems[2] == (
        f"  {listed}/epoch-0001.pt: not a trainer checkpoint: 'epoch' is 'one' (str); expected "
        "a whole number >= 0 (epochs completed)"
    )
    assert problems[3].startswith(f"  {listed}/best.pt: not a readable checkpoint")
    assert "--resume PATH" in problems[4]


def test_a_run_being_written_without_a_checkpoint_yet_is_not_started_twice(
    tmp_path: Path,
) -> None:
    (tmp_path / "r").mkdir()
    with lock_run_dir(tmp_path / "r"), pytest.raises(UserError) as raised:
        find_checkpoint("auto", run_base=tmp_path / "r", name="tiny")
    [problem] = raised.value.problems
    assert problem.startswith(
        f"--resume auto: {tmp_path / 'r'}: in use by another trainer process (pid {os.getpid()}"
    )


def test_the_newest_run_directory_of_the_name_comes_first(tmp_path: Path) -> None:
    checkpoints(tmp_path / "r", last=at_epoch(4))
    checkpoints(tmp_path / "r-2", last=at_epoch(1))
    os.utime(tmp_path / "r/checkpoints/last.pt", (1, 1))  # written long ago
    path, _, _ = find_checkpoint("auto", run_base=tmp_path / "r", name="tiny")
    assert path == tmp_path / "r-2/checkpoints/last.pt"


def test_fit_resume_auto_over_unreadable_checkpoints_is_exit_2_and_trains_nothing(
    write_config, tiny_yaml: str, user_error, tmp_path: Path
) -> None:
    config = write_config(tiny_yaml)
    checkpoints(tmp_path / "runs/tiny", last=b"torn", epoch_0001=b"torn too")
    user_error(
        "fit",
        config,
        "--resume",
        "auto",
        expect=[
            "--resume auto: no readable checkpoint of runs/tiny[-N]",
            "runs/tiny/checkpoints/last.pt: not a readable checkpoint",
            "runs/tiny/checkpoints/epoch-0001.pt: not a readable checkpoint",
        ],
    )
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny"]
    assert sorted(p.name for p in (tmp_path / "runs/tiny").iterdir()) == ["checkpoints"]


def named(run: str, epoch: int = 1) -> dict:
    return at_epoch(epoch) | {"config": {"name": run}}


def test_a_directory_that_merely_shares_the_prefix_is_left_alone(tmp_path: Path) -> None:
    checkpoints(tmp_path / "r-2", last=named("r-2"))  # a run named r-2, not a second r
    path, checkpoint, notes = find_checkpoint("auto", run_base=tmp_path / "r", name="r")
    assert (path, checkpoint) == (None, None)
    assert notes == [
        f"--resume auto: {tmp_path / 'r-2'} holds another run's checkpoints, left alone",
        f"--resume auto: no checkpoint of run 'r' under {tmp_path / 'r'}[-N]; starting a new run",
    ]


def test_the_newest_run_of_this_name_wins_over_a_newer_one_of_another(tmp_path: Path) -> None:
    checkpoints(tmp_path / "r", last=named("r", 4))
    checkpoints(tmp_path / "r-3", last=named("other", 9))
    os.utime(tmp_path / "r/checkpoints/last.pt", (1, 1))  # written long before r-3
    path, checkpoint, notes = find_checkpoint("auto", run_base=tmp_path / "r", name="r")
    assert (path, checkpoint.position.epoch) == (tmp_path / "r/checkpoints/last.pt", 4)
    assert notes == [
        f"--resume auto: {tmp_path / 'r-3'} holds another run's checkpoints, left alone"
    ]


def test_the_run_directory_itself_holding_another_run_is_exit_2_naming_both(
    tmp_path: Path,
) -> None:
    checkpoints(tmp_path / "r", last=named("x"))
    with pytest.raises(UserError) as raised:
        find_checkpoint("auto", run_base=tmp_path / "r", name="r")
    [problem] = raised.value.problems
    assert problem.startswith(f"--resume auto: {tmp_path / 'r'} holds run 'x' (the name in ")
    assert "not 'r'; resume it with --resume" in problem


def test_a_checkpoint_with_weights_that_are_not_finite_is_never_resumed(tmp_path: Path) -> None:
    broken = at_epoch(2)
    broken["model"]["weight"][0, 0] = float("nan")
    checkpoints(tmp_path / "r", last=broken, epoch_0001=at_epoch(1))
    path, checkpoint, notes = find_checkpoint("auto", run_base=tmp_path / "r", name="tiny")
    assert (path.name, checkpoint.position.epoch) == ("epoch-0001.pt", 1)
    last = tmp_path / "r/checkpoints/last.pt"
    assert notes == [
        f"--resume auto: skipping {last}: the model's weights are not finite (weight); resume "
        "from an earlier checkpoint"
    ]
    with pytest.raises(UserError, match="the model's weights are not finite"):
        find_checkpoint(str(last), run_base=tmp_path / "r", name="tiny")


def test_fit_resume_auto_never_writes_into_another_runs_directory(
    write_config, tiny_yaml: str, run_cli, tmp_path: Path
) -> None:
    other = write_config(tiny_yaml.replace("name: tiny", "name: tiny-2"), name="other.yaml")
    assert run_cli("fit", other).exit_code == 0
    files = {p: p.read_bytes() for p in (tmp_path / "runs/tiny-2").rglob("*") if p.is_file()}

    result = run_cli("fit", write_config(tiny_yaml), "--resume", "auto")
    assert result.exit_code == 0, result.output
    assert "runs/tiny-2 holds another run's checkpoints, left alone" in result.output
    assert {p: p.read_bytes() for p in files} == files
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny", "tiny-2"]


def test_another_runs_directory_being_written_does_not_block_a_new_run(tmp_path: Path) -> None:
    (tmp_path / "r-2").mkdir()
    (tmp_path / "r-2" / "config.yaml").write_text("name: r-2\n", encoding="utf-8")
    with lock_run_dir(tmp_path / "r-2"):  # run r-2 in its first epoch: no checkpoint yet
        path, checkpoint, _ = find_checkpoint("auto", run_base=tmp_path / "r", name="r")
    assert (path, checkpoint) == (None, None)
