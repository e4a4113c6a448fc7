"""`trainer schedule`: the lr table without training, its fill-ins and warmup, the table,
chart and picture, and that it is the schedule `trainer fit` really follows.

Configs train `helpers.loop:tiny` on 96 shapes in batches of 16: 6 optimizer steps per epoch.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.loop import sequential
from torch.optim import lr_scheduler

from trainer.runs.metrics_file import read_metrics

EPOCHS, STEPS_PER_EPOCH = 10, 6

CONFIG = """
    name: sched
    model: {name: "helpers.loop:tiny"}
    data: {name: shapes, size: 96, image_size: 8, batch_size: 16, shuffle: false}
    optimizer: {name: Adam, lr: 0.1}
    scheduler: {name: StepLR, step_size: 3, gamma: 0.1}
    trainer: {epochs: 10, device: cpu, log_every: 1}
"""

TWO_GROUPS = """
    param_groups:
      rules:
        - {name: head, match: '^3\\.', lr_mult: 10}
"""


@pytest.fixture
def schedule_json(run_cli: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    """`schedule_json(path, *args)`: what `trainer schedule PATH *args --json` prints."""

    def run(path: Path, *args: str) -> dict[str, Any]:
        result = run_cli("schedule", path, *args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return run


def with_scheduler(scheduler: str, extra: str = "") -> str:
    """CONFIG with another `scheduler:` line (a YAML flow mapping) and extra sections."""
    return CONFIG.replace(
        "scheduler: {name: StepLR, step_size: 3, gamma: 0.1}", f"scheduler: {scheduler}"
    ) + (extra or "")


# ---------------------------------------------------------------- the table


def test_step_lr_per_epoch(write_config, schedule_json) -> None:
    printed = schedule_json(write_config(CONFIG))
    assert printed["interval"] == "epoch"
    assert list(printed["lr"]) == ["default"]
    expected = [0.1] * 3 + [0.01] * 3 + [0.001] * 3 + [0.0001]
    assert printed["lr"]["default"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("overrides", "steps", "length"),
    [
        ([], STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH),
        (["trainer.accumulate=4"], 2, EPOCHS * 2),  # windows of 4 and 2 batches
        (["data.batch_size=20"], 5, EPOCHS * 5),  # 96 / 20: four batches of 20, one of 16
        (["trainer.max_steps=25"], STEPS_PER_EPOCH, 25),
    ],
)
def test_steps_lists_every_optimizer_step(
    overrides, steps, length, write_config, schedule_json
) -> None:
    printed = schedule_json(write_config(CONFIG), *overrides, "--steps")
    assert printed["interval"] == "step"
    lrs = printed["lr"]["default"]
    assert len(lrs) == length
    per_epoch = schedule_json(write_config(CONFIG), *overrides)["lr"]["default"]
    # An epoch-interval scheduler keeps the lr through the epoch.
    for index, lr in enumerate(lrs):
        assert lr == per_epoch[index // steps]



@pytest.mark.parametrize(
    ("scheduler", "args", "shown", "total"),
    [
        ("{name: StepLR, step_size: 3, gamma: 0.1}", [], 7, 10**9),  # epoch-interval: 7 epochs
        ("{name: StepLR, step_size: 3, gamma: 0.1}", ["--steps"], 7, 6 * 10**9),
        # A step interval per epoch: whole epochs of 6 steps within the limit, 7 // 6.
        ("{name: StepLR, step_size: 3, gamma: 0.1, interval: step}", [], 1, 10**9),
    ],
    ids=["epochs", "steps", "step-interval-by-epoch"],
)
def test_a_preview_is_cut_at_its_limit_and_says_so(
    scheduler, args, shown, total, write_config, schedule_json, run_cli
) -> None:
    path = write_config(with_scheduler(scheduler))
    long_run = ("trainer.epochs=1000000000", "--limit", "7")
    printed = schedule_json(path, *long_run, *args)
    assert (len(printed["lr"]["default"]), printed["total"], printed["cut"]) == (shown, total, True)
    whole = schedule_json(path, *args)  # 10 epochs: the same lrs, not cut
    assert printed["lr"]["default"] == whole["lr"]["default"][:shown]
    assert (whole["total"], whole["cut"]) == (len(whole["lr"]["default"]), False)
    result = run_cli("schedule", path, *long_run, *args)
    assert result.exit_code == 0, result.output
    unit = "step" if args else "epoch"
    assert (
        f"preview cut: the first {shown} of {total:,} {unit}s (at most --limit 7 optimizer steps "
        "are computed; raise --limit to see more)"
    ) in result.stdout

def test_rules_give_each_group_its_lrs(write_config, schedule_json) -> None:
    text = CONFIG + TWO_GROUPS + "        - {name: body, match: '^1\\.weight', lr: 0.5}\n"
    lrs = schedule_json(write_config(text))["lr"]
    assert set(lrs) == {"head", "body", "default"}
    assert lrs["head"] == pytest.approx([10 * lr for lr in lrs["default"]], rel=1e-12)
    assert lrs["body"] == pytest.approx([0.5] * 3 + [0.05] * 3 + [0.005] * 3 + [0.0005], rel=1e-12)


def torch_lrs(build: Callable[[torch.optim.Optimizer], Any], steps: int) -> list[float]:
    """The lr of each of `steps` scheduler steps, as torch's scheduler gives it."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = build(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


TOTAL = EPOCHS * STEPS_PER_EPOCH


FILL_INS = {
    "cosine-epoch": (
        "{name: CosineAnnealingLR}",
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS),
        EPOCHS,
    ),
    "cosine-step": (
        "{name: CosineAnnealingLR, interval: step}",
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=TOTAL),
        TOTAL,
    ),
    "cosine-T_max-kept": (
        "{name: CosineAnnealingLR, T_max: 4}",
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=4),
        EPOCHS,
    ),
    "one-cycle": (
        "{name: OneCycleLR, max_lr: 1.0, interval: step}",
        lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=TOTAL),
        TOTAL,
    ),
    "one-cycle-own-length": (  # epochs and steps_per_epoch given: no total_steps added
        "{name: OneCycleLR, max_lr: 1.0, epochs: 12, steps_per_epoch: 6, interval: step}",
        lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=1.0, epochs=12, steps_per_epoch=6),
        TOTAL,
    ),
    "linear": (
        "{name: LinearLR, start_factor: 0.1}",
        lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=EPOCHS),
        EPOCHS,
    ),
    "polynomial-step": (
        "{name: PolynomialLR, power: 2.0, interval: step}",
        lambda opt: lr_scheduler.PolynomialLR(opt, power=2.0, total_iters=TOTAL),
        TOTAL,
    ),
    "polynomial-max-steps": (  # the run is max_steps long: 25 steps
        "{name: PolynomialLR, interval: step}\ntrainer: {epochs: 10, max_steps: 25}",
        lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=25),
        25,
    ),
    "warmup-steps": (
        "{name: CosineAnnealingLR, interval: step, warmup: {steps: 5, start_factor: 0.01}}",
        sequential(5, 0.01, lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=TOTAL - 5)),
        TOTAL,
    ),
    "warmup-epochs": (
        "{name: CosineAnnealingLR, warmup: {epochs: 2}}",
        sequential(2, 0.1, lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS - 2)),
        EPOCHS,
    ),
    "warmup-epochs-in-steps": (
        "{name: LinearLR, start_factor: 1.0, end_factor: 0.1, interval: step, warmup: {epochs: 1}}",
        sequential(
            STEPS_PER_EPOCH,
            0.1,
            lambda opt: lr_scheduler.LinearLR(
                opt, start_factor=1.0, end_factor=0.1, total_iters=TOTAL - STEPS_PER_EPOCH
            ),
        ),
        TOTAL,
    ),
}


@pytest.mark.parametrize("name", list(FILL_INS))
def test_lengths_are_filled_in_and_warmup_composed(name, write_config, schedule_json) -> None:
    scheduler, build, steps = FILL_INS[name]
    scheduler, _, trainer = scheduler.partition("\n")
    text = with_scheduler(scheduler)
    if trainer:
        text = text.replace("trainer: {epochs: 10, device: cpu, log_every: 1}", trainer)
    per_step = "interval: step" in scheduler
    printed = schedule_json(write_config(text), *(["--steps"] if per_step else []))
    # The same float arithmetic in the same order: equal, not just close.
    assert printed["lr"]["default"] == torch_lrs(build, steps)


@pytest.mark.parametrize(
    ("scheduler", "expect"),
    [
        (
            "{name: CosineAnnealingLR, warmup: {steps: 3}}",
            ["scheduler: warmup.steps needs interval: step (or use warmup.epochs)"],
        ),
        (
            "{name: CosineAnnealingLR, warmup: {steps: 3, epochs: 1}, interval: step}",
            ["scheduler.warmup: set one of warmup.steps or warmup.epochs"],
        ),
        (
            "{name: CosineAnnealingLR, warmup: {epochs: 1, start_factor: 0}}",
            ["scheduler.warmup.start_factor:"],
        ),
        (
            "{name: ReduceLROnPlateau, warmup: {epochs: 1}}",
            ["scheduler.warmup: not available with ReduceLROnPlateau"],
        ),
        (
            "{name: StepLR, step_size: 1, monitor: val/loss}",
            ["monitor is for ReduceLROnPlateau only"],
        ),
    ],
)
def test_bad_scheduler_configs_exit_2(scheduler, expect, write_config, user_error) -> None:
    user_error("schedule", write_config(with_scheduler(scheduler)), expect=expect)


# ---------------------------------------------------------------- printing


def table_rows(out: str) -> list[list[str]]:
    """The cells of every row of a rich table in `out`, header included."""
    lines = [line.replace("\u2503", "\u2502") for line in out.splitlines()]  # header bars
    return [
        [cell.strip() for cell in line.split("\u2502")[1:-1]]
        for line in lines
        if line.count("\u2502") >= 3
    ]


def test_table_and_chart_print(write_config, run_cli) -> None:
    result = run_cli("schedule", write_config(CONFIG + TWO_GROUPS))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("lr per epoch")
    assert table_rows(out) == [
        ["epoch", "head", "default"],
        *[[str(e), "1", "0.1"] for e in (1, 2, 3)],
        *[[str(e), "0.1", "0.01"] for e in (4, 5, 6)],
        *[[str(e), "0.01", "0.001"] for e in (7, 8, 9)],
        ["10", "0.001", "0.0001"],
    ]
    # The chart: 1 down to 1e-4 on a log scale, head (*) above default (o).
    assert "     1 |***       \n" in out
    assert "0.0001 |         o\n" in out
    assert "epoch 1 .. 10, log scale" in out
    assert "* head, o default" in out


def test_long_schedules_show_evenly_spaced_rows(write_config, run_cli) -> None:
    result = run_cli("schedule", write_config(CONFIG), "--steps")
    assert result.exit_code == 0, result.output
    assert "40 of 60 steps shown; --json lists all" in " ".join(result.stdout.split())
    steps = [int(row[0]) for row in table_rows(result.stdout)[1:]]
    assert len(steps) == 40
    assert steps[0] == 1 and steps[-1] == 60
    assert steps == sorted(set(steps))
    assert max(b - a for a, b in itertools.pairwise(steps)) <= 2  # evenly spread, 60 into 40
    assert "step 1 .. 60" in result.stdout


def test_schedule_notes(write_config, run_cli) -> None:
    one_cycle = run_cli("schedule", write_config(with_scheduler("{name: OneCycleLR, max_lr: 1}")))
    assert one_cycle.exit_code == 0, one_cycle.output
    assert "OneCycleLR is meant to step per batch" in one_cycle.stdout
    plateau = run_cli("schedule", write_config(with_scheduler("{name: ReduceLROnPlateau}")))
    assert plateau.exit_code == 0, plateau.output
    assert "ReduceLROnPlateau lowers the lr on validation metrics" in plateau.stdout


def test_plateau_schedule_is_flat(write_config, schedule_json) -> None:
    printed = schedule_json(write_config(with_scheduler("{name: ReduceLROnPlateau}")))
    assert printed["lr"]["default"] == [0.1] * EPOCHS


def test_plot_without_matplotlib_names_the_extra(
    write_config, user_error, monkeypatch, tmp_path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    user_error(
        "schedule",
        write_config(CONFIG),
        "--plot",
        "lr.png",
        expect=["--plot: needs matplotlib, an optional extra", "uv sync --extra plot"],
    )
    assert not (tmp_path / "lr.png").exists()


def test_plot_writes_a_png(write_config, run_cli, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    result = run_cli("schedule", write_config(CONFIG + TWO_GROUPS), "--plot", "lr.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lr.png").read_bytes().startswith(b"\x89PNG")
    assert "wrote lr.png" in result.stdout


# ---------------------------------------------------------------- the schedule fit follows


def fit_records(run_cli: Callable[..., Any], path: Path, *overrides: str) -> list[dict[str, Any]]:
    """Every metrics.jsonl record of a `trainer fit` run in tmp_path."""
    result = run_cli("fit", path, *overrides)
    assert result.exit_code == 0, result.output
    return read_metrics(path.parent / "runs" / "sched" / "metrics.jsonl")


PER_EPOCH = {
    "step-two-groups": CONFIG + TWO_GROUPS,
    "warmup-epochs-cosine": with_scheduler("{name: CosineAnnealingLR, warmup: {epochs: 1}}"),
    "step-interval": with_scheduler(
        "{name: CosineAnnealingLR, interval: step, warmup: {steps: 4}}", TWO_GROUPS
    ),
}


@pytest.mark.parametrize("name", list(PER_EPOCH))
def test_schedule_is_the_lr_fit_uses_per_epoch(name, write_config, run_cli, schedule_json) -> None:
    path = write_config(PER_EPOCH[name])
    planned = schedule_json(path, "trainer.epochs=4")["lr"]
    records = [r for r in fit_records(run_cli, path, "trainer.epochs=4") if "val/loss" in r]
    assert len(records) == 4
    for group, lrs in planned.items():
        assert [r[f"lr/{group}"] for r in records] == lrs, group


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.epochs=3"],
        ["trainer.epochs=3", "trainer.accumulate=4"],  # 2 steps an epoch, the second short
        ["trainer.epochs=3", "trainer.max_steps=8"],  # stops in epoch 2
    ],
)
def test_schedule_is_the_lr_fit_uses_per_step(
    overrides, write_config, run_cli, schedule_json
) -> None:
    text = with_scheduler(
        "{name: CosineAnnealingLR, interval: step, warmup: {steps: 3, start_factor: 0.2}}",
        TWO_GROUPS,
    )
    path = write_config(text)
    planned = schedule_json(path, *overrides, "--steps")["lr"]
    records = [r for r in fit_records(run_cli, path, *overrides) if "val/loss" not in r]
    assert [r["step"] for r in records] == list(range(1, len(planned["default"]) + 1))
    for group, lrs in planned.items():
        assert [r[f"lr/{group}"] for r in records] == lrs, group
