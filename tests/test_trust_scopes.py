"""Trust scopes match whole module names: trusting `mypkg` trusts `mypkg.models`, not
`mypkg_evil`; a refused loader `pip` refuses `pip.x`, not a user's `pipeline.py`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from trainer.components import registry
from trainer.config import trust
from trainer.errors import UserError

NET = "import torch\n\n\ndef net():\n    return torch.nn.Linear(3, 2)\n"


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the user's current directory, a directory of installed packages on sys.path)."""
    work, site = tmp_path / "work", tmp_path / "site"
    for name in ("mypkg", "mypkg_evil", "mypkg/models", "mypkg/models_evil"):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(NET, encoding="utf-8")
        monkeypatch.delitem(sys.modules, name.replace("/", "."), raising=False)
    work.mkdir()
    (work / "pipeline.py").write_text(NET, encoding="utf-8")
    monkeypatch.delitem(sys.modules, "pipeline", raising=False)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sys, "path", [*sys.path, str(work)])  # what main() does
    monkeypatch.setattr(trust, "_config_directories", ())
    importlib.invalidate_caches()
    return work, site


@pytest.mark.parametrize(
    ("trusted", "path", "untrusted"),
    [
        ("mypkg", "mypkg.models:net", "mypkg_evil:net"),
        ("mypkg.models", "mypkg.models:net", "mypkg.models_evil:net"),
    ],
)
def test_trusting_a_package_trusts_its_modules_not_a_longer_name(
    trusted: str, path: str, untrusted: str, places, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINER_TRUST", trusted)
    assert registry.import_path(path, key="model.name", kind="models")().out_features == 2
    module, attr = untrusted.split(":")
    with pytest.raises(UserError, match=f"'{untrusted}' is not trusted"):
        trust.check_path(module, attr, key="model.name")
    # Imported by other means, what it resolves to is refused too.
    net = importlib.import_module(module).net
    with pytest.raises(UserError, match=f"resolves to {module}.net, which is not trusted"):
        trust.check_resolved(net, untrusted, key="model.name", kind="models")


def test_a_users_pipeline_py_is_not_the_refused_pip(places) -> None:
    assert registry.import_path("pipeline:net", key="model.name", kind="models")().in_features == 3
    for module in ("pip", "pip.commands"):
        with pytest.raises(UserError, match=f"'{module}:main' is refused: it is a loader"):
            trust.check_path(module, "main", key="model.name")
