"""torch.distributed on CPU (gloo): real 2-process torchrun runs against one process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainer.components.data import EpochSampler
from trainer.runs.metrics_file import is_epoch_record, read_metrics

CONFIG = """\
    name: ddp
    model: {name: "helpers.ddp:tanh_mlp"}
    data: {name: shapes, size: 128, image_size: 8, batch_size: 8, shuffle: false}
    optimizer: {name: SGD, lr: 0.05, momentum: 0.9}
    scheduler: {name: StepLR, step_size: 1, gamma: 0.5}
    trainer: {epochs: 2, device: cpu, log_every: 4, accumulate: 2}
"""


def trainer(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m trainer ...` in tmp_path, as a user runs it (torchrun via --nproc)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def records(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.jsonl")


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process with batch 16; two with batch 8 each; two for 1 epoch, then one."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "c.yaml").write_text(textwrap.dedent(CONFIG))
    results = [
        trainer(root, "fit", "c.yaml", "trainer.out_dir=one", "data.batch_size=16"),
        trainer(root, "fit", "c.yaml", "trainer.out_dir=two", "--nproc", "2"),
        trainer(root, "fit", "c.yaml", "trainer.out_dir=half", "trainer.epochs=1", "--nproc", "2"),
        trainer(
            root, "fit", "c.yaml", "trainer.out_dir=half", "data.batch_size=16", "--resume", "auto"
        ),
    ]
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
    (root / "two.out").write_text(results[1].stdout)
    return root


def test_two_processes_equal_one_with_the_doubled_batch(runs: Path) -> None:
    assert_close(weights(runs / "two"), weights(runs / "one"))


def test_metrics_are_written_once_and_agree_with_one_process(runs: Path) -> None:
    two, one = records(runs / "two"), records(runs / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for ours, theirs in zip(two, one, strict=True):
        for key in ("train/loss", "val/loss", "val/acc", "lr/default"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key


def test_the_summary_states_the_global_batch(runs: Path) -> None:
    output = (runs / "two.out").read_text()
    assert "distributed: 2 processes (gloo, ddp), global batch 2 x 8 x 2 = 32" in output
    assert output.count("done: step") == 1  # rank 0 alone prints


def test_a_two_process_checkpoint_resumes_on_one_process(runs: Path) -> None:
    assert_close(weights(runs / "half"), weights(runs / "one"))
    assert [r["epoch"] for r in records(runs / "half") if is_epoch_record(r)] == [1, 2]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_each_epoch_and_a_resume_point_between_them(world_size: int) -> None:
    def shard(rank: int, start: int = 0) -> list[int]:
        sampler = EpochSampler(10, shuffle=True, seed=3, rank=rank, world_size=world_size)
        sampler.set_epoch(2, start=start)
        assert len(sampler) == len(list(sampler))
        return list(sampler)

    every = sorted(i for rank in range(world_size) for i in shard(rank))
    padding = -10 % world_size
    assert set(every) == set(range(10)) and len(every) == 10 + padding
    # Skipping 2 samples per rank of the whole job leaves each rank's tail of its own shard.
    for rank in range(world_size):
        assert shard(rank, start=2 * world_size) == shard(rank)[2:]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_the_launcher_saves_and_exits_130(tmp_path: Path, signal_name: str) -> None:
    name = "helpers.ddp:tanh_mlp_signalling_launcher"
    model = f'{{name: "{name}", signal_name: {signal_name}, at: 3}}'
    config = textwrap.dedent(CONFIG).replace('{name: "helpers.ddp:tanh_mlp"}', model)
    (tmp_path / "c.yaml").write_text(config)
    result = trainer(tmp_path, "fit", "c.yaml", "trainer.out_dir=stopped", "--nproc", "2")
    output = result.stdout + result.stderr
    assert result.returncode == 130, output
    assert "Traceback" not in output and "SignalException" not in output
    last = Path("stopped", "checkpoints", "last.pt")
    assert result.stderr.count("resume with:") == 1  # rank 0 alone prints
    assert f"resume with: trainer fit c.yaml trainer.out_dir=stopped --nproc 2 --resume {last}" in (
        result.stderr
    )
    # Stopped at the first step the ranks agree on (log_every 4), before the end of epoch 1.
    assert torch.load(tmp_path / last, weights_only=True)["step"] == 4
