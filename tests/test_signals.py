"""SIGINT / SIGTERM to `trainer fit` outside the training steps: during start-up (exit 130,
nothing written) and right after training ended (the run finishes: exit 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from trainer.interrupt import StopRequests

CONFIG = """\
    name: s
    model: {name: "helpers.loop:tiny"}
    data: {name: shapes, size: 64, image_size: 8, batch_size: 32}
    optimizer: {name: SGD, lr: 0.1}
    trainer: {epochs: 1, device: cpu}
"""


def run_python(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """`python -c code args...` in tmp_path, with the tests' helper modules importable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sigterm_during_start_up_is_exit_130_and_writes_nothing(tmp_path: Path) -> None:
    config = textwrap.dedent(CONFIG).replace(
        "helpers.loop:tiny", "helpers.loop:tiny_terminated_while_building"
    )
    (tmp_path / "c.yaml").write_text(config)
    result = run_python(tmp_path, "from trainer.cli import main; main()", "fit", "c.yaml")
    assert result.returncode == 130, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == "interrupted"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # the model is built before a run directory is made


# `trainer fit`, with a SIGTERM sent to itself as it closes its files after training.
SIGNAL_AFTER_TRAINING = """
import os, signal
from trainer.engine import loop
from trainer.cli import main

close = loop.Output.close

def close_after_a_signal(self):
    os.kill(os.getpid(), signal.SIGTERM)
    close(self)

loop.Output.close = close_after_a_signal
main()
"""


def test_a_signal_after_training_lets_the_run_finish(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(textwrap.dedent(CONFIG))
    result = run_python(tmp_path, SIGNAL_AFTER_TRAINING, "fit", "c.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done: step 2" in result.stdout
    status = json.loads((tmp_path / "runs" / "s" / "status.json").read_text())
    assert status["status"] == "finished"


def test_a_stop_requested_before_training_reaches_the_loop() -> None:
    """The run's outer StopRequests (from the run directory's claim on) hands a request to
    the loop's own, and gets the loop's back when the loop ends."""
    with StopRequests() as run:
        os.kill(os.getpid(), signal.SIGINT)
        with StopRequests() as loop:
            assert loop.requested
    assert run.requested
    with StopRequests() as run:
        with StopRequests():
            os.kill(os.getpid(), signal.SIGTERM)
        assert run.requested
