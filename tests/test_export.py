"""`trainer export` writes a checkpoint's model weights as one file (.safetensors or a
weights_only .pt) from a .pt checkpoint or a sharded directory; `trainer inspect` and
`trainer eval` read a sharded directory as they read the .pt it was made of."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers.resume import write_config
from safetensors.torch import load_file
from test_cli_checkpoint import assert_user_error, cli

from trainer.config import CheckpointConfig
from trainer.state.checkpoint import load_checkpoint, save_sharded_checkpoints
from trainer.state.optimizer_keys import optimizer_state_by_name


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def checkpoints(two_epochs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run's last.pt, and the same state saved as a sharded directory (one-process group)."""
    pt = two_epochs / "checkpoints" / "last.pt"
    saved = load_checkpoint(pt)
    for name, state in saved.optimizers.items():  # under fsdp they are keyed by name
        by_name = optimizer_state_by_name(state.optimizer, state.groups)
        saved.optimizers[name] = dataclasses.replace(state, optimizer=by_name)
    directory = tmp_path_factory.mktemp("sharded")
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=0, world_size=1)
    try:
        save_sharded_checkpoints(
            directory, saved, CheckpointConfig(every_epochs=None), is_best=False
        )
    finally:
        dist.destroy_process_group()
    assert (directory / "last.pt").is_dir()
    return {"file": pt, "directory": directory / "last.pt"}


@pytest.fixture(params=["file", "directory"])
def checkpoint(request: pytest.FixtureRequest, checkpoints: dict[str, Path]) -> Iterator[Path]:
    yield checkpoints[request.param]


def model_state(checkpoints: dict[str, Path]) -> dict[str, torch.Tensor]:
    return torch.load(checkpoints["file"], weights_only=True)["model"]


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_inspect_and_eval_read_a_directory_as_the_file(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    inspected = [cli("inspect", checkpoints[kind]) for kind in ("file", "directory")]
    assert inspected[0].exit_code == 0, inspected[0].output
    assert inspected[1].stdout == inspected[0].stdout
    write_config(tmp_path)
    evaluated = [
        cli("eval", "cfg.yaml", "--checkpoint", checkpoints[kind], "--json")
        for kind in ("file", "directory")
    ]
    assert evaluated[0].exit_code == 0, evaluated[0].output
    assert json.loads(evaluated[1].stdout) == json.loads(evaluated[0].stdout)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_round_trips_the_model_weights(
    checkpoint: Path, checkpoints: dict[str, Path], suffix: str
) -> None:
    result = cli("export", checkpoint, f"weights{suffix}")
    assert result.exit_code == 0, result.output
    out = Path(f"weights{suffix}")
    expected = model_state(checkpoints)
    assert result.stdout == (
        f"wrote weights{suffix}: {len(expected)} tensors, {out.stat().st_size} bytes\n"
    )
    got = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    assert_same(got, expected)


def test_prefix_keeps_the_keys_that_have_it_without_it(
    checkpoint: Path, checkpoints: dict[str, Path]
) -> None:
    expected = model_state(checkpoints)
    prefix = next(iter(expected)).split(".")[0] + "."
    assert cli("export", checkpoint, "w.safetensors", "--prefix", prefix).exit_code == 0
    stripped = {k[len(prefix) :]: v for k, v in expected.items() if k.startswith(prefix)}
    assert 0 < len(stripped) < len(expected)
    assert_same(load_file("w.safetensors"), stripped)


def test_a_prefix_no_key_has_is_exit_2(checkpoint: Path) -> None:
    assert_user_error(
        cli("export", checkpoint, "w.pt", "--prefix", "generator."),
        "--prefix: no key of the checkpoint's model starts with 'generator.'",
    )
    assert not Path("w.pt").exists()


def test_another_suffix_is_exit_2_naming_out(checkpoints: dict[str, Path]) -> None:
    assert_user_error(
        cli("export", checkpoints["file"], "weights.bin"),
        "OUT: 'weights.bin' has the suffix '.bin'; expected .safetensors or .pt",
    )


def test_an_existing_out_is_replaced_only_with_force(checkpoints: dict[str, Path]) -> None:
    Path("w.pt").write_bytes(b"mine")
    assert_user_error(cli("export", checkpoints["file"], "w.pt"), "OUT: 'w.pt' exists; --force")
    assert Path("w.pt").read_bytes() == b"mine"
    assert cli("export", checkpoints["file"], "w.pt", "--force").exit_code == 0
    assert_same(torch.load("w.pt", weights_only=True), model_state(checkpoints))


def test_safetensors_missing_is_exit_2_naming_the_extra(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert_user_error(
        cli("export", checkpoints["file"], "w.safetensors"),
        "pip install 'trainer[safetensors]'",
    )


def test_a_missing_checkpoint_is_exit_2(tmp_path: Path) -> None:
    assert_user_error(cli("export", tmp_path / "nope.pt", "w.pt"), "CHECKPOINT: no checkpoint at")
