"""`trainer plot`: curves of several runs, as a PNG and as a terminal chart."""

from __future__ import annotations

import io
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.damage import DAMAGES, damage
from rich.console import Console
from typer.testing import Result

from trainer.runs.curves import PANEL_HEIGHT, PNG_DPI, PNG_WIDTH, chart, curve
from trainer.runs.metrics_file import mark_epoch


def records(scale: float) -> list[dict[str, Any]]:
    """Two epochs of four steps, step records every 2 steps, losses times `scale`."""
    found = []
    for epoch in (1, 2):
        for step in (4 * epoch - 2, 4 * epoch):
            found.append({"epoch": epoch, "step": step, "train/loss": scale / step})
        epoch_end = {
            "epoch": epoch,
            "step": 4 * epoch,
            "train/loss": scale / (2 * epoch),
            "val/loss": scale / (3 * epoch),
            "val/acc": 0.5 * epoch,
            "train/samples_per_s": 10.0,
        }
        found.append(mark_epoch(epoch_end))
    return found


@pytest.fixture
def two_runs(tmp_path: Path, run_cli: Callable[..., Result]) -> Path:
    for name, scale in (("a", 1.0), ("b", 2.0)):
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(f"name: {name}\n")
        lines = "".join(json.dumps(r) + "\n" for r in records(scale))
        (run_dir / "metrics.jsonl").write_text(lines)
    return tmp_path


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.usefixtures("two_runs")
@pytest.mark.parametrize("metrics", [["val/loss"], ["train/loss", "val/acc"]])
def test_a_png_for_two_runs_has_a_panel_per_metric(
    run_cli: Callable[..., Result], tmp_path: Path, metrics: list[str]
) -> None:
    options = [arg for metric in metrics for arg in ("--metric", metric)]
    result = run_cli("plot", "a", "runs/b", *options, "--out", "curves.png")
    assert result.exit_code == 0, result.output
    assert "wrote curves.png" in result.stdout
    width, height = png_size(tmp_path / "curves.png")
    assert (width, height) == (PNG_WIDTH * PNG_DPI, PANEL_HEIGHT * PNG_DPI * len(metrics))


def test_step_records_draw_what_they_carry_and_epoch_records_the_rest() -> None:
    logged = records(1.0)
    assert curve(logged, "train/loss", x="step") == [(2, 0.5), (4, 0.25), (6, 1 / 6), (8, 0.125)]
    assert curve(logged, "train/loss", x="epoch") == [(1, 0.5), (2, 0.25)]
    assert curve(logged, "val/acc", x="step") == [(4, 0.5), (8, 1.0)]


def test_sparser_step_records_give_way_to_the_epoch_records() -> None:
    # log_every 3 in epochs of 4 steps: steps 3 and 6 logged, over 3 epochs.
    epochs = [r for r in records(1.0) if "val/loss" in r]
    epochs.append(epochs[-1] | {"epoch": 3, "step": 12, "train/loss": 0.2})
    steps = [{"epoch": 1, "step": 3, "train/loss": 0.4}, {"epoch": 2, "step": 6, "train/loss": 0.3}]
    assert curve(steps + epochs, "train/loss", x="step") == [(4, 0.5), (8, 0.25), (12, 0.2)]
    assert curve(steps + epochs[:2], "train/loss", x="step") == [(3, 0.4), (6, 0.3)]  # a tie


def test_the_terminal_chart_renders_without_a_terminal() -> None:
    series = {"a": [(1.0, 1.0), (2.0, 0.5), (3.0, 0.25)], "b": [(1.0, 2.0), (3.0, 1.0)]}
    output = io.StringIO()
    Console(file=output, width=80).print(chart(series, title="val/loss", x="step"), markup=False)
    lines = output.getvalue().splitlines()
    grid = [line.split("|", 1)[1] for line in lines if "|" in line]
    assert lines[0] == "val/loss"
    assert grid[0].startswith("o")  # b's first point is the highest, at the left edge
    assert grid[-1].rstrip().endswith("*")  # a's last point is the lowest, at the right edge
    assert lines[-2].strip() == "step 1 .. 3" and lines[-1].strip() == "* a, o b"


@pytest.mark.usefixtures("two_runs")
def test_the_command_draws_train_loss_and_validation_metrics_by_default(
    run_cli: Callable[..., Result],
) -> None:
    result = run_cli("plot", "a", "b", "--x", "epoch")
    assert result.exit_code == 0, result.output
    titles = [line for line in result.stdout.splitlines() if line in ("train/loss", "val/loss")]
    assert titles == ["train/loss", "val/loss"] and "val/acc" in result.stdout
    assert "epoch 1 .. 2" in result.stdout and "* a, o b" in result.stdout


@pytest.mark.usefixtures("two_runs")
def test_unknown_runs_and_metrics_are_exit_2(user_error: Callable[..., str]) -> None:
    user_error("plot", "c", expect=["RUN: 'c' is neither a run directory", "runs/: a, b"])
    user_error(
        "plot",
        "a",
        "--metric",
        "val/los",
        expect=["--metric: 'val/los' is not logged", "did you mean 'val/loss'", "train/loss"],
    )


@pytest.mark.usefixtures("two_runs")
def test_without_matplotlib_the_error_names_the_extra(
    user_error: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    user_error("plot", "a", "--out", "x.png", expect=["--out: needs matplotlib", "--extra plot"])


@pytest.mark.usefixtures("two_runs")
def test_a_run_without_metrics_yet_is_named_and_left_out(
    run_cli: Callable[..., Result], user_error: Callable[..., str], tmp_path: Path
) -> None:
    empty = tmp_path / "runs" / "new"
    empty.mkdir()
    (empty / "config.yaml").write_text("name: new\n")
    (empty / "metrics.jsonl").write_text("")
    said = "RUN: 'runs/new' has no metrics yet (nothing in its metrics.jsonl)"
    for out in ([], ["--out", "x.png"]):
        user_error("plot", "new", *out, expect=[said])
    (empty / "metrics.jsonl").unlink()  # its first moments: config.yaml alone
    user_error("plot", "new", expect=[said])
    result = run_cli("plot", "new", "a", "--out", "x.png")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: {said}; not drawn\n"
    assert (tmp_path / "x.png").is_file()


@pytest.mark.usefixtures("two_runs")
def test_nothing_to_draw_is_exit_2_naming_what_was_logged(
    user_error: Callable[..., str], tmp_path: Path
) -> None:
    lines = [{"epoch": 1, "step": 2, "train/d_loss": 0.5}, {"epoch": 1, "step": 4, "lr/d": 0.1}]
    gan = tmp_path / "runs" / "gan"
    gan.mkdir()
    (gan / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    user_error(
        "plot", "gan", expect=["--metric: these runs logged neither train/loss nor a val/ metric"]
    )
    user_error(
        "plot",
        "gan",
        "--metric",
        "train/d_loss",
        "--x",
        "epoch",
        expect=["--metric: train/d_loss: no point to draw against --x epoch"],
    )


@pytest.mark.usefixtures("two_runs")
@pytest.mark.parametrize("kind", DAMAGES)
def test_plot_skips_a_damaged_line_with_a_warning(
    run_cli: Callable[..., Result], tmp_path: Path, kind: str
) -> None:
    damaged = damage(tmp_path / "runs" / "a", kind)
    result = run_cli("plot", "a", "b", "--x", "epoch")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    if damaged.file == "metrics.jsonl":  # plot reads no other file
        assert result.stderr == f"warning: runs/a/{damaged.message}; the line is skipped\n"
    else:
        assert result.stderr == ""
    assert "epoch 1 .. 2" in result.stdout and "* a, o b" in result.stdout
