"""Several optimizers and custom steps: the built-in GAN step against the same two-optimizer
loop written by hand, resume, the errors of the several-optimizer form, user steps, plain
tensors as models, distillation.

The GAN runs train `gan_mlp` on 512 `ring` points in batches of 64 (8 batches per epoch);
the hand-written loop draws the same batches (the runner's epoch order is a pure function of
(seed, epoch)) and the same noise (the step's generator is seeded from (seed, rank, epoch,
batch)), so the two must end on the same weights and optimizer states, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from trainer.components.data import epoch_seed
from trainer.components.datasets import ring
from trainer.components.models import gan_mlp
from trainer.config import load_config
from trainer.engine.loop import fit
from trainer.errors import Interrupted
from trainer.runs.metrics_file import is_epoch_record, read_metrics

EPOCHS, SAMPLES, BATCH, LATENT, HIDDEN = 2, 512, 64, 4, 16

GAN = textwrap.dedent(
    rf"""
    name: gan
    seed: 0
    model: {{name: gan_mlp, latent: {LATENT}, hidden: {HIDDEN}}}
    data: {{name: ring, n: {SAMPLES}, batch_size: {BATCH}}}
    step: {{name: gan}}
    val_step: {{name: ring_quality}}
    optimizers:
      generator:
        params: '^generator\.'
        optimizer: {{name: Adam, lr: 2.0e-3, betas: [0.5, 0.999]}}
        scheduler: {{name: StepLR, step_size: 1, gamma: 0.5}}
      discriminator:
        params: '^discriminator\.'
        optimizer: {{name: Adam, lr: 1.0e-3, betas: [0.5, 0.999]}}
    trainer: {{epochs: {EPOCHS}, device: cpu, log_every: 4}}
    checkpoint: {{monitor: val/modes_covered}}
    """
).lstrip()


@pytest.fixture
def gan_config(tmp_path: Path) -> Callable[..., Any]:
    """`gan_config(*overrides, text=GAN)`: the GAN config with its runs under tmp_path."""

    def make(*overrides: str, text: str = GAN) -> Any:
        path = tmp_path / "gan.yaml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, [f"trainer.out_dir={tmp_path / 'runs'}", *overrides])

    return make


def hand_written_gan(
    epochs: int, *, accumulate: int = 1, clip: float | None = None
) -> tuple[torch.nn.Module, dict[str, torch.optim.Optimizer]]:
    """The same GAN trained by a loop written out by hand."""
    torch.manual_seed(0)
    model = gan_mlp(latent=LATENT, hidden=HIDDEN)
    points = ring(train=True, n=SAMPLES).tensors[0]
    generator, discriminator = model.generator, model.discriminator
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    scheduler_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=1, gamma=0.5)
    batches = SAMPLES // BATCH
    for epoch in range(1, epochs + 1):
        order = torch.randperm(
            SAMPLES, generator=torch.Generator().manual_seed(epoch_seed(0, epoch))
        )
        for index in range(batches):
            real = points[order[index * BATCH : (index + 1) * BATCH]]
            noise_rng = torch.Generator().manual_seed(hash((0, 0, epoch, index)) & (2**63 - 1))
            noise = torch.randn(BATCH, LATENT, generator=noise_rng)
            start = index - index % accumulate
            size = min(accumulate, batches - start)
            last = index + 1 == start + size
            if index == start:
                opt_d.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
            fake = generator(noise)
            d_loss = (
                F.softplus(-discriminator(real)).mean()
                + F.softplus(discriminator(fake.detach())).mean()
            )
            (d_loss / size if size > 1 else d_loss).backward(
                inputs=list(discriminator.parameters())
            )
            if last:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(list(discriminator.parameters()), clip)
                opt_d.step()
            g_loss = F.softplus(-discriminator(fake)).mean()
            (g_loss / size if size > 1 else g_loss).backward(inputs=list(generator.parameters()))
            if last:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(list(generator.parameters()), clip)
                opt_g.step()
        scheduler_g.step()
    return model, {"generator": opt_g, "discriminator": opt_d}


def assert_same_state(checkpoint: dict, model: torch.nn.Module, optimizers: dict) -> None:
    """Weights and every optimizer's state, bit for bit."""
    for name, tensor in model.state_dict().items():
        assert torch.equal(checkpoint["model"][name], tensor), name
    for name, optimizer in optimizers.items():
        saved = checkpoint["optimizers"][name]["state"]
        for index, state in optimizer.state_dict()["state"].items():
            for key, value in state.items():
                assert torch.equal(saved[index][key], value), (name, index, key)


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.parametrize(
    ("overrides", "accumulate", "clip"),
    [
        ((), 1, None),
        (("trainer.accumulate=2",), 2, None),
        (("trainer.clip_grad_norm=0.05",), 1, 0.05),
    ],
    ids=["plain", "accumulate-2", "clip-norm"],
)
def test_gan_step_equals_the_hand_written_two_optimizer_loop(
    gan_config: Callable[..., Any], overrides: tuple[str, ...], accumulate: int, clip: float | None
) -> None:
    result = fit(gan_config(*overrides))
    model, optimizers = hand_written_gan(EPOCHS, accumulate=accumulate, clip=clip)

    checkpoint = last_checkpoint(result.run_dir)
    assert checkpoint["step"] == EPOCHS * (SAMPLES // BATCH) // accumulate
    assert set(checkpoint["optimizers"]) == {"generator", "discriminator"}
    assert_same_state(checkpoint, model, optimizers)
    # The generator's StepLR halved its lr once per epoch; the discriminator has none.
    assert checkpoint["optimizers"]["generator"]["param_groups"][0]["lr"] == 2e-3 / 4
    assert checkpoint["optimizers"]["discriminator"]["param_groups"][0]["lr"] == 1e-3


def test_gan_metrics_are_logged_per_optimizer(gan_config: Callable[..., Any]) -> None:
    result = fit(gan_config())

    records = read_metrics(result.run_dir / "metrics.jsonl")
    step_record, epoch_record = records[0], records[2]
    assert {"train/d_loss", "train/g_loss", "lr/generator/default"} <= set(step_record)
    assert {"val/modes_covered", "val/mode_distance", "val/close"} <= set(epoch_record)
    assert epoch_record["lr/discriminator/default"] == 1e-3
    assert 0 <= epoch_record["val/modes_covered"] <= 8


def test_gan_resumed_after_two_epochs_equals_four_straight(
    gan_config: Callable[..., Any], tmp_path: Path
) -> None:
    straight = fit(gan_config("trainer.epochs=4", f"trainer.out_dir={tmp_path / 'straight'}"))
    stopped = fit(gan_config("trainer.epochs=2"))
    resumed = fit(
        gan_config("trainer.epochs=4"), resume=str(stopped.run_dir / "checkpoints/last.pt")
    )

    assert resumed.run_dir == stopped.run_dir
    a, b = last_checkpoint(straight.run_dir), last_checkpoint(resumed.run_dir)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for name in ("generator", "discriminator"):
        for index, state in a["optimizers"][name]["state"].items():
            for key, value in state.items():
                assert torch.equal(b["optimizers"][name]["state"][index][key], value)
    assert a["schedulers"] == b["schedulers"]


def test_gan_resumed_from_a_mid_epoch_sigterm_equals_a_straight_run(
    gan_config: Callable[..., Any], tmp_path: Path
) -> None:
    straight = fit(gan_config(f"trainer.out_dir={tmp_path / 'straight'}"))
    stop_at = GAN.replace(
        "step: {name: gan}", "step: {name: 'helpers.steps:gan_stopped_at', at: 11}"
    )
    with pytest.raises(Interrupted):
        fit(gan_config(text=stop_at))
    stopped = last_checkpoint(tmp_path / "runs")
    assert (stopped["epoch"], stopped["step"], stopped["batch_in_epoch"]) == (1, 12, 4)

    resumed = fit(gan_config(text=stop_at), resume="auto")

    a, b = last_checkpoint(straight.run_dir), last_checkpoint(resumed.run_dir)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    steps = [
        r["step"] for r in read_metrics(resumed.run_dir / "metrics.jsonl") if "val/close" not in r
    ]
    assert steps == sorted(set(steps))  # each logged step once


def two_form(extra: str) -> str:
    return GAN + textwrap.dedent(extra).lstrip()


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (
            ("optimizers.generator.params=^(generator|discriminator\\.0)\\.",),
            [
                "optimizers: discriminator.0.weight is selected by optimizers.generator.params "
                "and optimizers.discriminator.params"
            ],
        ),
        (
            ("optimizers.discriminator.params=^discriminator\\.4\\.",),
            [
                "optimizers: 4 trainable tensor(s) selected by no optimizer's params",
                "discriminator.0.weight",
            ],
        ),
        (
            ("optimizers.discriminator.params=^critic\\.",),
            ["optimizers.discriminator.params: '^critic\\\\.' matches no parameter"],
        ),
        (("optimizer.name=SGD",), ["optimizers: given together with optimizer"]),
        (
            ("optimizers.generator.param_groups.rules=[{name: head, match: '^nothing', lr: 0.1}]",),
            ["optimizers.generator.param_groups.rules.0.match: '^nothing' matches no parameter"],
        ),
        (
            ("param_groups.rules=[{name: head, match: 'x', lr: 0.1}]",),
            ["param_groups.rules: with optimizers"],
        ),
        (
            ("optimizers.generator.optimizer.name=Adamm",),
            ["optimizers.generator.optimizer.name: unknown 'Adamm'"],
        ),
        (("optimizers.discriminator.param_groups.freeze=['x']",), ["freeze is global"]),
        (("step.name=nope",), ["step.name: unknown 'nope'"]),
    ],
    ids=[
        "two-owners",
        "no-owner",
        "matches-nothing",
        "both-forms",
        "rule",
        "shared-rules",
        "name",
        "freeze",
        "step",
    ],
)
def test_several_optimizer_errors_name_the_key(
    tmp_path: Path,
    write_config: Callable[..., Path],
    user_error: Callable[..., str],
    change,
    expect,
) -> None:
    path = write_config(GAN)
    user_error("fit", path, *change, expect=expect)
    assert not (tmp_path / "runs").exists()


def test_each_optimizers_components_are_checked_with_the_rest_at_once(
    tmp_path: Path, write_config: Callable[..., Path], user_error: Callable[..., str]
) -> None:
    path = write_config(GAN)
    user_error(
        "fit", path, "optimizers.generator.scheduler.name=StepLRR",
        "optimizers.discriminator.optimizer.lrr=0.1", "step.name=nope",
        expect=[
            "optimizers.generator.scheduler.name: unknown 'StepLRR'",
            "optimizers.discriminator.optimizer.lrr: not an argument of Adam",
            "step.name: unknown 'nope'",
        ],
    )  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_a_step_asking_for_a_missing_optimizer_names_those_there_are(
    tmp_path: Path, write_config: Callable[..., Path], user_error: Callable[..., str]
) -> None:
    path = write_config(GAN)
    user_error(
        "fit", path, "step.name=helpers.steps:wrong_name",
        expect=["the step asked for optimizer 'critic'", "'generator', 'discriminator'"],
    )  # fmt: skip


def test_groups_and_schedule_show_each_optimizer(
    write_config: Callable[..., Path], run_cli: Callable[..., Any]
) -> None:
    path = write_config(GAN)
    document = json.loads(run_cli("groups", path, "--json").stdout)
    assert set(document["optimizers"]) == {"generator", "discriminator"}
    generator = document["optimizers"]["generator"]["groups"][0]
    assert generator["params"][0].startswith("generator.")
    assert generator["options"]["betas"] == [0.5, 0.999]
    assert generator["options"]["eps"] == 1e-8  # Adam's default, filled in

    table = run_cli("groups", path).stdout
    assert "param groups of optimizers.generator" in table
    assert "param groups of optimizers.discriminator" in table

    schedule = json.loads(run_cli("schedule", path, "--json").stdout)
    assert schedule["lr"] == {
        "generator/default": [2e-3, 1e-3],
        "discriminator/default": [1e-3, 1e-3],
    }


def test_inspect_shows_every_optimizer(gan_config: Callable[..., Any], run_cli) -> None:
    result = fit(gan_config("trainer.epochs=1"))
    printed = run_cli("inspect", result.run_dir / "checkpoints/last.pt").stdout
    assert "lr (generator): default 0.001" in printed
    assert "lr (discriminator): default 0.001" in printed


def test_a_changed_optimizer_set_is_refused_on_resume(
    gan_config: Callable[..., Any], tmp_path: Path
) -> None:
    from trainer.errors import UserError

    stopped = fit(gan_config("trainer.epochs=1"))
    split = (
        "optimizers.generator.params=^generator\\.[02]\\.",
        "optimizers.head.params=^generator\\.4\\.",
        "optimizers.head.optimizer={name: SGD, lr: 0.1}",
    )
    with pytest.raises(UserError, match="has generator, discriminator, the config generator, dis"):
        fit(gan_config(*split), resume=str(stopped.run_dir / "checkpoints/last.pt"))


TENSORS = """
    name: tensors
    model: {name: "helpers.steps:two_tensors"}
    data: {name: ring, n: 64, batch_size: 16}
    step: {name: "helpers.steps:quadratic"}
    optimizer: {name: SGD, lr: 0.1}
    trainer: {epochs: 20, device: cpu}
    checkpoint: {monitor: train/loss}
"""


def test_plain_tensors_become_named_parameters_a_step_minimises(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    path = write_config(TENSORS)
    groups = json.loads(run_cli("groups", path, "--json").stdout)
    assert groups["groups"][0]["params"] == ["x", "c"]

    result = run_cli("fit", path)
    assert result.exit_code == 0, result.output
    weights = last_checkpoint(tmp_path / "runs" / "tensors")["model"]
    assert torch.allclose(weights["x"], torch.full((3,), 3.0), atol=1e-3)
    assert torch.allclose(weights["c"], torch.full((2,), -1.0), atol=1e-3)


DISTILL = """
    name: distill
    model: {name: "helpers.steps:StudentTeacher"}
    data: {name: shapes, size: 64, image_size: 8, batch_size: 16}
    step: {name: distill, temperature: 2.0, alpha: 0.7}
    optimizer: {name: SGD, lr: 0.1}
    param_groups: {freeze: ['^teacher\\.']}
    trainer: {epochs: 1, device: cpu, log_every: 2}
    checkpoint: {monitor: train/loss}
"""


def test_distillation_trains_the_student_and_leaves_the_teacher(
    write_config: Callable[..., Path], run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    from helpers.steps import StudentTeacher

    torch.manual_seed(0)
    before = StudentTeacher().state_dict()
    result = run_cli("fit", write_config(DISTILL))
    assert result.exit_code == 0, result.output

    after = last_checkpoint(tmp_path / "runs" / "distill")["model"]
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("teacher."))
    assert not torch.equal(after["student.1.weight"], before["student.1.weight"])
    record = read_metrics(tmp_path / "runs" / "distill" / "metrics.jsonl")[0]
    assert {"train/loss", "train/hard_loss", "train/soft_loss"} <= set(record)


def test_a_step_from_the_current_directory_works_with_the_console_script(tmp_path: Path) -> None:
    (tmp_path / "mystep.py").write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F

            def halve(batch, model, optimizers, ctx):
                inputs, targets = batch
                loss = F.cross_entropy(model(inputs), targets) / 2
                optimizers.update(loss)
                return {"half_loss": loss}
            """
        ),
        encoding="utf-8",
    )
    (tmp_path / "cfg.yaml").write_text(
        textwrap.dedent(
            """
            name: mine
            model: {name: small_cnn, num_classes: 4, width: 4}
            data: {name: shapes, size: 32, image_size: 8, batch_size: 16}
            step: {name: "mystep:halve"}
            trainer: {epochs: 1, device: cpu, log_every: 1}
            checkpoint: {monitor: train/half_loss}
            """
        ),
        encoding="utf-8",
    )
    script = Path(sys.executable).with_name("trainer")
    env = {k: v for k, v in os.environ.items() if k != "TRAINER_TRUST"}
    done = subprocess.run(
        [str(script), "fit", "cfg.yaml"], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = read_metrics(tmp_path / "runs" / "mine" / "metrics.jsonl")
    assert "train/half_loss" in records[0]


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX shell")
def test_gan_under_torchrun_finishes_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "gan.yaml"
    path.write_text(GAN, encoding="utf-8")
    command = [sys.executable, "-m", "trainer", "fit", str(path), "--nproc", "2"]
    first = subprocess.run(
        [*command, "trainer.epochs=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr
    second = subprocess.run(
        [*command, "--resume", "auto"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    checkpoint = last_checkpoint(tmp_path / "runs" / "gan")
    assert (checkpoint["epoch"], checkpoint["step"]) == (2, 8)  # 4 batches per rank per epoch
    assert len(checkpoint["rng_per_rank"]) == 2


def test_eval_runs_the_val_step_as_fit_does(gan_config: Callable[..., Any], run_cli) -> None:
    result = fit(gan_config())
    [*_, last] = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if "val/close" in r]
    checkpoint = result.run_dir / "checkpoints" / "epoch-0001.pt"
    first = next(r for r in read_metrics(result.run_dir / "metrics.jsonl") if "val/close" in r)
    for path, record in ((checkpoint, first), (result.run_dir / "checkpoints/last.pt", last)):
        evaluated = run_cli("eval", "gan.yaml", "--checkpoint", path, "--json")
        assert evaluated.exit_code == 0, evaluated.output
        assert json.loads(evaluated.stdout) == {k: v for k, v in record.items() if "val/" in k}


def test_eval_of_a_custom_step_without_val_step_is_exit_2(
    gan_config: Callable[..., Any], user_error
) -> None:
    gan_config()
    text = GAN.replace("val_step: {name: ring_quality}\n", "").replace(
        "val/modes_covered", "train/g_loss"
    )
    Path("gan.yaml").write_text(text, encoding="utf-8")
    user_error(
        "eval", "gan.yaml", "--checkpoint", "x.pt",
        expect=["val_step: step 'gan' has no val_step, so there is nothing to validate"],
    )  # fmt: skip


def test_each_optimizers_updates_are_counted_and_resumed(
    gan_config: Callable[..., Any], tmp_path: Path
) -> None:
    # 8 batches an epoch: 8 steps, each with 3 critic updates and one generator update.
    critic = ("step.name=helpers.steps:critic_first", "val_step=null",
              "checkpoint.monitor=train/g_loss")  # fmt: skip
    result = fit(gan_config(*critic, "trainer.epochs=1"))
    records = read_metrics(result.run_dir / "metrics.jsonl")
    steps = [r for r in records if not is_epoch_record(r)]
    assert [(r["step"], r["updates/discriminator"], r["updates/generator"]) for r in steps] == [
        (4, 12, 4),
        (8, 24, 8),
    ]
    resumed = fit(gan_config(*critic, "trainer.epochs=2"), resume="auto")
    [*_, last] = read_metrics(resumed.run_dir / "metrics.jsonl")
    assert (last["epoch"], last["step"]) == (2, 16)
    assert (last["updates/discriminator"], last["updates/generator"]) == (48, 16)
    assert torch.load(resumed.run_dir / "checkpoints/last.pt", weights_only=True)["updates"] == {
        "generator": 16,
        "discriminator": 48,
    }


def test_a_rebuilt_per_step_scheduler_resumes_at_its_optimizers_update_count(
    gan_config: Callable[..., Any],
) -> None:
    # 3 critic updates a step, 8 steps an epoch: 24 discriminator updates after epoch 1, where
    # a changed scheduler section is rebuilt and fast-forwarded to; 24 more in epoch 2.
    critic = ("step.name=helpers.steps:critic_first", "val_step=null",
              "checkpoint.monitor=train/g_loss")  # fmt: skip
    fit(gan_config(*critic, "trainer.epochs=1"))
    step_lr = "{name: StepLR, step_size: 10, gamma: 0.5, interval: step}"
    resumed = fit(
        gan_config(*critic, "trainer.epochs=2", f"optimizers.discriminator.scheduler={step_lr}"),
        resume="auto",
    )
    saved = torch.load(resumed.run_dir / "checkpoints/last.pt", weights_only=True)
    assert saved["schedulers"]["discriminator"]["last_epoch"] == 48
    assert saved["schedulers"]["discriminator"]["_last_lr"] == [1.0e-3 * 0.5**4]
