"""Which import paths a config may name: a config is data people share, so only trusted code.

Trusted: the user's own modules (a `.py` file or package directly in the current directory, in
the directory of a config file on the command line, or in the directory of a base inside one
of those: `use_config_files`), the public torch scopes in `RUNNER_TRUST` for the objects a
key is for (`RUNNER_KINDS`: a model, a dataset class, ...; never their helper functions), and
packages the user trusts from outside any config (`TRAINER_TRUST=pkg1,pkg2`, or `trust = [...]`
under `[tool.trainer]` in ./pyproject.toml). Never, even when trusted: the standard library,
what `REFUSED` lists (it unpickles, imports, compiles or launches code, runs processes, or
writes or extracts files), and private names.

A path is checked before anything is imported, and the object it resolves to is checked again
by the module and qualified name it really has: modules re-export what they import, so
`logging:os.system` is `posix.system` (Hydra's GHSA-37p2-j732-x8pj).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from trainer.errors import UserError, echo

RUNNER_TRUST = (
    "torch.nn",
    "torch.optim",
    "torchvision.models",
    "torchvision.datasets",
    "torchvision.transforms",
)

# What a key may name from RUNNER_TRUST (checked on the object, before it is called); keys of
# other kinds (steps, metrics, `scheduler.lr_lambda`) name nothing there.
RUNNER_KINDS = {
    "models": "a model (a torch.nn.Module class or a torchvision model builder)",
    "datasets": "a dataset class",
    "losses": "a loss (a torch.nn.Module class)",
    "optimizers": "an optimizer class",
    "schedulers": "a scheduler class",
    "transforms": "a transform class",
}

# Trusting one of these top-level packages trusts far more than a config needs: a warning.
BROAD = ("torch", "torchvision")

# Module scopes (and `module:qualname` callables) that load files which can run code, import
# or compile code, start processes, or write or extract files. Trusting their package does
# not make them importable.
REFUSED = (
    "torch:load",
    "torch:compile",
    "torch:import_ir_module",
    "torch:import_ir_module_from_buffer",
    "torch._ops:_Ops.load_library",
    "torch._classes:_Classes.load_library",
    "torch.hub",
    "torch.serialization",
    "torch.jit",
    "torch.package",
    "torch.export",
    "torch._export",
    "torch.compiler",
    "torch._dynamo",
    "torch._inductor",
    "torch.utils.cpp_extension",
    "torch.utils.model_zoo",
    "torch.utils.benchmark",
    "torch.multiprocessing",
    "torch.utils.collect_env",
    "torch.utils.hipify",
    "torch.utils.bottleneck",
    "torch.utils.file_baton",
    "torch.utils.show_pickle",
    "torch.utils.model_dump",
    "torch.utils.tensorboard",
    "torch.utils.data.datapipes",
    "torch.backends.xeon",
    "torch.distributed",
    "torch.library",
    "torch.fx",
    "torch.onnx",
    "torch.profiler",
    "torch.autograd.profiler",
    "torchvision.datasets.utils",
    "torchvision.io",
    "torchvision.utils:save_image",
    "numpy:load",
    "numpy.lib.npyio",
    "numpy.lib._npyio_impl",
    "numpy.f2py",
    "numpy.ctypeslib",
    "numpy.distutils",
    "numpy:memmap",
    "pandas:read_pickle",
    "pandas:eval",
    "pandas.io.pickle",
    "pandas.core.computation",
    "pandas.io.clipboard",
    "pandas.io.clipboards",
    "yaml",
    "dill",
    "cloudpickle",
    "joblib",
    "numexpr",
    "IPython",
    "setuptools",
    "pip",
    "pkg_resources",
)

MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
HOW_TO_TRUST = (
    "trust a package from outside the config: TRAINER_TRUST={0} in the environment, or "
    'trust = ["{0}"] under [tool.trainer] in ./pyproject.toml'
)

_config_directories: tuple[Path, ...] = ()
_outside_bases: dict[Path, Path] = {}  # directory -> a base there, outside the project
_added_to_path: list[str] = []


def use_config_files(command_line: Iterable[Path], bases: Iterable[Path]) -> None:
    """Record whose modules are the user's own, and importable: those in the directories of
    the config files on the command line (the user chose to run them) and of the bases that
    lie inside the project, the current directory or a command-line file's directory
    (symlinks resolved). A base elsewhere is data: merged, but its modules are not trusted."""
    global _config_directories, _outside_bases, _added_to_path
    chosen = [path.parent.resolve() for path in command_line]
    projects = [Path.cwd().resolve(), *chosen]
    inside: list[Path] = []
    outside: dict[Path, Path] = {}
    for base in bases:
        directory = base.resolve().parent
        if any(directory.is_relative_to(project) for project in projects):
            inside.append(directory)
        else:
            outside.setdefault(directory, base)
    _config_directories = tuple(dict.fromkeys([*chosen, *inside]))
    _outside_bases = {d: b for d, b in outside.items() if d not in _config_directories}
    for added in _added_to_path:
        if added in sys.path:
            sys.path.remove(added)
    _added_to_path = []
    for entry in map(str, _config_directories):
        if entry not in sys.path:
            _added_to_path.append(entry)
            sys.path.append(entry)  # last: it never shadows an installed package


def check_path(module: str, attr: str, *, key: str) -> None:
    """Refuse an import path before anything is imported (UserError naming `key`)."""
    path = f"{module}:{attr}"
    dotted = f"{module}.{attr}".split(".")
    private = next((part for part in dotted if part.startswith("_")), None)
    if private is not None:
        raise UserError(
            f"{key}: {path!r} is refused: {private!r} is private (it starts with '_'); "
            "a config names public callables only"
        )
    if dotted[0] in sys.stdlib_module_names:
        raise UserError(f"{key}: {path!r} is refused: {_stdlib(dotted[0])}")
    for split in range(1, len(dotted) + 1):
        scope, rest = ".".join(dotted[:split]), ".".join(dotted[split:])
        if _refused(scope, rest):
            raise UserError(f"{key}: {path!r} is refused: {_LOADER}")
    if _spec(dotted[0]) is None:
        _refuse_outside_base(dotted[0], path, key=key)
        return  # nothing to import: the import fails and says so
    mine = _own_file_named(dotted[0])
    if mine is not None and _installed(_spec(dotted[0]).origin or ""):
        raise UserError(
            f"{key}: {path!r} imports the installed package {dotted[0]!r}, not your {mine}: "
            "your own modules come after installed packages on the import path; rename your "
            "file (and the path in the config)"
        )
    if not (_is_own(dotted[0]) or _within(".".join(dotted), _trusted())):
        raise UserError(
            f"{key}: {path!r} is not trusted: {dotted[0]!r} is neither your own module (a .py "
            "file or package in the current directory or a config file's directory) nor a "
            f"trusted package; {HOW_TO_TRUST.format(dotted[0])}"
        )


def check_resolved(obj: object, path: str, *, key: str, kind: str | None = None) -> None:
    """Refuse what an import path resolved to, by the module and name it really has, before
    it is called; from the runner's scopes only what a key of `kind` is for (RUNNER_KINDS)."""
    homes = _homes(obj)
    for module, qualname in homes:
        problem = _home_problem(module, qualname)
        if problem:
            raise UserError(
                f"{key}: {path!r} is refused: it resolves to {module}.{qualname}, {problem}"
            )
    module, qualname = homes[0]
    top = str(module).split(".")[0]
    runner_only = not (_is_own(top) or _within(str(module), _users_trust()))
    if runner_only and not _fits(kind, obj):
        what = RUNNER_KINDS.get(kind or "", "something this key names from torch or torchvision")
        raise UserError(
            f"{key}: {path!r} is refused: it resolves to {module}.{qualname}, which is not "
            f"{what}; untrusted, torch and torchvision give a config their models, datasets, "
            "losses, optimizers, schedulers and transforms, not the helpers beside them; "
            + HOW_TO_TRUST.format(top)
        )


def raised_in_users_code(err: BaseException) -> bool:
    """Whether an exception was raised in a file of the user's own (its traceback ends there)."""
    last: TracebackType | None = err.__traceback__
    while last is not None and last.tb_next is not None:
        last = last.tb_next
    return last is not None and is_users_file(last.tb_frame.f_code.co_filename)


def is_users_file(filename: str) -> bool:
    """Whether a source file is the user's: under their directories, not installed, not ours."""
    path = Path(filename).resolve()
    if not path.is_file():  # "<string>", "<frozen importlib._bootstrap>"
        return False
    runner = Path(__file__).resolve().parent
    if path.is_relative_to(runner) or _installed(filename):
        return False
    return any(path.is_relative_to(directory) for directory in _directories())


def _installed(filename: str) -> bool:
    """Whether a file is part of the Python installation (its standard library, site-packages)."""
    path = Path(filename).resolve()
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return bool(filename) and any(path.is_relative_to(prefix) for prefix in prefixes)


_LOADER = (
    "it is a loader that can run code, or a tool that touches files or processes (it "
    "unpickles, imports, compiles or starts code, runs commands, or writes or extracts "
    "files), which a config may never name, even from a trusted package"
)


def _stdlib(name: str) -> str:
    return (
        f"{name!r} is Python's standard library, which a config may never import (trusting it "
        "changes nothing); put what you need in a function in a module of your own (one named "
        "like a standard module needs another name)"
    )


_REFUSED_SCOPES = tuple(entry for entry in REFUSED if ":" not in entry)


def _refused(module: str, qualname: str) -> bool:
    return _within(module, _REFUSED_SCOPES) or f"{module}:{qualname}" in REFUSED


def _within(name: str, scopes: Iterable[str]) -> bool:
    return any(name == scope or name.startswith(scope + ".") for scope in scopes)


def _home_problem(module: str | None, qualname: str) -> str | None:
    if module is None:
        return "and no module says where that is defined"
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        return f"and {_stdlib(top)}"
    if _refused(module, qualname):
        return f"and {_LOADER}"
    if not (_is_own(top) or _within(module, _trusted())):
        return f"which is not trusted; {HOW_TO_TRUST.format(top)}"
    return None


def _homes(obj: object) -> list[tuple[str | None, str]]:
    """(module, qualified name) of what calling `obj` runs, and of whatever it is bound to."""
    if isinstance(obj, functools.partial):
        return _homes(obj.func)
    if inspect.ismethod(obj):
        owner = obj.__self__
        return _homes(obj.__func__) + _homes(owner if isinstance(owner, type) else type(owner))
    if isinstance(obj, type) or inspect.isfunction(obj):
        return [(obj.__module__, obj.__qualname__)]
    if inspect.isbuiltin(obj):
        owner = obj.__self__
        if owner is None or inspect.ismodule(owner):
            return [(obj.__module__ or getattr(owner, "__name__", None), obj.__name__)]
        return _homes(owner if isinstance(owner, type) else type(owner))
    owner = getattr(obj, "__objclass__", None)  # a method descriptor, a slot wrapper
    return _homes(owner if isinstance(owner, type) else type(obj))


def _fits(kind: str | None, obj: object) -> bool:
    """Whether `obj`, from the runner's scopes, is what a key of `kind` is for."""
    import torch
    from torch.optim import lr_scheduler

    if kind == "models" and not isinstance(obj, type):
        return obj in _model_builders()
    if kind == "transforms":  # torchvision's first transforms are plain classes
        return isinstance(obj, type) and _within(obj.__module__, ("torchvision.transforms",))
    bases: dict[str, tuple[type, ...]] = {
        "models": (torch.nn.Module,),
        "losses": (torch.nn.Module,),
        "datasets": (torch.utils.data.Dataset,),
        "optimizers": (torch.optim.Optimizer,),
        "schedulers": (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau),
    }
    return isinstance(obj, type) and issubclass(obj, bases.get(kind or "", ()))


@functools.cache
def _model_builders() -> set[Any]:
    """Every model builder torchvision registers (resnet18, vit_b_16, ...)."""
    import torchvision.models

    return {torchvision.models.get_model_builder(n) for n in torchvision.models.list_models()}


def _directories() -> list[Path]:
    """The user's own directories: the current one and the loaded config files'."""
    return list(dict.fromkeys([Path.cwd().resolve(), *_config_directories]))


def _is_own(top: str) -> bool:
    """Whether the top-level module `top` is a file or package directly in a user's directory."""
    spec = _spec(top)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:  # a package: where its folder lies
        places = [Path(p).resolve().parent for p in spec.submodule_search_locations]
    elif spec.has_location and spec.origin:
        places = [Path(spec.origin).resolve().parent]
    else:
        return False
    homes = _directories()
    return bool(places) and all(place in homes for place in places)


def _own_file_named(top: str) -> Path | None:
    """A module or package of the user's named `top` (in their directories), if there is one."""
    return next(filter(None, (_module_in(d, top) for d in _directories())), None)


def _module_in(directory: Path, top: str) -> Path | None:
    """The module or package named `top` directly in `directory`, if there is one."""
    for candidate in (directory / f"{top}.py", directory / top / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _refuse_outside_base(top: str, path: str, *, key: str) -> None:
    """Refuse a module beside a base outside the project (its directory is not on sys.path)."""
    for directory, base in _outside_bases.items():
        found = _module_in(directory, top)
        if found is not None:
            raise UserError(
                f"{key}: {path!r} is not trusted: {top!r} is {found}, beside the base {base}, "
                f"whose directory {directory} lies outside the project (the current directory "
                "and the directories of the config files on the command line), so its modules "
                f"are not your own; copy the module into your project, or put {directory} on "
                f"PYTHONPATH and {HOW_TO_TRUST.format(top)}"
            )


def _spec(top: str) -> Any:
    """The import system's spec of a top-level module (without importing it), or None."""
    try:
        return importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None


def _trusted() -> list[str]:
    """The runner's scopes and the packages the user trusts, from outside any config."""
    return [*RUNNER_TRUST, *_users_trust()]


_warned_broad: set[str] = set()


def _users_trust() -> list[str]:
    """The packages the user trusts, from outside any config (a warning for a broad one)."""
    names: list[str] = []
    problems = []
    for name in os.environ.get("TRAINER_TRUST", "").split(","):
        name = name.strip()
        if name and not MODULE_NAME.fullmatch(name):
            problems.append(f"TRAINER_TRUST: {name!r} is not a module name (e.g. mypkg.models)")
        elif name:
            names.append(name)
    pyproject = Path("pyproject.toml")
    if pyproject.is_file():
        listed = _pyproject_trust(pyproject)
        if not isinstance(listed, list) or not all(
            isinstance(n, str) and MODULE_NAME.fullmatch(n) for n in listed
        ):
            problems.append(
                f"{pyproject.resolve()}: [tool.trainer] trust: expected a list of module names, "
                f"got {echo(listed)}"
            )
        else:
            names += listed
    if problems:
        raise UserError(problems)
    for name in sorted(set(names) & set(BROAD) - _warned_broad):
        _warned_broad.add(name)
        print(
            f"warning: trusting {name!r} trusts all of it, which is broad: a config can then "
            f"call any public function of {name} (what trainer.config.trust.REFUSED lists "
            f"stays refused); trust only the modules you need instead ({name}.<module>)",
            file=sys.stderr,
        )
    return names


def _pyproject_trust(pyproject: Path) -> Any:
    """The `trust` list under `[tool.trainer]` of a pyproject.toml ([] when there is none)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UserError(
            f"{pyproject.resolve()}: reading [tool.trainer] needs Python 3.11 or newer; "
            "set TRAINER_TRUST instead"
        ) from None
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{pyproject.resolve()}: not valid TOML: {err}") from None
    table: Any = data
    for key in ("tool", "trainer"):
        table = table.get(key, {})
        if not isinstance(table, dict):
            where = "tool" if key == "tool" else "[tool] trainer"
            raise UserError(
                f"{pyproject.resolve()}: {where}: expected a table, got {echo(table)} "
                "(trust goes under [tool.trainer])"
            )
    return table.get("trust", [])
