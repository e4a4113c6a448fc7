"""trainer.config.trust: a config's import paths reach only code the user trusts;
nothing else runs."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from trainer.components import registry
from trainer.config import trust
from trainer.errors import UserError

STDLIB = "Python's standard library"
LOADER = "a loader that can run code, or a tool that touches files or processes"


class Bait:
    """Unpickled, it creates the file it was made with: what `torch:load` of a shared file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file that exists only if a config got to run code."""
    return tmp_path / "ran"


@pytest.fixture
def bait(tmp_path: Path, marker: Path, module: Callable[..., Path]) -> None:
    """Files that create `marker` when run: a module, a script, a hubconf.py, a pickle."""
    code = f"open({str(marker)!r}, 'w').close()\n"
    module("toucher", code)
    (tmp_path / "script.py").write_text(code, encoding="utf-8")
    (tmp_path / "hubconf.py").write_text(code + "def entry():\n    pass\n", encoding="utf-8")
    torch.save(Bait(marker), tmp_path / "shared.pt")


def model_config(write_config: Callable[..., Path], name: str, kwargs: str = "") -> Path:
    """A small config whose model is `name` with the keyword arguments `kwargs` (YAML)."""
    return write_config(
        f"""
        model: {{name: '{name}'{", " + kwargs if kwargs else ""}}}
        data: {{name: shapes, num_classes: 4, size: 16, image_size: 8, batch_size: 8}}
        trainer: {{epochs: 1, device: cpu}}
        """
    )


# Each would create the marker file if it ran; every one must be refused before it runs.
ATTACKS = [
    ("logging:os.system", "command: 'touch {marker}'", STDLIB),
    ("os:system", "command: 'touch {marker}'", STDLIB),
    ("subprocess:run", "args: [touch, '{marker}']", STDLIB),
    ("builtins:eval", "source: \"open('{marker}', 'w')\"", STDLIB),
    ("importlib:import_module", "package: toucher", STDLIB),  # `name` is the component's
    ("runpy:run_path", "path_name: script.py", STDLIB),
    ("pdb:run", "statement: \"open('{marker}', 'w')\"", STDLIB),
    ("code:interact", "local: {{}}", STDLIB),
    ("torch.hub:load", "repo_or_dir: ., model: entry, source: local, trust_repo: true", LOADER),
    ("torch:load", "f: shared.pt, weights_only: false", LOADER),
]


@pytest.mark.parametrize("command", ["fit", "groups"])
@pytest.mark.parametrize(("path", "kwargs", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_refused_import_paths_run_nothing(
    command, path, kwargs, reason, bait, marker, write_config, user_error, tmp_path
) -> None:
    config = model_config(write_config, path, kwargs.format(marker=marker))
    user_error(command, config, expect=[f"model.name: {path!r} is refused", reason])
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()


def test_the_bait_does_run_when_imported_directly(bait, marker) -> None:
    """The attacks above would have left the marker (so their test can fail)."""
    torch.load(marker.parent / "shared.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("loss: {name: 'os:system'}", "loss.name"),
        ("optimizer: {name: 'os:system'}", "optimizer.name"),
        ("scheduler: {name: 'os:system'}", "scheduler.name"),
        ("scheduler: {name: LambdaLR, lr_lambda: 'os:system'}", "scheduler.lr_lambda"),
        ("data: {name: 'os:system'}", "data.name"),
        (
            "data: {name: shapes, train_transforms: [{name: 'os:system'}]}",
            "data.train_transforms.0.name",
        ),
    ],
)
def test_every_section_that_names_a_callable_is_checked_before_anything_runs(
    section, key, tiny_yaml, write_config, user_error, tmp_path
) -> None:
    name = section.partition(":")[0]
    kept = [line for line in tiny_yaml.splitlines() if not line.startswith(f"{name}:")]
    config = write_config("\n".join([*kept, section]) + "\n")
    user_error("fit", config, expect=[f"{key}: 'os:system' is refused", STDLIB])
    assert not (tmp_path / "runs").exists()


def test_import_path_itself_refuses_for_any_key() -> None:
    """Steps and other keys the lead adds call `import_path` and get the same policy."""
    with pytest.raises(UserError, match=r"^step\.name: 'os:system' is refused"):
        registry.import_path("os:system", key="step.name")


# ---------------------------------------------------------------- what an alias resolves to


def test_own_module_re_exporting_the_stdlib_is_refused_by_what_it_resolves_to(
    module, marker, write_config, user_error
) -> None:
    module(
        "reexports",
        f"""
        import functools
        from os import system
        from torch.hub import load as hub_load
        touch = functools.partial(system, "touch {marker}")
        """,
    )
    for name, real in [
        ("reexports:system", "posix.system"),
        ("reexports:hub_load", "torch.hub.load"),
        ("reexports:touch", "posix.system"),
    ]:
        stderr = user_error("groups", model_config(write_config, name), expect=[real])
        assert f"{name!r} is refused: it resolves to {real}" in stderr
    assert not marker.exists()


def test_trusting_a_package_does_not_trust_the_stdlib_or_loaders_it_reaches(
    monkeypatch, write_config, user_error
) -> None:
    monkeypatch.setenv("TRAINER_TRUST", "torch,os")
    user_error("groups", model_config(write_config, "os:system"), expect=[STDLIB])
    user_error("groups", model_config(write_config, "torch:load"), expect=[LOADER])
    user_error(
        "groups",
        model_config(write_config, "torch:os.system"),
        expect=["'torch:os.system' is refused: it resolves to posix.system", STDLIB],
    )


def test_private_names_are_refused() -> None:
    with pytest.raises(UserError, match=r"'_apply' is private"):
        registry.import_path("torch.nn:Module._apply", key="model.name")


def test_runner_scopes_are_trusted_by_what_they_resolve_to() -> None:
    linear = registry.import_path("torch.nn:Linear", key="model.name", kind="models")
    assert linear is torch.nn.Linear
    assert registry.import_path("torch:nn.Linear", key="m", kind="models") is torch.nn.Linear
    with pytest.raises(UserError, match=r"'torch:relu' is not trusted.*TRAINER_TRUST=torch"):
        registry.import_path("torch:relu", key="model.name", kind="models")


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("models", "torchvision.models:resnet18"),
        ("models", "torch.nn:Linear"),
        ("losses", "torch.nn:MSELoss"),
        ("datasets", "torchvision.datasets:MNIST"),
        ("optimizers", "torch.optim:SGD"),
        ("schedulers", "torch.optim.lr_scheduler:StepLR"),
        ("transforms", "torchvision.transforms:ToTensor"),
        ("transforms", "torchvision.transforms.v2:RandomCrop"),
    ],
)
def test_runner_scopes_give_each_key_what_it_is_for(kind, path) -> None:
    assert callable(registry.import_path(path, key="k.name", kind=kind))


@pytest.mark.parametrize(
    ("kind", "path", "what"),
    [
        ("models", "torch.optim:SGD", "which is not a model"),
        ("models", "torch.nn.utils:clip_grad_norm_", "which is not a model"),
        ("datasets", "torchvision.datasets:ImageFolder.find_classes", "not a dataset class"),
        ("transforms", "torchvision.transforms.functional:to_tensor", "not a transform class"),
        (None, "torch.nn.functional:relu", "not something this key names"),
    ],
)
def test_runner_scopes_refuse_helpers_before_they_are_called(kind, path, what) -> None:
    with pytest.raises(UserError, match=f"^k.name: '{path}' is refused: it resolves to .*{what}"):
        registry.import_path(path, key="k.name", kind=kind)


# ---------------------------------------------------------------- tools that touch files


@pytest.fixture
def payload(tmp_path: Path) -> dict[str, Path]:
    """A tar that would plant a `.pth` file, and a .gz that would overwrite the file `victim`."""
    import gzip
    import tarfile

    planted = tmp_path / "planted.pth"
    planted.write_text(f"import os; open({str(tmp_path / 'ran')!r}, 'w')\n")
    with tarfile.open(tmp_path / "payload.tar", "w") as tar:
        tar.add(planted, arcname="planted.pth")
    planted.unlink()
    (tmp_path / "victim.gz").write_bytes(gzip.compress(b"overwritten"))
    (tmp_path / "victim").write_text("precious")
    (tmp_path / "site").mkdir()
    return {"site": tmp_path / "site", "victim": tmp_path / "victim"}


TOOLS = [  # (TRAINER_TRUST, path, keyword arguments): each would write, extract or run
    ("", "torchvision.datasets.utils:extract_archive", "from_path: payload.tar, to_path: site"),
    ("", "torchvision.datasets.utils:extract_archive", "from_path: victim.gz, to_path: ."),
    ("", "torchvision.datasets.utils:download_url", "url: 'http://127.0.0.1:9/x', root: site"),
    (
        "torchvision",
        "torchvision.datasets.utils:extract_archive",
        "from_path: payload.tar, to_path: site",
    ),
    ("torchvision", "torchvision.utils:save_image", "tensor: [1.0], fp: victim"),
    ("torch", "torch.utils.collect_env:run", "command: 'touch {marker}'"),
    ("torch", "torch:save", "obj: 1, f: victim"),
    ("torch", "torch.hub:download_url_to_file", "url: 'http://127.0.0.1:9/x', dst: victim"),
    ("torch", "torch.utils.tensorboard:SummaryWriter", "log_dir: site/tb"),
]


@pytest.mark.parametrize(
    ("trusted", "path", "kwargs"), TOOLS, ids=[f"{t[0]}-{t[1]}" for t in TOOLS]
)
def test_tools_that_write_extract_or_run_are_refused_before_the_call(
    trusted, path, kwargs, payload, marker, write_config, user_error, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("TRAINER_TRUST", trusted)
    config = model_config(write_config, path, kwargs.format(marker=marker))
    user_error("groups", config, expect=[f"model.name: {path!r} is refused"])
    assert not marker.exists()
    assert payload["victim"].read_text() == "precious"
    assert list(payload["site"].iterdir()) == []
    assert not (tmp_path / "planted.pth").exists()


def test_the_payload_does_what_the_refusals_prevent(payload, tmp_path) -> None:
    """Called directly, the tools above plant the file and overwrite the victim."""
    from torchvision.datasets.utils import extract_archive

    extract_archive(str(tmp_path / "payload.tar"), str(payload["site"]))
    extract_archive(str(tmp_path / "victim.gz"), str(tmp_path))
    assert (payload["site"] / "planted.pth").exists()
    assert payload["victim"].read_text() == "overwritten"


def test_own_module_re_exporting_a_runner_helper_is_refused(
    module, payload, write_config, user_error
) -> None:
    module("unpacks", "from torchvision.datasets.utils import extract_archive\n")
    config = model_config(
        write_config, "unpacks:extract_archive", "from_path: victim.gz, to_path: ."
    )
    user_error("groups", config, expect=["resolves to torchvision.datasets.utils.extract_archive"])
    assert payload["victim"].read_text() == "precious"


def test_trusting_all_of_torch_warns_that_it_is_broad(write_config, run_cli, monkeypatch) -> None:
    monkeypatch.setattr(trust, "_warned_broad", set())
    monkeypatch.setenv("TRAINER_TRUST", "torch")
    result = run_cli(
        "groups", model_config(write_config, "torch.nn:Linear", "in_features: 3, out_features: 2")
    )
    assert result.exit_code == 0, result.output
    assert "warning: trusting 'torch' trusts all of it, which is broad" in result.stderr
    monkeypatch.setattr(trust, "_warned_broad", set())
    monkeypatch.setenv("TRAINER_TRUST", "torch.nn")
    result = run_cli(
        "groups", model_config(write_config, "torch.nn:Linear", "in_features: 3, out_features: 2")
    )
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr


# ---------------------------------------------------------------- what is trusted


def test_own_module_in_the_current_directory(
    module, write_config, run_cli, tmp_path, monkeypatch
) -> None:
    module("own_in_cwd", "import torch\n\ndef net():\n    return torch.nn.Linear(3, 2)\n")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])  # what main() does
    config = model_config(write_config, "own_in_cwd:net")
    moved = tmp_path / "configs" / "cfg.yaml"
    moved.parent.mkdir()
    config.rename(moved)
    result = run_cli("groups", moved, "--json")
    assert result.exit_code == 0, result.output
    assert '"numel": 8' in result.stdout


def test_own_module_beside_the_config(module, write_config, run_cli, tmp_path) -> None:
    configs = tmp_path / "configs"
    module(
        "own_by_config", "import torch\n\ndef net():\n    return torch.nn.Linear(3, 2)\n", configs
    )
    config = model_config(write_config, "own_by_config:net")
    config = config.rename(configs / "cfg.yaml")
    result = run_cli("groups", config, "--json")
    assert result.exit_code == 0, result.output
    assert '"numel": 8' in result.stdout


@pytest.fixture
def elsewhere(module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module that is neither in the current nor in the config's directory."""
    lib = tmp_path / "lib"
    module("installed_pkg", "import torch\n\ndef net():\n    return torch.nn.Linear(3, 2)\n", lib)
    monkeypatch.syspath_prepend(str(lib))
    return "installed_pkg:net"


def test_a_module_that_is_not_the_users_is_refused_with_how_to_trust_it(
    elsewhere, write_config, user_error
) -> None:
    user_error(
        "groups",
        model_config(write_config, elsewhere),
        expect=[
            "model.name: 'installed_pkg:net' is not trusted",
            "TRAINER_TRUST=installed_pkg",
            "[tool.trainer] in ./pyproject.toml",
        ],
    )


def test_trainer_trust_environment_variable(elsewhere, write_config, run_cli, monkeypatch) -> None:
    monkeypatch.setenv("TRAINER_TRUST", "something_else, installed_pkg")
    result = run_cli("groups", model_config(write_config, elsewhere))
    assert result.exit_code == 0, result.output


def test_pyproject_trust_in_the_current_directory(
    elsewhere, write_config, run_cli, tmp_path
) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.trainer]\ntrust = ["installed_pkg"]\n')
    result = run_cli("groups", model_config(write_config, elsewhere))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("env", "pyproject", "fragment"),
    [
        ("a b", None, "TRAINER_TRUST: 'a b' is not a module name"),
        ("", "[tool.trainer]\ntrust = 'installed_pkg'\n", "trust: expected a list of module"),
        ("", "[tool.trainer\n", "pyproject.toml: not valid TOML"),
        ("", "tool = 1\n", "pyproject.toml: tool: expected a table, got 1"),
        (
            "",
            "[tool]\ntrainer = 'x'\n",
            "pyproject.toml: [tool] trainer: expected a table, got 'x'",
        ),
    ],
)
def test_bad_trust_settings_are_named(
    env, pyproject, fragment, elsewhere, write_config, user_error, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("TRAINER_TRUST", env)
    if pyproject:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    user_error("groups", model_config(write_config, elsewhere), expect=[fragment])


def test_a_config_cannot_trust_anything_itself(elsewhere, write_config, user_error) -> None:
    config = model_config(write_config, elsewhere)
    config.write_text(config.read_text() + "trust: [installed_pkg]\n")
    user_error("groups", config, expect=["trust: unknown key", "'installed_pkg:net' is not"])


# ---------------------------------------------------------------- whose file is it


def test_users_files_are_theirs_and_the_runners_and_installed_ones_are_not(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.py"
    mine.write_text("")
    assert trust.is_users_file(str(mine))
    assert not trust.is_users_file(trust.__file__)
    assert not trust.is_users_file(torch.__file__)
    assert not trust.is_users_file("<frozen importlib._bootstrap>")
    assert not trust.is_users_file(os.__file__)
