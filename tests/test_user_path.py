"""The user's directories (the current one, the config's) come after installed packages on
sys.path: their modules import, and a file named like an installed package shadows nothing."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from trainer.config import read_config_file, trust
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
    monkeypatch.setattr(trust, "_config_directory", None)
    monkeypatch.setattr(trust, "_added_to_path", None)
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
    read_config_file(configs / "cfg.yaml")

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
