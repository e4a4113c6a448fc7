"""Under torchrun (2 processes, gloo), what one rank alone sees acts on every rank: a stop
request (a SIGTERM to rank 1 only) and a non-finite loss skipped with trainer.skip_nonfinite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

# 64 samples a rank in batches of 8, windows of 2: 4 steps an epoch; a log every 2 steps.
CONFIG = """\
    name: ddp
    model: {name: "helpers.ddp:tanh_mlp_troubled_rank", rank: "1", nan_at: 1, stop_at: 3}
    data: {name: shapes, size: 128, image_size: 8, batch_size: 8, shuffle: false}
    optimizer: {name: SGD, lr: 0.05, momentum: 0.9}
    trainer:
      epochs: 2
      device: cpu
      log_every: 2
      accumulate: 2
      skip_nonfinite: true
      dist_timeout: 60
"""


def test_one_ranks_stop_request_and_non_finite_loss_act_on_both(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(textwrap.dedent(CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", "c.yaml", "trainer.out_dir=run", "--nproc", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 130, output
    assert "Traceback" not in output
    assert result.stderr.count("resume with:") == 1

    # Rank 1's NaN (batch 0) was skipped on both ranks: rank 0, which writes, counts it.
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [(r["step"], r["train/skipped"]) for r in records] == [(2, 1)]
    # Rank 1's stop request (in step 2) stopped both at step 2, the first step they share.
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert (last["step"], last["batch_in_epoch"]) == (2, 4)
    assert all(torch.isfinite(tensor).all() for tensor in last["model"].values())
