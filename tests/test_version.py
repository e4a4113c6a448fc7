"""`trainer --version` (package, python, torch and the devices it sees) and typer's shell
completion (`--show-completion`, `--install-completion`), which must not slow `--help` down
by importing torch."""

from __future__ import annotations

import platform
from importlib.metadata import version

import pytest
import torch
from helpers.imports import torch_modules_imported
from typer.testing import CliRunner

from trainer.cli import app

# typer's own test switch: `--show-completion SHELL` and `--install-completion SHELL` take the
# shell named instead of detecting the shell this test runs under.
NAMED_SHELL = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}


def invoke(*args: str, **options: object):
    return CliRunner().invoke(app, list(args), prog_name="trainer", **options)


def test_version_names_package_python_and_torch() -> None:
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"trainer {version('trainer')}", f"python {platform.python_version()}"]
    assert lines[2].startswith(f"torch {torch.__version__} (")
    assert lines[2].endswith(
        f"MPS available: {'yes' if torch.backends.mps.is_available() else 'no'})"
    )
    assert len(lines) == 3


@pytest.mark.parametrize(
    ("built", "available", "count", "expected"),
    [
        ("12.4", True, 2, "(CUDA 12.4 available: yes, 2 devices; MPS available: no)"),
        ("12.4", True, 1, "(CUDA 12.4 available: yes, 1 device; MPS available: no)"),
        ("12.4", False, 0, "(CUDA 12.4 available: no; MPS available: no)"),
        (None, False, 0, "(CUDA: not built in; MPS available: no)"),
    ],
    ids=["cuda", "one-gpu", "cuda-build-without-gpu", "cpu-build"],
)
def test_version_says_what_cuda_torch_sees(
    monkeypatch: pytest.MonkeyPatch, built: str | None, available: bool, count: int, expected: str
) -> None:
    monkeypatch.setattr(torch.version, "cuda", built)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2] == f"torch {torch.__version__} {expected}"


def test_version_comes_before_any_command() -> None:
    """Eager: `trainer --version fit` prints the versions, runs nothing and exits 0."""
    result = invoke("--version", "fit", "missing.yaml")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("trainer ")


def test_help_lists_version_and_completion_without_importing_torch() -> None:
    output, modules = torch_modules_imported(["--help"])
    assert modules == []
    for option in ("--version", "--install-completion", "--show-completion"):
        assert option in output


@pytest.mark.parametrize(
    ("shell", "expected"),
    [
        ("bash", "complete -o default -F _trainer_completion trainer"),
        ("zsh", "compdef _trainer_completion trainer"),
        ("fish", "complete --command trainer"),
    ],
)
def test_show_completion_prints_the_shell_script(shell: str, expected: str) -> None:
    output, modules = torch_modules_imported(["--show-completion", shell], env=NAMED_SHELL)
    assert modules == []
    assert f"_TRAINER_COMPLETE=complete_{shell}" in output
    assert expected in output


def test_completion_completes_commands_and_options() -> None:
    """What the installed script asks the program: the words so far, the one being typed."""
    environment = {"_TRAINER_COMPLETE": "complete_bash", "COMP_CWORD": "1"}
    commands = invoke(env={**environment, "COMP_WORDS": "trainer sch"})
    assert commands.stdout.split() == ["schedule", "schema"]
    options = invoke(env={**environment, "COMP_WORDS": "trainer schema --o", "COMP_CWORD": "2"})
    assert options.stdout.split() == ["--out"]


def test_install_completion_writes_the_script_under_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in NAMED_SHELL.items():  # read when typer builds the command
        monkeypatch.setenv(name, value)
    result = invoke("--install-completion", "bash")
    assert result.exit_code == 0, result.output
    script = tmp_path / ".bash_completions" / "trainer.sh"
    assert "_TRAINER_COMPLETE=complete_bash" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()
