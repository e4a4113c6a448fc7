"""trainer.runs.rundir: fresh run directories, the one-writer lock, out_dir checks,
metrics.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import helpers.resume
import pytest
from helpers.damage import DAMAGES, damage

from trainer.errors import TrainingError, UserError
from trainer.runs.metrics_file import MetricsFile, is_epoch_record, mark_epoch, read_metrics
from trainer.runs.rundir import LOCK_FILE, check_out_dir, fresh_run_dir, lock_holder, lock_run_dir

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- fresh run directories


def test_fresh_run_dir_takes_the_base_then_numbers(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "r"
    assert fresh_run_dir(base) == base
    (base / "config.yaml").touch()
    assert fresh_run_dir(base) == tmp_path / "runs" / "r-2"
    assert fresh_run_dir(base) == tmp_path / "runs" / "r-3"  # r-2 is claimed, though empty


def test_an_empty_directory_is_taken_and_a_file_is_stepped_over(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    assert fresh_run_dir(tmp_path / "r") == tmp_path / "r"
    (tmp_path / "s").touch()
    assert fresh_run_dir(tmp_path / "s") == tmp_path / "s-2"


CLAIM = """
import sys, time
from pathlib import Path
from trainer.runs.rundir import fresh_run_dir
while not Path(sys.argv[1]).exists():
    time.sleep(0.001)
print(fresh_run_dir(Path(sys.argv[2])))
"""


def test_processes_starting_at_once_never_share_a_new_directory(tmp_path: Path) -> None:
    go, base = tmp_path / "go", tmp_path / "runs" / "r"
    command = [sys.executable, "-c", CLAIM, str(go), str(base)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(6)
    ]
    time.sleep(1.0)  # all of them waiting for `go`
    go.touch()
    claimed = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert len(set(claimed)) == 6, claimed


def test_a_run_directory_that_cannot_be_made_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    with pytest.raises(UserError, match=r"trainer\.out_dir: cannot create the run directory"):
        fresh_run_dir(tmp_path / "file" / "r")


# ---------------------------------------------------------------- one writer per run


def test_a_second_writer_is_told_who_holds_the_run(tmp_path: Path) -> None:
    with lock_run_dir(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(UserError) as raised, lock_run_dir(tmp_path):
            pass
        [problem] = raised.value.problems
        assert problem.startswith(
            f"{tmp_path}: in use by another trainer process (pid {os.getpid()} on host "
            f"{socket.gethostname()}, since "
        )
        assert lock_holder(tmp_path) is not None
    assert lock_holder(tmp_path) is None
    with lock_run_dir(tmp_path):  # released at the end of the block
        pass


HOLD = """
import sys, time
from pathlib import Path
from trainer.runs.rundir import lock_run_dir
with lock_run_dir(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {holder.pid} on host "), lock_run_dir(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert lock_holder(tmp_path) is None
    with lock_run_dir(tmp_path):
        pass


# ---------------------------------------------------------------- out_dir, before building


def test_an_out_dir_under_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").touch()
    problems = check_out_dir(tmp_path / "notes.txt" / "runs" / "r")
    assert problems == [
        f"trainer.out_dir: '{tmp_path}/notes.txt/runs/r' is under '{tmp_path}/notes.txt', "
        "which is a file, not a directory"
    ]
    assert check_out_dir(tmp_path / "notes.txt") == [
        f"trainer.out_dir: '{tmp_path}/notes.txt' is a file, not a directory"
    ]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_an_out_dir_under_proc_is_named() -> None:
    [problem] = check_out_dir(Path("/proc/runs/r"))
    assert problem.startswith("trainer.out_dir: '/proc/runs/r': cannot create a run directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_out_dir_is_named(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir(mode=0o555)
    [problem] = check_out_dir(tmp_path / "ro" / "r")
    assert "cannot create a run directory there (Permission denied)" in problem


def test_a_writable_out_dir_passes_and_is_left_as_it_was(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "runs" / "r") == []
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing left
    (tmp_path / "runs" / "r").mkdir(parents=True)
    assert check_out_dir(tmp_path / "runs" / "r") == []
    assert list((tmp_path / "runs" / "r").iterdir()) == []


# ---------------------------------------------------------------- metrics.jsonl


def step(epoch: int, step: int) -> dict:
    return {"epoch": epoch, "step": step, "train/loss": 1.0 / step}


def epoch_end(epoch: int, step: int) -> dict:
    return mark_epoch({"epoch": epoch, "step": step, "val/loss": 0.5, "train/samples_per_s": 10.0})


def test_cut_after_keeps_each_step_and_epoch_up_to_the_checkpoint(tmp_path: Path) -> None:
    # Epoch 1 (steps 1-4), then epoch 2 cut by max_steps at step 6 (its record is partial);
    # the checkpoint: 1 epoch completed, step 6. A killed writer left a torn line.
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(path)
    for record in [step(1, 2), step(1, 4), epoch_end(1, 4), step(2, 6), epoch_end(2, 6)]:
        metrics.write(record)
    metrics.close()
    with open(path, "a", encoding="utf-8") as file:
        file.write('{"epoch": 2, "st')

    metrics = MetricsFile(path)
    assert metrics.cut_after(step=6, epoch=1) == 2
    metrics.write(step(2, 8))  # the resumed run goes on
    metrics.close()
    assert read_metrics(path) == [step(1, 2), step(1, 4), epoch_end(1, 4), step(2, 6), step(2, 8)]


def test_cut_after_drops_steps_past_the_checkpoint(tmp_path: Path) -> None:
    # A resume from epoch-0001.pt (step 4) after last.pt was lost: epoch 2 is logged again.
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(path)
    for record in [step(1, 4), epoch_end(1, 4), step(2, 6), step(2, 8), epoch_end(2, 8)]:
        metrics.write(record)
    assert metrics.cut_after(step=4, epoch=1) == 3
    metrics.close()
    assert read_metrics(path) == [step(1, 4), epoch_end(1, 4)]


def test_cut_after_leaves_a_file_with_nothing_to_drop_untouched(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsFile(path)
    metrics.write(step(1, 2))
    before = path.stat().st_ino
    assert metrics.cut_after(step=2, epoch=0) == 0
    metrics.close()
    assert path.stat().st_ino == before
    assert MetricsFile(path, enabled=False).cut_after(step=0, epoch=0) == 0  # rank > 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_while_logging_is_a_training_error() -> None:
    metrics = MetricsFile(Path("/dev/full"))
    with pytest.raises(TrainingError, match="cannot write /dev/full: No space left on device"):
        metrics.write(step(1, 2))


# ---------------------------------------------------------------- through `trainer fit`


def test_fit_on_a_run_another_process_holds_is_exit_2_naming_it(
    write_config, tiny_yaml: str, run_cli, user_error, tmp_path: Path
) -> None:
    config = write_config(tiny_yaml)
    assert run_cli("fit", config, "trainer.epochs=1").exit_code == 0
    metrics = (tmp_path / "runs/tiny/metrics.jsonl").read_text()
    with lock_run_dir(tmp_path / "runs/tiny"):
        user_error(
            "fit",
            config,
            "trainer.epochs=2",
            "--resume",
            "auto",
            expect=[f"runs/tiny: in use by another trainer process (pid {os.getpid()} on host"],
        )
    assert (tmp_path / "runs/tiny/metrics.jsonl").read_text() == metrics
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny"]


def test_an_impossible_out_dir_is_exit_2_before_anything_is_built(
    write_config, tiny_yaml: str, user_error, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.components.data

    def not_now(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was built before the out_dir was checked")

    monkeypatch.setattr(trainer.components.data, "build_loaders", not_now)
    (tmp_path / "notes.txt").touch()
    user_error(
        "fit",
        write_config(tiny_yaml),
        "trainer.out_dir=notes.txt/run",
        expect=["trainer.out_dir: 'notes.txt/run' is under 'notes.txt', which is a file"],
    )


def test_a_run_stopped_by_max_steps_and_resumed_logs_each_step_and_epoch_once(
    write_config, tiny_yaml: str, run_cli, tmp_path: Path
) -> None:
    # 4 steps per epoch; max_steps 6 stops in epoch 2; log_every 1 logs every step.
    config = write_config(tiny_yaml.replace("log_every: 2", "log_every: 1"))
    assert run_cli("fit", config, "trainer.max_steps=6").exit_code == 0
    result = run_cli("fit", config, "--resume", "auto")
    assert result.exit_code == 0, result.output
    records = read_metrics(tmp_path / "runs/tiny/metrics.jsonl")
    steps = [r["step"] for r in records if not is_epoch_record(r)]
    epochs = [r["epoch"] for r in records if is_epoch_record(r)]
    assert (steps, epochs) == ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2])



@pytest.mark.parametrize("kind", DAMAGES)
def test_resume_auto_on_a_damaged_run_file_is_exit_2_naming_it(
    run_cli, tmp_path: Path, two_epochs: Path, kind: str
) -> None:
    run_dir = tmp_path / "runs" / "r"
    shutil.copytree(two_epochs, run_dir)
    helpers.resume.write_config(tmp_path)
    damaged = damage(run_dir, kind)
    before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    result = run_cli("fit", "cfg.yaml", "trainer.epochs=3", "--resume", "auto")
    if damaged.file == "config.yaml":  # the checkpoint holds the config: this is not read
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, (result.exception, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith(f"error: runs/r/{damaged.message}"), result.stderr
    assert "fix or delete" in result.stderr
    after = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    assert after[damaged.file] == before[damaged.file]
