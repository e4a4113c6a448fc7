"""trainer.ema under DDP and trainer.strategy: fsdp (gloo, CPU, `--nproc 2` through the CLI):
the average of two ddp processes equals one process's within what their weights differ by, and
fsdp's (kept as shards) equals ddp's; one-process fsdp equals the unsharded average bit for bit
(BatchNorm buffers included); a sharded checkpoint holds the average in its DCP files, resumes
2 -> 2 bit for bit and 2 -> 1 resharded; eval/export --ema read a sharded directory whole."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from test_distributed import trainer
from test_fsdp_resume import assert_close, fit

from trainer.runs.metrics_file import is_epoch_record, read_metrics
from trainer.state.checkpoint import RunState, load_checkpoint

# 20 steps an epoch at a global batch of 16 (no shuffling), AdamW, a frozen layer; the
# average every 3 steps with a warmup, so its updates straddle the checkpoints.
CONFIG = """\
    name: ema
    seed: 3
    model: {name: "helpers.blocks:blocks_mlp"}
    data: {name: shapes, size: 320, image_size: 8, batch_size: 8, shuffle: false}
    optimizer: {name: AdamW, lr: 0.01, weight_decay: 0.1}
    param_groups: {freeze: ['^embed\\.']}
    trainer: {epochs: 2, device: cpu, log_every: 5,
              ema: {decay: 0.8, every_steps: 3, warmup: {power: 0.75}}}
"""
FSDP = ("trainer.strategy=fsdp", r"fsdp={units: ['^blocks\.\d+$']}")
# A forward then keeps its unit's parameters gathered: swapping the shards must free them.
KEPT = ("trainer.strategy=fsdp", r"fsdp={units: ['^blocks\.\d+$'], reshard_after_forward: false}")
TWO = ("--nproc", "2")
ONE_PROCESS = ("data.batch_size=16",)  # the global batch of two processes of 8
MID_EPOCH = "trainer.max_steps=27"  # stops in epoch 2 (at update 9 of 13)
LAST = "checkpoints/last.pt"
UPDATES = 40 // 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ema-distributed")
    (root / "c.yaml").write_text(textwrap.dedent(CONFIG))
    fit(root, "one", *ONE_PROCESS)
    fit(root, "ddp", *TWO)
    fit(root, "fsdp", *FSDP, *TWO)
    fit(root, "kept", *KEPT, *TWO)
    fit(root, "same", *FSDP, *TWO, MID_EPOCH)
    for copy in ("fewer", "to-ddp"):
        shutil.copytree(root / "same", root / copy)
    shutil.copytree(root / "ddp", root / "from-ddp")
    go_on = "trainer.max_steps=null"
    resumed = fit(root, "same", *FSDP, *TWO, go_on, "--resume", f"same/{LAST}")
    (root / "same.out").write_text(resumed)
    fit(root, "fewer", *FSDP, *ONE_PROCESS, go_on, "--resume", f"fewer/{LAST}")
    fit(root, "to-ddp", *TWO, go_on, "--resume", f"to-ddp/{LAST}")
    fit(root, "from-ddp", *FSDP, *TWO, "--resume", "from-ddp/checkpoints/epoch-0001.pt")
    return root


def saved(run: Path) -> RunState:
    return load_checkpoint(run / LAST)


def ema_of(run: Path) -> dict[str, torch.Tensor]:
    state = saved(run).ema
    assert state is not None
    assert state.updates == UPDATES
    return state.weights


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def epoch_records(run: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(run / "metrics.jsonl") if is_epoch_record(r)]


def test_two_ddp_processes_average_as_one_process_does(runs: Path) -> None:
    assert_close(saved(runs / "ddp").model, saved(runs / "one").model)
    assert_close(ema_of(runs / "ddp"), ema_of(runs / "one"))
    assert not torch.equal(
        ema_of(runs / "ddp")["head.weight"], saved(runs / "ddp").model["head.weight"]
    )


def test_fsdp_keeps_the_average_as_shards_equal_to_ddps(runs: Path) -> None:
    last = runs / "fsdp" / LAST
    assert last.is_dir()  # a sharded checkpoint: the average is in its DCP files
    assert_close(ema_of(runs / "fsdp"), ema_of(runs / "ddp"))
    frozen = "embed.weight"  # never trained: its average is its value, on every path
    assert torch.equal(ema_of(runs / "fsdp")[frozen], saved(runs / "fsdp").model[frozen])
    for fsdp, ddp in zip(epoch_records(runs / "fsdp"), epoch_records(runs / "ddp"), strict=True):
        assert fsdp["val/ema/loss"] == pytest.approx(ddp["val/ema/loss"], abs=1e-5)
        assert fsdp["val/ema/acc"] == pytest.approx(ddp["val/ema/acc"], abs=1e-5)
        assert fsdp["val/ema/loss"] != fsdp["val/loss"]


def test_the_average_is_validated_when_a_forward_keeps_the_parameters_gathered(
    runs: Path,
) -> None:
    assert_equal(ema_of(runs / "kept"), ema_of(runs / "fsdp"))
    assert_equal(saved(runs / "kept").model, saved(runs / "fsdp").model)
    kept, fsdp = epoch_records(runs / "kept"), epoch_records(runs / "fsdp")
    for key in ("val/loss", "val/ema/loss", "val/ema/acc"):
        assert [r[key] for r in kept] == [r[key] for r in fsdp], key


def test_a_sharded_resume_is_bit_for_bit_at_the_same_process_count(runs: Path) -> None:
    assert (
        "resumed from same/checkpoints/last.pt: epoch 1, step 27" in (runs / "same.out").read_text()
    )
    assert_equal(ema_of(runs / "same"), ema_of(runs / "fsdp"))
    assert_equal(saved(runs / "same").model, saved(runs / "fsdp").model)
    straight, resumed = epoch_records(runs / "fsdp"), epoch_records(runs / "same")
    assert [r["val/ema/loss"] for r in resumed] == [r["val/ema/loss"] for r in straight]


def test_a_sharded_average_resumes_resharded_on_one_process(runs: Path) -> None:
    assert (runs / "fewer" / LAST).is_dir()
    assert_close(ema_of(runs / "fewer"), ema_of(runs / "fsdp"))


def test_an_average_moves_between_ddp_files_and_sharded_directories(runs: Path) -> None:
    assert (runs / "to-ddp" / LAST).is_file()  # ddp read the directory's average whole
    assert (runs / "from-ddp" / LAST).is_dir()  # fsdp sliced the file's average into shards
    assert_close(ema_of(runs / "to-ddp"), ema_of(runs / "fsdp"))
    assert_close(ema_of(runs / "from-ddp"), ema_of(runs / "fsdp"))


def test_eval_and_export_ema_read_a_sharded_directory_whole(runs: Path) -> None:
    checkpoint = f"fsdp/{LAST}"
    exported = trainer(runs, "export", checkpoint, "ema.pt", "--ema")
    assert exported.returncode == 0, exported.stderr
    weights = torch.load(runs / "ema.pt", weights_only=True)
    assert_equal(weights, ema_of(runs / "fsdp"))
    evaluated = trainer(
        runs, "eval", "c.yaml", *FSDP, "--checkpoint", checkpoint, "--ema", "--json"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    record = epoch_records(runs / "fsdp")[-1]
    assert metrics["val/ema/loss"] == pytest.approx(record["val/ema/loss"], abs=1e-6)
    inspected = trainer(runs, "inspect", checkpoint)
    said = f"ema: EMA weights, decay 0.8, every 3 step(s), warmup power 0.75 gamma 1, {UPDATES}"
    assert said + " updates" in inspected.stdout


# One process under fsdp (FSDP2 over a mesh of one) against the plain run: the same average
# bit for bit, BatchNorm's running statistics and its integer count included.
BN = """\
    name: bn
    seed: 0
    model: {name: "helpers.loop:bn_net"}
    data: {name: shapes, size: 96, image_size: 8, batch_size: 16, shuffle: false}
    optimizer: {name: SGD, lr: 0.1, momentum: 0.9}
    trainer: {epochs: 2, device: cpu, log_every: 2, ema: {decay: 0.9, every_steps: 2}}
"""


@pytest.mark.parametrize("reshard", ["true", "false"])  # false: a forward keeps them gathered
def test_one_process_fsdp_averages_bit_for_bit_as_the_plain_run(
    reshard: str, tmp_path: Path
) -> None:
    (tmp_path / "c.yaml").write_text(textwrap.dedent(BN))
    fit(tmp_path, "plain")
    fit(tmp_path, "sharded", "trainer.strategy=fsdp", f"fsdp={{reshard_after_forward: {reshard}}}")
    plain, sharded = saved(tmp_path / "plain"), saved(tmp_path / "sharded")
    assert (tmp_path / "sharded" / LAST).is_dir()
    assert plain.ema is not None and sharded.ema is not None
    assert sharded.ema.updates == plain.ema.updates == 6
    assert_equal(sharded.model, plain.model)
    assert_equal(sharded.ema.weights, plain.ema.weights)
    assert "1.num_batches_tracked" in sharded.ema.weights
    records = epoch_records(tmp_path / "sharded"), epoch_records(tmp_path / "plain")
    assert [r["val/ema/loss"] for r in records[0]] == [r["val/ema/loss"] for r in records[1]]


def test_a_ddp_resume_validates_the_average_of_batchnorm_as_the_straight_run(
    tmp_path: Path,
) -> None:
    """Each DDP process averages its own replica's BatchNorm statistics; the average's become
    rank 0's before validating, so a resume (every process loads rank 0's) logs the same
    val/ema/* as the run that never stopped, mid-epoch checkpoint included."""
    (tmp_path / "c.yaml").write_text(textwrap.dedent(BN))
    shuffled = ("data.shuffle=true", "data.batch_size=8", "trainer.epochs=3")  # ranks differ
    fit(tmp_path, "straight", *shuffled, *TWO)
    fit(tmp_path, "resumed", *shuffled, *TWO, "trainer.max_steps=9")  # epoch 2 of 6 steps
    fit(
        tmp_path,
        "resumed",
        *shuffled,
        *TWO,
        "trainer.max_steps=null",
        "--resume",
        f"resumed/{LAST}",
    )
    straight, resumed = saved(tmp_path / "straight"), saved(tmp_path / "resumed")
    assert straight.ema is not None and resumed.ema is not None
    assert_equal(resumed.ema.weights, straight.ema.weights)
    records = epoch_records(tmp_path / "resumed"), epoch_records(tmp_path / "straight")
    assert [r["val/ema/loss"] for r in records[0]] == [r["val/ema/loss"] for r in records[1]]
