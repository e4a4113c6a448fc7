"""epoch-NNNN.pt holds the state at the end of epoch NNNN, whatever mid-epoch saves
(`checkpoint.every_steps`) the next epoch writes to last.pt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_a_mid_epoch_save_leaves_the_previous_epochs_file_alone(
    tiny_yaml: str, write_config: Callable[..., Path], run_cli: Callable, tmp_path: Path
) -> None:
    # 4 steps an epoch; every 3 steps: saves at step 3 (epoch 1) and 6 (epoch 2, batch 2).
    config = write_config(tiny_yaml + "checkpoint: {every_steps: 3}\n")
    one = run_cli("fit", config, "trainer.epochs=1", "trainer.out_dir=one")
    two = run_cli("fit", config, "trainer.out_dir=two")
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output

    end_of_epoch_1 = load(tmp_path / "one" / "checkpoints" / "last.pt")
    assert (end_of_epoch_1["epoch"], end_of_epoch_1["step"]) == (1, 4)
    epoch_1 = load(tmp_path / "two" / "checkpoints" / "epoch-0001.pt")
    assert (epoch_1["epoch"], epoch_1["step"], epoch_1["batch_in_epoch"]) == (1, 4, 0)
    assert epoch_1["model"].keys() == end_of_epoch_1["model"].keys()
    for name, tensor in end_of_epoch_1["model"].items():
        assert torch.equal(epoch_1["model"][name], tensor), name
    epoch_2 = load(tmp_path / "two" / "checkpoints" / "epoch-0002.pt")
    assert (epoch_2["epoch"], epoch_2["step"], epoch_2["batch_in_epoch"]) == (2, 8, 0)
