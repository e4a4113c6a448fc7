"""Shared fixtures: inline YAML configs and user modules written into tmp_path, the CLI run inside
it, and the trusted helper package (tests/helpers) for the whole session."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.configs import TINY_CONFIG
from typer.testing import CliRunner, Result

from trainer.cli import app

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def tiny_yaml() -> str:
    """The tiny quickstart-shaped config, as YAML text (append sections it lacks)."""
    return textwrap.dedent(TINY_CONFIG).lstrip()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """`write_config(text, name="cfg.yaml")`: dedent `text` into tmp_path, return the path."""

    def write(text: str, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """`module(name, source, folder=tmp_path)`: write a module; sys.modules forgets it after."""

    def write(name: str, source: str, folder: Path | None = None) -> Path:
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.py"
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.invalidate_caches()
        return path

    return write


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`run_cli(*args)`: invoke the `trainer` app inside tmp_path, so runs/ lands there."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str | Path) -> Result:
        return runner.invoke(app, [str(arg) for arg in args])

    return run


@pytest.fixture
def user_error(run_cli: Callable[..., Result]) -> Callable[..., str]:
    """`user_error(*args, expect=[...])`: the CLI must exit 2 with every fragment, no traceback.

    Returns stderr, for further checks.
    """

    def check(*args: str | Path, expect: list[str]) -> str:
        result = run_cli(*args)
        assert result.exit_code == 2, (result.exception, result.output)
        # Exit 2 comes from typer.Exit (a SystemExit); anything else escaped the handler.
        assert isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output
        for fragment in expect:
            assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"
        return result.stderr

    return check


@pytest.fixture(scope="session", autouse=True)
def trusted_helpers() -> Iterator[None]:
    """The helper package tests/helpers is importable and trusted, as a user's installed package
    they trust (configs name it as `helpers.loop:tiny`; it is not in the tmp directories the
    tests run in), here and in every subprocess (`trainer`, torchrun) a test starts. The one
    place that trusts it: a test of TRAINER_TRUST itself sets or deletes the variable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(TESTS))
        patch.setenv("PYTHONPATH", str(TESTS), prepend=os.pathsep)
        patch.setenv("TRAINER_TRUST", "helpers")
        yield


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread per process: faster on a 2-core machine, the same for every run
    (runner, hand-written loops and subprocesses alike, so results compare bit for bit)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def initial(tmp_path: Path) -> Path:
    """Initial weights of `tiny`, shared by the runner (`model.init_from`) and the hand loop."""
    import torch
    from helpers.loop import tiny

    torch.manual_seed(1)
    path = tmp_path / "initial.pt"
    torch.save(tiny().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The resume tests' run of 4 epochs without a stop (read-only: copy it to change it)."""
    from helpers.resume import run_in

    return run_in(tmp_path_factory.mktemp("straight"))


@pytest.fixture(scope="session")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config stopped after 2 epochs (keeps epoch-0001 and -0002; read-only)."""
    from helpers.resume import run_in

    return run_in(tmp_path_factory.mktemp("two-epochs"), "trainer.epochs=2")
