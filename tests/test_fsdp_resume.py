"""Resuming sharded runs through the CLI (gloo, CPU): at the same process count bit for bit;
on one process (2 -> 1; 1 -> 2 is in test_sharded_checkpoint.py) and across strategies
(ddp <-> fsdp) equal to the straight run within 1e-5; a sharded run's weights exported and
read back without the runner."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from test_distributed import trainer

from trainer.state.checkpoint import load_checkpoint

# AdamW in two groups, clipping, accumulation: state that a resume must carry exactly.
CONFIG = """\
    name: sharded
    seed: 3
    model: {name: "helpers.ddp:tanh_mlp"}
    data: {name: shapes, size: 96, image_size: 8, batch_size: 8}
    optimizer: {name: AdamW, lr: 0.01, weight_decay: 0.1}
    param_groups: {no_decay: [bias]}
    scheduler: {name: StepLR, step_size: 1, gamma: 0.5}
    trainer: {epochs: 2, device: cpu, log_every: 2, accumulate: 2, clip_grad_norm: 1.0,
              strategy: fsdp}
    fsdp: {units: ['^1$']}
"""
DDP = ("trainer.strategy=ddp", "fsdp=null")
ONE_PROCESS = ("data.batch_size=16",)  # the global batch of two processes of 8
TWO = ("--nproc", "2")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt").model


def fit(root: Path, out: str, *args: str) -> str:
    result = trainer(root, "fit", "c.yaml", f"trainer.out_dir={out}", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fsdp-resume")
    (root / "c.yaml").write_text(textwrap.dedent(CONFIG))
    fit(root, "straight", *TWO)
    fit(root, "same", "trainer.epochs=1", *TWO)
    for copy in ("fewer", "to-ddp"):
        shutil.copytree(root / "same", root / copy)
    fit(root, "from-ddp", "trainer.epochs=1", *DDP, *TWO)
    last = "checkpoints/last.pt"
    (root / "same.out").write_text(fit(root, "same", "--resume", f"same/{last}", *TWO))
    fit(root, "fewer", "--resume", f"fewer/{last}", *ONE_PROCESS)
    fit(root, "to-ddp", "--resume", f"to-ddp/{last}", *DDP, *TWO)
    fit(root, "from-ddp", "--resume", f"from-ddp/{last}", *TWO)
    return root


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


def test_a_sharded_checkpoint_is_a_directory_of_every_rank_shards(runs: Path) -> None:
    last = runs / "straight" / "checkpoints" / "last.pt"
    assert last.is_dir()
    assert {p.name for p in last.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert (last / "trainer.pt").is_file()


def test_a_resume_at_the_same_process_count_is_bit_for_bit(runs: Path) -> None:
    straight, resumed = weights(runs / "straight"), weights(runs / "same")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    straight_state = load_checkpoint(runs / "straight/checkpoints/last.pt").optimizers
    resumed_state = load_checkpoint(runs / "same/checkpoints/last.pt").optimizers
    for key, moments in straight_state["optimizer"].optimizer["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, resumed_state["optimizer"].optimizer["state"][key][name])
    assert "resumed from same/checkpoints/last.pt: epoch 1" in (runs / "same.out").read_text()


def test_a_two_process_sharded_checkpoint_resumes_on_one_process(runs: Path) -> None:
    assert_close(weights(runs / "fewer"), weights(runs / "straight"))


def test_a_sharded_checkpoint_resumes_under_ddp_and_a_ddp_one_under_fsdp(runs: Path) -> None:
    assert (runs / "to-ddp/checkpoints/last.pt").is_file()  # ddp writes a file again
    assert (runs / "from-ddp/checkpoints/last.pt").is_dir()
    assert_close(weights(runs / "to-ddp"), weights(runs / "straight"))
    assert_close(weights(runs / "from-ddp"), weights(runs / "straight"))


def test_a_sharded_run_exports_its_weights_for_use_without_the_runner(runs: Path) -> None:
    result = trainer(runs, "export", "straight/checkpoints/last.pt", "w.pt")
    assert result.returncode == 0, result.stdout + result.stderr
    exported = torch.load(runs / "w.pt", weights_only=True)
    straight = weights(runs / "straight")
    assert exported.keys() == straight.keys()
    assert all(torch.equal(exported[k], straight[k]) for k in straight)
