"""trainer.report: pictures written where the user asked, or exit 2 saying why not."""

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
