"""trainer.runs.report: pictures written where the user asked, or exit 2 saying why not."""

from __future__ import annotations

from pathlib import Path

import pytest

STEP_LR = "scheduler: {name: StepLR, step_size: 1, gamma: 0.5}\n"


@pytest.mark.parametrize(
    ("plot", "reason"),
    [
        ("notes.txt/lr.png", "Not a directory"),
        ("missing/lr.png", "No such file or directory"),
        ("made.png", "Is a directory"),
    ],
)
def test_a_schedule_plot_that_cannot_be_written_is_exit_2(
    write_config, tiny_yaml: str, user_error, tmp_path: Path, plot: str, reason: str
) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "notes.txt").touch()
    (tmp_path / "made.png").mkdir()
    user_error(
        "schedule",
        write_config(tiny_yaml + STEP_LR),
        "--plot",
        plot,
        expect=[f"error: --plot: cannot write '{plot}' ({reason})"],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "made.png", "notes.txt"]


@pytest.mark.parametrize(
    ("lrs", "several", "text"),
    [
        ({"lr/default": 0.05}, False, "0.05"),
        ({"lr/backbone": 1e-4, "lr/backbone.no_decay": 1e-4}, False, "0.0001"),
        ({"lr/backbone": 1e-4, "lr/head": 1e-3, "lr/head.no_decay": 1e-3}, False, "0.0001-0.001"),
        (
            {"lr/g/default": 1e-3, "lr/d/default": 1e-2, "lr/d/head": 1e-1},
            True,
            "g 0.001  d 0.01-0.1",
        ),
    ],
)
def test_progress_lines_show_every_optimizers_lr_and_a_range_where_groups_differ(
    lrs: dict, several: bool, text: str
) -> None:
    import io

    from rich.console import Console

    from trainer.runs.report import Reporter

    out = io.StringIO()
    reporter = Reporter(Console(file=out, width=200))
    reporter.start_epoch(1, 2, 10)
    record = {"epoch": 1, "step": 5, "train/loss": 0.5, **lrs}
    reporter.log(record, batch=5, batches=10, samples_per_s=100.0, several=several)
    assert out.getvalue() == (
        f"epoch 1/2  batch 5/10  step 5  train/loss 0.5  lr {text}  100 samples/s\n"
    )
