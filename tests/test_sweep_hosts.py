"""A study shared between machines: a sweep never requeues a running trial that another
machine's sweep holds (its process is not here to be looked for)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna

STUDY = "tiny-sweep"  # the default study name of the tiny config (`tiny`)
SPACE = "optimizer.lr: {log_uniform: [1.0e-2, 0.3]}\npruner: none\n"


def test_a_running_trial_of_another_host_is_left_running(
    tmp_path: Path, write_config: Callable[..., Path], tiny_yaml: str, run_cli: Callable
) -> None:
    study_dir = tmp_path / "runs" / STUDY
    study_dir.mkdir(parents=True)
    backend = optuna.storages.journal.JournalFileBackend(str(study_dir / "study.journal"))
    storage = optuna.storages.JournalStorage(backend)
    study = optuna.create_study(study_name=STUDY, storage=storage)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that runs nothing here: on this host, its sweep would be dead
    lr = optuna.distributions.FloatDistribution(0.01, 0.3, log=True)
    theirs = study.ask({"optimizer.lr": lr})
    theirs.set_user_attr("host", "another-machine.example")
    theirs.set_user_attr("sweep_pid", gone.pid)
    theirs.set_user_attr("run_dir", str(tmp_path / "elsewhere" / "trial-0000"))
    theirs.set_user_attr("overrides", [f"optimizer.lr={theirs.params['optimizer.lr']}"])

    config, space = write_config(tiny_yaml), write_config(SPACE, "space.yaml")
    result = run_cli("sweep", config, "--space", space, "--trials", "1", "trainer.epochs=1")
    assert "back to the queue" not in result.output
    assert result.exit_code == 0, result.output

    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.COMPLETE,
    ]
    assert trials[0].user_attrs["host"] == "another-machine.example"
    assert not (tmp_path / "elsewhere").exists()
