"""Names and import paths → callables, with their keyword arguments checked before building.

One registry serves `trainer list`, "did you mean" and the builders. Kinds: models, datasets,
losses, optimizers, schedulers. A name is a built-in, a torch/torchvision name, or an import
path `package.module:callable` (which runs user code, as Hydra does).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from trainer.errors import UserError, did_you_mean, unknown_name

KINDS = ("models", "datasets", "losses", "optimizers", "schedulers", "transforms")

# Arguments the runner passes itself: a config that sets them is an error, not a surprise.
SUPPLIED_BY_RUNNER = {
    "models": (),
    "datasets": ("train", "transform"),
    "losses": (),
    "optimizers": ("params",),
    "schedulers": ("optimizer",),
    "transforms": (),
}


def _first_line(obj: Any) -> str:
    """The docstring's first sentence (which may run over several lines), on one line."""
    doc = (inspect.getdoc(obj) or "").strip().split("\n\n")[0]
    doc = re.sub(r"`([^`<]+?)\s*<[^>]*>`_+", r"\1", doc)  # reST links: keep their titles
    return " ".join(doc.split()).split(". ")[0].rstrip(".")


def _subclasses_in(module: Any, base: tuple[type, ...], skip: Iterable[str] = ()) -> dict:
    found = {}
    for attr in dir(module):
        obj = getattr(module, attr)
        if (
            isinstance(obj, type)
            and issubclass(obj, base)
            and not attr.startswith("_")
            and attr not in skip
        ):
            found[attr] = obj
    return found


@cache
def entries(kind: str) -> dict[str, Callable[..., Any]]:
    """Every name of a kind, mapped to its callable (torch is imported here, not before)."""
    if kind == "models":
        import torchvision.models

        from trainer import models

        found = dict(models.BUILT_IN)
        for name in torchvision.models.list_models(module=torchvision.models):
            found[name] = torchvision.models.get_model_builder(name)
        return found
    if kind == "datasets":
        from trainer import datasets

        return dict(datasets.BUILT_IN)
    if kind == "transforms":
        from torchvision.transforms import v2

        return _subclasses_in(v2, (v2.Transform,), skip=["Transform"])
    if kind == "losses":
        import torch.nn

        return _subclasses_in(torch.nn, (torch.nn.modules.loss._Loss,))
    if kind == "optimizers":
        import torch.optim

        return _subclasses_in(torch.optim, (torch.optim.Optimizer,), skip=["Optimizer"])
    if kind == "schedulers":
        from torch.optim import lr_scheduler

        bases = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
        # SequentialLR and ChainedScheduler take scheduler objects, which YAML cannot name;
        # `scheduler.warmup` builds the common SequentialLR.
        skip = ["LRScheduler", "SequentialLR", "ChainedScheduler"]
        return _subclasses_in(lr_scheduler, bases, skip=skip)
    raise ValueError(f"unknown kind {kind!r}")


def describe(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) for every name of a kind, for `trainer list`."""
    return [(name, _first_line(fn)) for name, fn in entries(kind).items()]


def resolve(kind: str, name: str, *, key: str) -> Callable[..., Any]:
    """The callable for a name or an import path; a UserError naming `key` if there is none."""
    if ":" in name:
        return import_path(name, key=key)
    table = entries(kind)
    if name not in table:
        raise UserError(unknown_name(key, name, sorted(table, key=str.lower)))
    return table[name]


def import_path(path: str, *, key: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{key}: cannot import '{module_name}' from {path!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{key}: '{module_name}' has no attribute '{attr}' ({path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{key}: {path!r} is not callable")
    return obj


def check_arguments(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    key: str,
    kind: str,
    filled_in: Iterable[str] = (),
) -> list[str]:
    """Problems with `kwargs` for `fn`: unknown keywords and missing required ones.

    `filled_in` names arguments the runner supplies when the config leaves them out.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    supplied = SUPPLIED_BY_RUNNER[kind]
    label = getattr(fn, "__name__", repr(fn))
    named = [
        n
        for n, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in supplied
    ]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    problems = []
    for arg in kwargs:
        if arg in supplied:
            problems.append(f"{key}.{arg}: set by the runner, not by the config")
        elif arg not in named and not takes_any:
            problems.append(
                f"{key}.{arg}: not an argument of {label}{did_you_mean(arg, named)}"
                f" (arguments: {', '.join(named) or 'none'})"
            )
    for name, param in params.items():
        required = param.default is param.empty and param.kind not in (
            param.VAR_POSITIONAL,
            param.VAR_KEYWORD,
        )
        if required and name not in kwargs and name not in supplied and name not in filled_in:
            problems.append(f"{key}.{name}: required argument of {label} is missing")
    return problems


def accepts(fn: Callable[..., Any], argument: str) -> bool:
    """Whether `fn` takes a keyword `argument` (by name or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return argument in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _keywords_of(cls: Any) -> list[str]:
    """Keyword arguments of a class a builder returns (torchvision builders pass **kwargs on)."""
    if not isinstance(cls, type):
        return []
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build(kind: str, name: str, kwargs: dict[str, Any], *, key: str, **supplied: Any) -> Any:
    """Resolve, check and call: `fn(**supplied, **kwargs)`; bad arguments are UserErrors."""
    fn = resolve(kind, name, key=f"{key}.name")
    problems = check_arguments(fn, kwargs, key=key, kind=kind)
    if problems:
        raise UserError(problems)
    try:
        return fn(**supplied, **kwargs)
    except (ValueError, TypeError, RuntimeError, AttributeError, KeyError) as err:
        # The callable refused the config's values (a string for a number, a negative size):
        # the user's input, so a message naming the config key rather than a traceback.
        raise UserError(_rejected(fn, name, err, key=key)) from None


def _rejected(fn: Callable[..., Any], name: str, err: Exception, *, key: str) -> str:
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    if not isinstance(err, TypeError) or unexpected is None:
        return f"{key}: {name} rejected its arguments: {type(err).__name__}: {err}"
    arg = unexpected.group(1)  # a builder that passes **kwargs on (torchvision's) refused it
    known = _keywords_of(inspect.signature(fn).return_annotation)
    listed = f" (arguments: {', '.join(known)})" if known else ""
    return f"{key}.{arg}: not an argument of {name}{did_you_mean(arg, known)}{listed}"


def check_component(
    kind: str, name: str, kwargs: dict[str, Any], *, key: str, filled_in: Iterable[str] = ()
) -> list[str]:
    """Problems with a component's name and keyword arguments, without building it."""
    try:
        fn = resolve(kind, name, key=f"{key}.name")
    except UserError as err:
        return err.problems
    return check_arguments(fn, kwargs, key=key, kind=kind, filled_in=filled_in)


SECTION_KINDS = {
    "model": "models",
    "data": "datasets",
    "loss": "losses",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
}


def check_components(config: Any, sections: Iterable[str] = tuple(SECTION_KINDS)) -> list[str]:
    """Names and keyword arguments of the config's components, checked without building."""
    from trainer.schedulers import LENGTH_ARGUMENTS
    from trainer.transforms import check_transforms

    problems = []
    if "data" in sections:
        for split in ("train_transforms", "val_transforms"):
            problems += check_transforms(getattr(config.data, split), key=f"data.{split}")
    for key in sections:
        section = getattr(config, key)
        if section is not None:
            filled_in = (
                [LENGTH_ARGUMENTS[section.name]]
                if key == "scheduler" and (section.name in LENGTH_ARGUMENTS)
                else []
            )
            problems += check_component(
                SECTION_KINDS[key], section.name, section.kwargs, key=key, filled_in=filled_in
            )
    return problems
