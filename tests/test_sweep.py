"""trainer sweep: SPACE.yaml checks, the trial watcher (on a stand-in for `trainer fit`),
stale trials, and whole sweeps of tiny runs (each trial a real `trainer fit` process)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from trainer.config import load_config
from trainer.runs.metrics_file import is_epoch_record, read_metrics
from trainer.tools import sweep as sweep_module
from trainer.tools.search_space import Dimension, Space, load_space
from trainer.tools.sweep import Outcome, Sweep, _runs, recover_stale_trials, run_trial

STUDY = "tiny-sweep"  # the default study name of the tiny config (`tiny`)


def journal(tmp_path: Path) -> optuna.storages.JournalStorage:
    """The default storage of the tiny config's study, as the sweep writes it."""
    path = tmp_path / "runs" / STUDY / "study.journal"
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def load_study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=journal(tmp_path))


def epoch_records(run_dir: Path) -> list[int]:
    """The epochs of a run's metrics.jsonl epoch records, in file order."""
    return [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl") if is_epoch_record(r)]


def sweep_process(tmp_path: Path, *args: str | Path) -> subprocess.Popen:
    """`python -m trainer sweep ...` in tmp_path, as a separate process."""
    command = [sys.executable, "-m", "trainer", "sweep", *map(str, args)]
    return subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


# ---------------------------------------------------------------- bad space files: exit 2


BAD_SPACES = [
    (
        "unknown-config-key",
        "trainer.epoch: {int: [1, 3]}\n",
        ["space.yaml: trainer.epoch: unknown key; did you mean 'epochs'?"],
    ),
    (
        "unknown-component-keyword",
        "optimizer.momentun: {uniform: [0.5, 0.9]}\n",
        ["space.yaml: optimizer.momentun: not an argument of SGD; did you mean 'momentum'?"],
    ),
    (
        "unknown-distribution",
        "optimizer.lr: {loguniform: [1.0e-3, 1.0]}\n",
        ["optimizer.lr: unknown distribution 'loguniform'; did you mean 'log_uniform'?"],
    ),
    (
        "low-above-high",
        "optimizer.momentum: {uniform: [0.9, 0.1]}\n",
        ["optimizer.momentum.uniform: low 0.9 > high 0.1"],
    ),
    (
        "log-scale-from-zero",
        "optimizer.lr: {log_uniform: [0, 1]}\n",
        ["optimizer.lr.log_uniform: a log scale needs low > 0, got 0"],
    ),
    (
        "integer-range-of-floats",
        "data.batch_size: {int: [8.5, 32]}\n",
        ["data.batch_size.int: expected [low, high], two integers, got [8.5, 32]"],
    ),
    (
        "step-on-a-choice",
        "data.batch_size: {choice: [16, 32], step: 2}\n",
        ["data.batch_size.choice: step is for uniform and int only"],
    ),
    (
        "choice-listed-twice",
        "data.batch_size: {choice: [16, 16]}\n",
        ["data.batch_size.choice: a value is listed twice"],
    ),
    (
        "unknown-pruner",
        "optimizer.lr: {uniform: [0.01, 0.1]}\npruner: {name: MedianPrunner}\n",
        ["pruner.name: unknown 'MedianPrunner'; did you mean 'MedianPruner'?"],
    ),
    (
        "pruner-keyword",
        "optimizer.lr: {uniform: [0.01, 0.1]}\npruner: {name: MedianPruner, warmup: 1}\n",
        ["pruner: MedianPruner(warmup)", "warmup"],
    ),
    (
        "grid-sampler",
        "optimizer.lr: {uniform: [0.01, 0.1]}\nsampler: {name: GridSampler}\n",
        ["sampler.name: GridSampler stops the study"],
    ),
    (
        "enqueue-outside-the-space",
        "optimizer.lr: {uniform: [0.01, 0.1]}\n"
        "enqueue: [{optimizer.lr: 5.0}, {optimizer.l: 0.05}]\n",
        [
            "enqueue.0.optimizer.lr: 5.0 is not in uniform [0.01, 0.1]",
            "enqueue.1.optimizer.l: not a key of the space; did you mean 'optimizer.lr'?",
        ],
    ),
]


@pytest.mark.parametrize(
    ("space_text", "fragments"),
    [case[1:] for case in BAD_SPACES],
    ids=[case[0] for case in BAD_SPACES],
)
def test_bad_space_is_exit_2_before_any_trial(
    tmp_path: Path,
    write_config: Callable[..., Path],
    tiny_yaml: str,
    user_error: Callable[..., str],
    space_text: str,
    fragments: list[str],
) -> None:
    config = write_config(tiny_yaml)
    space = write_config(space_text, "space.yaml")
    user_error("sweep", config, "--space", space, expect=fragments)
    assert not (tmp_path / "runs").exists()  # no study, no trial


def test_every_problem_of_a_space_file_is_reported_at_once(
    tmp_path: Path, write_config: Callable[..., Path], tiny_yaml: str, user_error: Callable
) -> None:
    space = write_config(
        """
        optimizer.lr: {loguniform: [1.0e-3, 1.0]}
        optimizer.momentum: {uniform: [0.9, 0.1]}
        trainer.epoch: {int: [1, 3]}
        """,
        "space.yaml",
    )
    stderr = user_error(
        "sweep",
        write_config(tiny_yaml),
        "--space",
        space,
        expect=["unknown distribution 'loguniform'", "low 0.9 > high 0.1"],
    )
    # The config check comes after the file's own: a file with errors is not applied.
    assert "trainer.epoch" not in stderr


def test_a_missing_space_or_optuna_is_exit_2(
    write_config: Callable[..., Path],
    tiny_yaml: str,
    user_error: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tiny_yaml)
    user_error("sweep", config, expect=["--space: required to run trials"])
    user_error("sweep", config, "--space", "nope.yaml", expect=["--space nope.yaml: no such file"])
    user_error("sweep", config, "--summary", expect=["--summary: no study 'tiny-sweep' here"])
    space = write_config("optimizer.lr: {uniform: [0.01, 0.1]}\n", "space.yaml")
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    user_error(
        "sweep", config, "--space", space, expect=["needs optuna, an optional extra", "[optuna]"]
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "a NUL byte on line 3: a binary file or UTF-16 text"),
        (b"optimizer.lr: {choice: [0.1]}  # caf\xe9\n", "not UTF-8 text (byte 0xe9 on line 1)"),
    ],
    ids=["binary", "latin-1"],
)
def test_a_space_file_that_is_not_utf8_text_is_exit_2(
    tmp_path: Path,
    write_config: Callable[..., Path],
    tiny_yaml: str,
    user_error: Callable,
    content: bytes,
    problem: str,
) -> None:
    (tmp_path / "space.yaml").write_bytes(content)
    config = write_config(tiny_yaml)
    user_error("sweep", config, "--space", "space.yaml", expect=[f"--space space.yaml: {problem}"])


def test_a_storage_directory_and_unbounded_counts_are_exit_2(
    tmp_path: Path, write_config: Callable[..., Path], tiny_yaml: str, user_error: Callable
) -> None:
    config = write_config(tiny_yaml)
    space = write_config("optimizer.lr: {uniform: [0.01, 0.1]}\n", "space.yaml")
    (tmp_path / "studies").mkdir()
    user_error(
        "sweep",
        config,
        "--space",
        space,
        "--storage",
        "studies",
        expect=[
            "--storage: studies is a directory; give a journal file (e.g. "
            f"{Path('studies', 'study.journal')}, made if new) or an RDB URL"
        ],
    )
    user_error("sweep", config, "--space", space, "--trials", "1000000000", expect=["'--trials'"])
    user_error("sweep", config, "--space", space, "--jobs", "65", expect=["'--jobs'"])
    assert not (tmp_path / "runs").exists()


def test_space_values_become_overrides_the_config_reads(
    write_config: Callable[..., Path], tiny_yaml: str
) -> None:
    space = load_space(
        write_config(
            """
            optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
            param_groups.freeze: {choice: [[], ['^conv1\\.']]}
            data.batch_size: {choice: [16, 32]}
            """,
            "space.yaml",
        )
    )
    trial = optuna.create_study().ask()
    overrides = [d.override(d.suggest(trial)) for d in space.dimensions]
    config = load_config(write_config(tiny_yaml), overrides)
    assert config.optimizer.lr == trial.params["optimizer.lr"]
    assert 1e-4 <= config.optimizer.lr <= 1e-1
    # A list is stored in Optuna as its JSON text and reaches the config as the list.
    frozen = [[], ["^conv1\\."]][
        space.dimensions[1].labels.index(trial.params["param_groups.freeze"])
    ]
    assert config.param_groups.freeze == frozen
    assert config.data.batch_size == trial.params["data.batch_size"]


# ---------------------------------------------------------------- one trial

# Stands in for `trainer fit` (given fake.value, fake.epochs, fake.code, fake.status and
# trainer.out_dir as KEY=VALUE): an epoch record per epoch, val/loss = value / epoch; SIGTERM
# -> exit 130; then status.json says fake.status (if not "none"), and the exit code is
# fake.code (-N: killed by signal N).
FAKE_FIT = """
import json, os, signal, sys, time
from pathlib import Path

args = dict(arg.split("=", 1) for arg in sys.argv[1:])
run_dir, value = Path(args["trainer.out_dir"]), float(args["fake.value"])
epochs, code = int(args["fake.epochs"]), int(args["fake.code"])
run_dir.mkdir(parents=True)

def stop(signum, frame):
    (run_dir / "got-sigterm").touch()
    sys.exit(130)

signal.signal(signal.SIGTERM, stop)
with open(run_dir / "metrics.jsonl", "a") as metrics:
    for epoch in range(1, epochs + 1):
        metrics.write(json.dumps({"epoch": epoch, "step": epoch, "train/loss": 9.0}) + "\\n")
        record = {"epoch": epoch, "step": epoch, "val/loss": value / epoch, "epoch_end": True}
        metrics.write(json.dumps(record) + "\\n")
        metrics.flush()
        time.sleep(0.05)
if args["fake.status"] != "none":
    (run_dir / "status.json").write_text(json.dumps({"status": args["fake.status"]}))
if code < 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
if code:
    print("error: train/loss is nan by step 3: training stopped" if code == 1 else "boom")
sys.exit(code)
"""


@pytest.fixture
def one_trial(tmp_path: Path) -> Callable[..., tuple[Outcome, optuna.trial.FrozenTrial, list]]:
    """`one_trial(value, epochs, code, status=..., stop=...)`: run_trial with the stand-in for
    `trainer fit`, after a finished trial whose val/loss was 1.0 at every epoch (the median
    pruner's reference); `stop`: the sweep is stopped (Ctrl-C) once the trial reported its
    first epoch. Returns the outcome, the trial as Optuna keeps it, and what the sweep said."""
    script = tmp_path / "fake_fit.py"
    script.write_text(textwrap.dedent(FAKE_FIT), encoding="utf-8")
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    steps = {epoch: 1.0 for epoch in range(1, 101)}
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values=steps))

    def run(
        value: float, epochs: int, code: int = 0, *, status: str = "none", stop: bool = False
    ) -> tuple[Outcome, object, list[str]]:
        said: list[str] = []
        fit = [sys.executable, str(script), f"fake.epochs={epochs}", f"fake.code={code}"]
        fit.append(f"fake.status={status}")

        def say(line: str) -> None:
            said.append(line)
            if stop and " epoch " in line:
                sweep.stop.set()

        sweep = Sweep(fit, tmp_path, "val/loss", "min", study._storage, say)
        fixed = Dimension("fake.value", "choice", choices=(value,))
        space = Space("space.yaml", (fixed,), sampler=None, pruner=None)
        outcome = run_trial(sweep, study, space)
        return outcome, study.trials[-1], said

    return run


def test_a_trial_worse_than_the_median_gets_sigterm(tmp_path: Path, one_trial: Callable) -> None:
    outcome, trial, said = one_trial(5.0, 100)
    assert (outcome.state, outcome.reason) == ("pruned", "at epoch 1, val/loss 5")
    assert trial.state == optuna.trial.TrialState.PRUNED
    run_dir = tmp_path / "trial-0001"
    assert trial.user_attrs["run_dir"] == str(run_dir)
    assert (run_dir / "got-sigterm").is_file()
    assert len(epoch_records(run_dir)) < 100
    assert trial.intermediate_values == {1: 5.0}  # nothing reported after pruning
    assert (tmp_path / "trial-0001.log").is_file()
    assert said[0] == "trial 1: fake.value=5.0"
    assert said[-1] == "trial 1 pruned: at epoch 1, val/loss 5"


def test_a_trial_that_ends_reports_every_epoch_and_its_best(
    tmp_path: Path, one_trial: Callable
) -> None:
    outcome, trial, said = one_trial(0.9, 3)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == outcome.value == pytest.approx(0.3)  # 0.9 / epoch: the last is best
    assert trial.intermediate_values == pytest.approx({1: 0.9, 2: 0.45, 3: 0.3})
    assert not (tmp_path / "trial-0001" / "got-sigterm").exists()
    assert said[1] == "trial 1 epoch 1: val/loss 0.9"


def test_a_taken_trial_directory_is_not_reused(tmp_path: Path, one_trial: Callable) -> None:
    (tmp_path / "trial-0001").mkdir()  # left by a study of the same name, since deleted
    _, trial, _ = one_trial(0.9, 1)
    assert trial.user_attrs["run_dir"] == str(tmp_path / "trial-0001-2")
    assert epoch_records(tmp_path / "trial-0001-2") == [1]
    assert not any((tmp_path / "trial-0001").iterdir())


@pytest.mark.parametrize(
    ("code", "state", "reason"),
    [
        (1, "PRUNED", "training failed: train/loss is nan by step 3"),  # diverged: a bad region
        (3, "FAIL", "exit 3"),  # anything else: the trial failed
    ],
)
def test_a_failed_run_is_pruned_when_training_diverged(
    one_trial: Callable, code: int, state: str, reason: str
) -> None:
    _, trial, _ = one_trial(0.5, 1, code)
    assert trial.state.name == state
    assert trial.user_attrs["reason"].startswith(reason)


@pytest.mark.parametrize(
    ("code", "status", "state"),
    [
        (-15, "finished", "COMPLETE"),  # the signal came as the finished run closed its files
        (0, "none", "COMPLETE"),
        (-15, "none", "WAITING"),  # stopped for real, before or after saving: requeued
        (130, "stopped", "WAITING"),
        (-9, "running", "WAITING"),
    ],
)
def test_a_sweep_stopped_as_a_trial_ends_keeps_its_value_or_requeues_it(
    one_trial: Callable, code: int, status: str, state: str
) -> None:
    outcome, trial, said = one_trial(0.9, 2, code, status=status, stop=True)
    assert trial.state.name == state
    if state == "COMPLETE":
        assert trial.value == outcome.value == pytest.approx(0.45)
        assert said[-1] == "trial 1 complete: val/loss 0.45 (epoch 2)"
    else:
        assert outcome.state == "interrupted"
        assert said[-1] == f"trial 1 interrupted: exit {code}; no checkpoint yet: it starts again"


def test_trials_of_a_killed_sweep_go_back_to_the_queue(tmp_path: Path) -> None:
    (tmp_path / "runs" / STUDY).mkdir(parents=True)
    study = optuna.create_study(study_name=STUDY, storage=journal(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    alive = subprocess.Popen([*sleep, "sweep"])
    orphan_dir = tmp_path / "trial-0000"  # its trial process outlived the killed sweep
    orphan = subprocess.Popen([*sleep, f"trainer.out_dir={orphan_dir}"])
    try:
        for sweep_pid, pid in ((dead.pid, orphan.pid), (alive.pid, None)):
            trial = study.ask()
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("sweep_pid", sweep_pid)
            trial.set_user_attr("run_dir", str(tmp_path / f"trial-{trial.number:04d}"))
            trial.set_user_attr("pid", pid)
        notes = recover_stale_trials(study, journal(tmp_path), tmp_path / "runs" / STUDY)
        assert orphan.wait(timeout=60) == -signal.SIGTERM  # stopped before the requeue
    finally:
        for process in (alive, orphan):
            process.kill()
            process.wait()
    states = [t.state for t in load_study(tmp_path).trials]
    assert states == [optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING]
    assert notes == [
        f"trial 0: its sweep (pid {dead.pid}) is gone; back to the queue, to go on from "
        "its last.pt (or start again without one)"
    ]


def test_a_sweep_starting_while_another_claims_a_trial_leaves_it_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sweeps starting together: the second recovers stale trials after every write the
    first makes to the storage while it takes a trial (a new one, then one back from the
    queue whose sweep was killed) and runs it; the trial stays the first's and ends once."""
    study_dir = tmp_path / "runs" / STUDY
    study_dir.mkdir(parents=True)
    storage = journal(tmp_path)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    # This test process is the first sweep, alive; no other pid runs a sweep.
    monkeypatch.setattr(sweep_module, "_runs", lambda pid, marker: pid == os.getpid())
    recovered: list[str] = []
    busy = False

    def then_the_other_sweep_starts(write: Callable) -> Callable:
        def written(*args: object, **kwargs: object) -> object:
            nonlocal busy
            result = write(*args, **kwargs)
            if not busy:  # not the other sweep's own writes
                busy = True
                recovered.extend(recover_stale_trials(study, storage, study_dir))
                busy = False
            return result

        return written

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()  # trial 0: its sweep (the dead pid) was killed
    trial.set_user_attr("sweep_pid", dead.pid)
    trial.set_user_attr("host", socket.gethostname())
    assert recover_stale_trials(study, storage, study_dir) == [
        f"trial 0: its sweep (pid {dead.pid}) is gone; back to the queue, to go on from its "
        "last.pt (or start again without one)"
    ]
    for method in ("create_new_trial", "set_trial_state_values", "set_trial_user_attr"):
        monkeypatch.setattr(storage, method, then_the_other_sweep_starts(getattr(storage, method)))
    script = tmp_path / "fake_fit.py"
    script.write_text(textwrap.dedent(FAKE_FIT), encoding="utf-8")
    fit = [sys.executable, str(script), "fake.epochs=1", "fake.code=0", "fake.status=none"]
    sweep = Sweep(fit, study_dir, "val/loss", "min", storage, lambda line: None)
    fixed = Dimension("fake.value", "choice", choices=(0.5,))
    space = Space("space.yaml", (fixed,), sampler=None, pruner=None)
    outcomes = [run_trial(sweep, study, space) for _ in range(2)]  # trial 0 again, then 1
    assert recovered == []
    assert [o.state for o in outcomes] == ["complete", "complete"]
    assert [t.state.name for t in load_study(tmp_path).trials] == ["COMPLETE", "COMPLETE"]


# ---------------------------------------------------------------- whole sweeps

SPACE = """
optimizer.lr: {log_uniform: [1.0e-2, 1.0e+2]}
pruner: {name: MedianPruner, n_startup_trials: 1}
enqueue:
  - {optimizer.lr: 0.1}
  - {optimizer.lr: 100.0}   # diverges: val/loss around 1e12 after one epoch
"""


def test_sweep_prunes_a_bad_region_writes_the_best_config_and_adds_trials(
    tmp_path: Path, write_config: Callable[..., Path], tiny_yaml: str, run_cli: Callable
) -> None:
    config, space = write_config(tiny_yaml), write_config(SPACE, "space.yaml")
    result = run_cli("sweep", config, "--space", space, "--trials", "2")
    assert result.exit_code == 0, result.output
    first = load_study(tmp_path).trials
    assert [t.state.name for t in first] == ["COMPLETE", "PRUNED"]
    assert [t.params["optimizer.lr"] for t in first] == [0.1, 100.0]
    assert list(first[0].intermediate_values) == [1, 2]
    assert list(first[1].intermediate_values) == [1]  # pruned after its first epoch
    assert first[0].value == min(first[0].intermediate_values.values())
    assert "trial 1 pruned: at epoch 1" in result.output
    assert "best trials by val/loss (min)" in result.output

    best = load_config(tmp_path / "runs" / STUDY / "best.yaml")
    assert best.optimizer.lr == 0.1
    assert (best.name, best.trainer.out_dir, best.trainer.epochs) == ("tiny", None, 2)
    assert epoch_records(tmp_path / "runs" / STUDY / "trial-0000") == [1, 2]

    again = run_cli("sweep", config, "--space", space, "--trials", "1")
    assert again.exit_code == 0, again.output
    assert "study tiny-sweep: 2 trials so far" in again.output
    trials = load_study(tmp_path).trials
    assert len(trials) == 3
    assert [(t.state, t.value, t.params) for t in trials[:2]] == [
        (t.state, t.value, t.params) for t in first
    ]
    assert trials[2].state.is_finished()
    assert (tmp_path / "runs" / STUDY / "trial-0002" / "metrics.jsonl").is_file()

    summary = run_cli("sweep", config, "--summary")
    assert summary.exit_code == 0, summary.output
    assert "study tiny-sweep: 3 trials" in summary.output


GAN_WITHOUT_VALIDATION = r"""
name: gan
seed: 0
model: {name: gan_mlp, latent: 4, hidden: 8}
data: {name: ring, n: 128, batch_size: 64}
step: {name: gan}
optimizers:
  generator: {params: '^generator\.', optimizer: {name: Adam, lr: 1.0e-3}}
  discriminator: {params: '^discriminator\.', optimizer: {name: Adam, lr: 1.0e-3}}
trainer: {epochs: 2, device: cpu, log_every: 1}
checkpoint: {monitor: train/g_loss}
"""


def test_a_sweep_reports_a_train_monitor_of_a_step_without_validation(
    tmp_path: Path, write_config: Callable[..., Path], run_cli: Callable
) -> None:
    config = write_config(GAN_WITHOUT_VALIDATION)
    space = write_config(
        "optimizers.generator.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-2]}\npruner: none\n",
        "s.yaml",
    )
    result = run_cli("sweep", config, "--space", space, "--trials", "1")
    assert result.exit_code == 0, result.output
    study_dir = tmp_path / "runs" / "gan-sweep"
    backend = optuna.storages.journal.JournalFileBackend(str(study_dir / "study.journal"))
    storage = optuna.storages.JournalStorage(backend)
    (trial,) = optuna.load_study(study_name="gan-sweep", storage=storage).trials
    records = read_metrics(study_dir / "trial-0000" / "metrics.jsonl")
    logged = {r["epoch"]: r["train/g_loss"] for r in records if is_epoch_record(r)}
    assert not any(key.startswith("val/") for r in records for key in r)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.intermediate_values == logged  # each epoch's, as Optuna's pruners see them
    assert list(logged) == [1, 2]
    assert trial.value == min(logged.values())
    assert "best trials by train/g_loss (min)" in result.output


def test_two_sweeps_and_two_jobs_share_one_study(
    tmp_path: Path, write_config: Callable[..., Path], tiny_yaml: str
) -> None:
    config = write_config(tiny_yaml)
    space = write_config("optimizer.lr: {log_uniform: [1.0e-2, 0.3]}\npruner: none\n", "s.yaml")
    (tmp_path / "runs" / STUDY).mkdir(parents=True)  # both start on the same (new) journal
    two_jobs = sweep_process(tmp_path, config, "--space", space, "--trials", "2", "--jobs", "2")
    one_job = sweep_process(tmp_path, config, "--space", space, "--trials", "1")
    for process in (two_jobs, one_job):
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output

    trials = load_study(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(run_dirs) == 3
    for run_dir in run_dirs:
        assert epoch_records(tmp_path / run_dir) == [1, 2]
    by_sweep = {
        pid: [t for t in trials if t.user_attrs["sweep_pid"] == pid]
        for pid in (two_jobs.pid, one_job.pid)
    }
    assert sorted(len(v) for v in by_sweep.values()) == [1, 2]
    pair = by_sweep[two_jobs.pid]
    # --jobs 2: both trials ran at once
    assert max(t.datetime_start for t in pair) < min(t.datetime_complete for t in pair)


def test_an_interrupted_sweep_resumes_its_trial_from_last_pt(
    tmp_path: Path, write_config: Callable[..., Path], tiny_yaml: str, run_cli: Callable
) -> None:
    config = write_config(tiny_yaml)
    space = write_config("optimizer.lr: {log_uniform: [1.0e-2, 0.3]}\npruner: none\n", "s.yaml")
    args = (config, "trainer.epochs=40", "--space", space, "--trials", "1")
    process = sweep_process(tmp_path, *args)
    run_dir = tmp_path / "runs" / STUDY / "trial-0000"
    deadline = time.monotonic() + 600
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 130, output
    assert "run the same command again to resume" in output
    (trial,) = load_study(tmp_path).trials
    assert trial.state == optuna.trial.TrialState.WAITING
    stopped_at = epoch_records(run_dir)
    assert 1 <= len(stopped_at) < 40

    result = run_cli("sweep", *args)
    assert result.exit_code == 0, result.output
    assert f"(resumed from {Path('runs', STUDY, 'trial-0000', 'checkpoints', 'last.pt')})" in (
        result.output
    )
    (trial,) = load_study(tmp_path).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert epoch_records(run_dir) == list(range(1, 41))  # each epoch once, in one run dir
    assert list(trial.intermediate_values) == list(range(1, 41))
    assert set(os.listdir(tmp_path / "runs" / STUDY)) == {
        "study.journal",
        "trial-0000",
        "trial-0000.log",
        "best.yaml",
    }


def test_the_trial_of_a_sweep_killed_outright_stops_with_it(
    tmp_path: Path, write_config: Callable[..., Path], tiny_yaml: str
) -> None:
    config = write_config(tiny_yaml)
    space = write_config("optimizer.lr: {log_uniform: [1.0e-2, 0.3]}\npruner: none\n", "s.yaml")
    process = sweep_process(tmp_path, config, "trainer.epochs=1000", "--space", space)
    run_dir = Path("runs", STUDY, "trial-0000")
    deadline = time.monotonic() + 600
    while not (tmp_path / run_dir / "metrics.jsonl").is_file():  # the trial trains
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    pid = load_study(tmp_path).trials[0].user_attrs["pid"]
    assert _runs(pid, str(run_dir))
    process.kill()  # SIGKILL: the sweep cannot pass anything on
    process.communicate()
    try:
        deadline = time.monotonic() + 15
        while _runs(pid, str(run_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _runs(pid, str(run_dir))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # It got SIGTERM (the parent-death signal), so it saved last.pt to be resumed.
    log = (tmp_path / run_dir.with_name("trial-0000.log")).read_text()
    assert f"interrupted: saved {run_dir / 'checkpoints' / 'last.pt'}" in log


def test_plots_draw_the_history_and_the_importances(tmp_path: Path) -> None:
    from trainer.tools.sweep import write_plots

    study = optuna.create_study()
    space = {
        "optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
        "data.batch_size": optuna.distributions.CategoricalDistribution([32, 64]),
    }
    for lr, batch, value in ((0.01, 32, 0.5), (0.1, 64, 0.2), (0.5, 32, 0.9)):
        params = {"optimizer.lr": lr, "data.batch_size": batch}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    notes = write_plots(study, tmp_path, monitor="val/loss")
    assert notes == [f"wrote {tmp_path / 'history.png'}", f"wrote {tmp_path / 'importance.png'}"]
    for name in ("history.png", "importance.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    (lonely := tmp_path / "lonely").mkdir()
    one = optuna.create_study()
    one.add_trial(study.trials[0])
    assert write_plots(one, lonely, monitor="val/loss") == [
        f"wrote {lonely / 'history.png'}",
        "importance.png: not drawn: it needs 2 complete trial(s)",
    ]
    assert not (lonely / "importance.png").exists()


def test_storage_urls_and_monitors_are_checked(
    write_config: Callable[..., Path], tiny_yaml: str, user_error: Callable
) -> None:
    from trainer.errors import UserError
    from trainer.tools.sweep import open_study

    config = write_config(tiny_yaml)
    space = write_config("optimizer.lr: {uniform: [0.01, 0.1]}\n", "space.yaml")
    user_error(
        "sweep",
        config,
        "--space",
        space,
        "--storage",
        "nosuchdb://me:secret@host/db",
        expect=["--storage: cannot open nosuchdb://me:***@host/db"],  # no password shown
    )
    storage = optuna.storages.InMemoryStorage()
    open_study("s", storage, monitor="val/loss", mode="min", sampler=None, pruner=None)
    with pytest.raises(UserError, match="study 's' minimizes val/loss; this config would "):
        open_study("s", storage, monitor="val/acc", mode="max", sampler=None, pruner=None)
