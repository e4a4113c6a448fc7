"""The user's directories (the current one, the config's) come after installed packages on
sys.path: their modules import, and a file named like an installed package shadows nothing;
the same through the console script and `python -m trainer`, and a deleted current directory is
one line."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.configs import USER_MODELS

from trainer.config import read_configs, trust
from trainer.user_path import current_directory_last

TINY = "model: {name: small_cnn}\ndata: {name: shapes}\n"


@pytest.fixture
def shadowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed module `shadowed_pkg` (WHO = 'installed') on a copy of sys.path that the
    test may change; returns its directory."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "shadowed_pkg.py").write_text("WHO = 'installed'\n", encoding="utf-8")
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    monkeypatch.delitem(sys.modules, "shadowed_pkg", raising=False)
    monkeypatch.delitem(sys.modules, "users_own", raising=False)
    monkeypatch.setattr(trust, "_config_directories", ())
    monkeypatch.setattr(trust, "_added_to_path", [])
    return site


def users_directory(path: Path) -> Path:
    """A directory with a `shadowed_pkg.py` of the user's and a module of their own."""
    path.mkdir()
    (path / "shadowed_pkg.py").write_text("WHO = 'mine'\n", encoding="utf-8")
    (path / "users_own.py").write_text("WHO = 'own'\n", encoding="utf-8")
    importlib.invalidate_caches()
    return path


def test_the_configs_directory_comes_after_installed_packages(
    shadowed: Path, tmp_path: Path
) -> None:
    configs = users_directory(tmp_path / "configs")
    (configs / "cfg.yaml").write_text(TINY, encoding="utf-8")
    read_configs(configs / "cfg.yaml")

    assert sys.path[-1] == str(configs.resolve())
    assert importlib.import_module("users_own").WHO == "own"
    assert importlib.import_module("shadowed_pkg").WHO == "installed"


def test_the_current_directory_moves_after_installed_packages(
    shadowed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = users_directory(tmp_path / "work")
    monkeypatch.chdir(work)
    rest = list(sys.path)
    sys.path[:] = ["", str(work), *rest]  # as `python -m` and a PYTHONPATH=. put it
    current_directory_last()

    assert sys.path == [*rest, str(work)]
    assert importlib.import_module("users_own").WHO == "own"
    assert importlib.import_module("shadowed_pkg").WHO == "installed"


# ---------------------------------------------------------------- the console script, -m


def test_console_script_imports_modules_from_the_current_directory(tmp_path) -> None:
    (tmp_path / "mymods.py").write_text(USER_MODELS, encoding="utf-8")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "cfg.yaml").write_text(
        'model: {name: "mymods:net"}\ndata: {name: shapes}\n', encoding="utf-8"
    )
    script = Path(sys.executable).parent / "trainer"  # the installed console script
    done = subprocess.run(
        [str(script), "groups", "configs/cfg.yaml", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert '"numel": 8' in done.stdout


@pytest.mark.parametrize(
    "command", [["trainer"], [sys.executable, "-m", "trainer"]], ids=["script", "python-m"]
)
def test_files_named_like_the_stdlib_or_a_package_shadow_nothing(command, tmp_path) -> None:
    """A project's own json.py, shlex.py or numpy.py: the runner imports the real ones, and
    the user's modules still import from the current directory."""
    for shadow in ("json", "shlex", "numpy", "typing_extensions"):
        (tmp_path / f"{shadow}.py").write_text(f"raise RuntimeError('my own {shadow}.py')\n")
    (tmp_path / "mymods.py").write_text(USER_MODELS, encoding="utf-8")
    (tmp_path / "cfg.yaml").write_text(
        'model: {name: "mymods:net"}\ndata: {name: shapes}\n', encoding="utf-8"
    )
    if command == ["trainer"]:
        command = [str(Path(sys.executable).parent / "trainer")]  # the installed console script
    done = subprocess.run(
        [*command, "groups", "cfg.yaml", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert '"numel": 8' in done.stdout


def test_a_module_named_like_an_installed_package_is_named_to_rename(
    tmp_path, write_config, user_error
) -> None:
    (tmp_path / "numpy.py").write_text("def net():\n    pass\n")
    config = write_config('model: {name: "numpy:net"}\ndata: {name: shapes}\n')
    user_error(
        "groups",
        config,
        expect=[
            f"model.name: 'numpy:net' imports the installed package 'numpy', not your "
            f"{tmp_path / 'numpy.py'}",
            "rename your file",
        ],
    )


def test_a_deleted_current_directory_is_one_line_and_exit_2(tmp_path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    script = Path(sys.executable).parent / "trainer"
    for command in (str(script), f"{sys.executable} -m trainer"):
        done = subprocess.run(
            ["sh", "-c", f"cd {gone} && rmdir {gone} && exec {command} config cfg.yaml"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr == (
            "error: the current directory no longer exists (it was deleted or moved); "
            "cd to a directory that exists and run the command again\n"
        )
        gone.mkdir()
