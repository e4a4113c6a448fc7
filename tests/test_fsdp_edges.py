"""Where fsdp differs from ddp underneath: every forward is a collective (validation with
uneven shares), unreduced grads live out of the handles' reach (several optimizers with
accumulation), and torch's sharded state dict would step an optimizer that has not stepped."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_distributed import trainer
from test_fsdp import CONFIG, FSDP, GAN, assert_close, records, weights

from trainer.runs.metrics_file import is_epoch_record
from trainer.state.checkpoint import load_checkpoint


def test_uneven_validation_shares_under_fsdp_validate_as_ddp(tmp_path: Path) -> None:
    # 33 validation samples in batches of 4 over 2 processes: 5 batches on rank 0, 4 on rank 1.
    config = textwrap.dedent(CONFIG).replace(
        "shuffle: false}", "shuffle: false, val_fraction: 0.1, val_batch_size: 4}"
    )
    (tmp_path / "c.yaml").write_text(config.replace("size: 320", "size: 330"))
    for out, extra in (("fsdp", FSDP), ("ddp", [])):
        result = trainer(
            tmp_path, "fit", "c.yaml", f"trainer.out_dir={out}", "trainer.dist_timeout=60",
            "--nproc", "2", *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    [fsdp], [ddp] = ([r for r in records(tmp_path / out) if is_epoch_record(r)]
                     for out in ("fsdp", "ddp"))  # fmt: skip
    assert fsdp["val/loss"] == pytest.approx(ddp["val/loss"], abs=1e-5)
    assert fsdp["val/acc"] == ddp["val/acc"]


def test_a_gan_accumulating_under_fsdp_equals_the_gan_without_it(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(textwrap.dedent(GAN))
    units = "fsdp.units=[^generator$, ^discriminator$]"
    for out, extra in (("fsdp", ["trainer.strategy=fsdp", units]), ("plain", [])):
        result = trainer(
            tmp_path, "fit", "c.yaml", f"trainer.out_dir={out}", "trainer.accumulate=2", *extra
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert_close(weights(tmp_path / "fsdp"), weights(tmp_path / "plain"), atol=0.0)


@pytest.fixture
def one_process_group() -> object:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_saving_an_optimizer_that_has_not_stepped_leaves_it_unstepped(
    one_process_group: object,
) -> None:
    from torch.distributed.fsdp import fully_shard

    from trainer.engine.sharding import sharded_optimizer_state

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    groups = {"default": [name for name, _ in model.named_parameters()]}
    saved = sharded_optimizer_state(model, optimizer, groups)
    assert not optimizer.state  # no step of lr 0 was taken to give it a state
    assert saved["state"] == {}
    assert saved["param_groups"][0]["params"] == groups["default"]


ONLY_DISCRIMINATOR = '''
import torch.nn.functional as F


def only_discriminator(batch, model, optimizers, ctx):
    """A GAN step whose generator never steps: its optimizer is saved without a state."""
    real = batch[0] if isinstance(batch, (list, tuple)) else batch
    loss = F.softplus(-model.discriminator(real)).mean()
    optimizers["discriminator"].update(loss)
    return {"d_loss": loss}
'''


def test_a_sharded_checkpoint_of_an_optimizer_that_never_stepped_resumes(
    tmp_path: Path,
) -> None:
    (tmp_path / "mysteps.py").write_text(ONLY_DISCRIMINATOR)
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(GAN).replace(
            "step: {name: gan}", 'step: {name: "mysteps:only_discriminator"}'
        )
    )
    sharded = ["trainer.strategy=fsdp", "fsdp.units=[^generator$, ^discriminator$]"]
    first = trainer(tmp_path, "fit", "c.yaml", "trainer.out_dir=run", *sharded)
    assert first.returncode == 0, first.stdout + first.stderr
    last = tmp_path / "run/checkpoints/last.pt"
    saved = load_checkpoint(last)  # read whole, in this process
    assert saved.optimizers["generator"].optimizer["state"] == {}
    assert saved.optimizers["discriminator"].optimizer["state"]
    resumed = trainer(
        tmp_path, "fit", "c.yaml", "trainer.out_dir=run", "trainer.epochs=2", *sharded,
        "--resume", "run/checkpoints/last.pt",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [*_, record] = [r for r in records(tmp_path / "run") if is_epoch_record(r)]
    assert record["epoch"] == 2
    assert record["updates/generator"] == 0 and record["updates/discriminator"] == 2 * 16
